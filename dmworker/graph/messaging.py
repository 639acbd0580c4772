"""``client.messaging``: the Send API (``POST {base_url}/{account_id}/messages``).

Method names mirror the TypeScript SDK in snake_case. Each one builds its body with
:mod:`dmworker.graph.bodies`, posts it once (no retries here: the worker owns retries), and
returns a :class:`SendResult` or raises a :class:`~dmworker.graph.errors.GraphError` subclass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import bodies
from .usage import EMPTY_USAGE, Usage

if TYPE_CHECKING:
    from .client import InstagramClient

METHODS: tuple[str, ...] = tuple(bodies.BUILDERS)


@dataclass(frozen=True)
class SendResult:
    """Meta's answer to one send.

    Attributes:
        recipient_id: the recipient's IGSID (for a private reply: the commenter's).
        message_id: the new message's id; None for sender actions, reactions and typing.
        usage: the usage headers of the answer.
    """

    recipient_id: str
    message_id: str | None
    usage: Usage = EMPTY_USAGE


class Messaging:
    """The Send API of one :class:`~dmworker.graph.client.InstagramClient`.

    Every method raises :class:`~dmworker.graph.errors.GraphError` (a subclass saying what to do)
    when Meta refuses or cannot be reached, and ``ValueError`` for arguments it cannot build.
    """

    def __init__(self, client: InstagramClient) -> None:
        self._client = client

    def send_body(self, body: Mapping[str, Any]) -> SendResult:
        """POST a body built by :mod:`dmworker.graph.bodies` (or stored earlier) as it is."""
        reply = self._client.request("POST", self._client.url(self._client.account_id, "messages"), body=body)
        recipient = body.get("recipient")
        fallback = recipient.get("id", "") if isinstance(recipient, Mapping) else ""
        rid, mid = reply.data.get("recipient_id"), reply.data.get("message_id")
        return SendResult(
            recipient_id=str(rid) if rid not in (None, "") else str(fallback),
            message_id=str(mid) if mid not in (None, "") else None,
            usage=reply.usage,
        )

    def call(self, method_name: str, recipient: str, **kwargs: Any) -> SendResult:
        """Call the method named ``method_name`` (one of :data:`METHODS`) with these arguments.

        ``recipient`` is the IGSID, or the comment id for ``send_private_reply``.

        Raises:
            ValueError: for a name outside :data:`METHODS` or arguments that method does not take.
            GraphError: as the method itself.
        """
        return self.send_body(bodies.build_body(method_name, recipient, **kwargs))

    def send_text(
        self, recipient: str, text: str, human_agent: bool = False, reply_to: str | None = None
    ) -> SendResult:
        """Send text (``human_agent``: HUMAN_AGENT tag, 7-day window; ``reply_to``: a message id)."""
        return self.send_body(bodies.text_body(recipient, text, human_agent, reply_to))

    def send_media(
        self,
        recipient: str,
        type: str = "image",
        url: str | None = None,
        attachment_id: str | None = None,
        urls: Sequence[str] | None = None,
    ) -> SendResult:
        """Send an image/video/audio/file by ``url`` or ``attachment_id``, or 2-10 images by ``urls``."""
        return self.send_body(bodies.media_body(recipient, type, url, attachment_id, urls))

    def send_like_heart(self, recipient: str) -> SendResult:
        """Send the like-heart sticker."""
        return self.send_body(bodies.like_heart_body(recipient))

    def send_media_share(self, recipient: str, post_id: str) -> SendResult:
        """Share one of the account's own posts."""
        return self.send_body(bodies.media_share_body(recipient, post_id))

    def send_quick_replies(
        self, recipient: str, text: str, replies: Sequence[Mapping[str, Any]]
    ) -> SendResult:
        """Send text with quick replies (``messaging_type`` RESPONSE)."""
        return self.send_body(bodies.quick_replies_body(recipient, text, replies))

    def send_generic_template(self, recipient: str, elements: Sequence[Mapping[str, Any]]) -> SendResult:
        """Send a generic template (carousel)."""
        return self.send_body(bodies.generic_template_body(recipient, elements))

    def send_button_template(
        self, recipient: str, text: str, buttons: Sequence[Mapping[str, Any]]
    ) -> SendResult:
        """Send a button template."""
        return self.send_body(bodies.button_template_body(recipient, text, buttons))

    def send_private_reply(self, comment_id: str, text: str) -> SendResult:
        """Reply privately to a comment; ``recipient_id`` of the result is the commenter's IGSID."""
        return self.send_body(bodies.private_reply_body(comment_id, text))

    def react_to_message(self, recipient: str, message_id: str, reaction: str = "love") -> SendResult:
        """React to a message of ``recipient``."""
        return self.send_body(bodies.react_body(recipient, message_id, reaction))

    def unreact_to_message(self, recipient: str, message_id: str) -> SendResult:
        """Remove the account's reaction from a message."""
        return self.send_body(bodies.unreact_body(recipient, message_id))

    def send_typing_indicator(self, recipient: str, on: bool = True) -> SendResult:
        """Turn the typing indicator on or off."""
        return self.send_body(bodies.typing_body(recipient, on))

    def mark_seen(self, recipient: str) -> SendResult:
        """Mark the conversation with ``recipient`` as seen."""
        return self.send_body(bodies.mark_seen_body(recipient))
