"""Ordered sequences for one recipient: ``outbox.sequence(igsid).typing(2).text("hi").enqueue()``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import Job
    from .outbox import Outbox


class SequenceBuilder:
    """Ordered steps for one recipient, queued atomically by :meth:`enqueue`."""

    def __init__(self, outbox: Outbox, recipient: str, account: str | None) -> None:
        self.outbox, self.recipient, self.account = outbox, recipient, account
        self.steps: list[dict[str, Any]] = []

    def _add(self, kind: str, **args: Any) -> SequenceBuilder:
        self.steps.append({"kind": kind, **{k: v for k, v in args.items() if v is not None}})
        return self

    def typing(self, seconds: float = 0, on: bool = True) -> SequenceBuilder:
        return self._add("typing", seconds=seconds, on=on)

    def text(self, text: str, human_agent: bool = False, reply_to: str | None = None) -> SequenceBuilder:
        return self._add("text", text=text, human_agent=human_agent, reply_to=reply_to)

    def media(
        self,
        type: str = "image",
        url: str | None = None,
        attachment_id: str | None = None,
        urls: Sequence[str] | None = None,
    ) -> SequenceBuilder:
        return self._add(
            "media",
            type=type,
            url=url,
            attachment_id=attachment_id,
            urls=list(urls) if urls is not None else None,
        )

    def quick_replies(self, text: str, replies: Sequence[Mapping[str, Any]]) -> SequenceBuilder:
        return self._add("quick_replies", text=text, replies=[dict(r) for r in replies])

    def generic_template(self, elements: Sequence[Mapping[str, Any]]) -> SequenceBuilder:
        return self._add("generic_template", elements=[dict(e) for e in elements])

    def button_template(self, text: str, buttons: Sequence[Mapping[str, Any]]) -> SequenceBuilder:
        return self._add("button_template", text=text, buttons=[dict(b) for b in buttons])

    def react(self, message_id: str, reaction: str = "love") -> SequenceBuilder:
        return self._add("react", message_id=message_id, reaction=reaction)

    def unreact(self, message_id: str) -> SequenceBuilder:
        return self._add("unreact", message_id=message_id)

    def like_heart(self) -> SequenceBuilder:
        return self._add("like_heart")

    def media_share(self, post_id: str) -> SequenceBuilder:
        return self._add("media_share", post_id=post_id)

    def mark_seen(self) -> SequenceBuilder:
        return self._add("mark_seen")

    def enqueue(self, **opts: Any) -> Job:
        """Validate every step and queue them all (or none).  Options as for any send."""
        if self.account:
            opts.setdefault("account", self.account)
        return self.outbox.submit_sequence(self.recipient, self.steps, **opts)
