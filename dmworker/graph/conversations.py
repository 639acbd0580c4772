"""``client.conversations``: the Conversations API (read side, graph-api.md §8).

Meta allows about 2 calls/s per account here; this module makes exactly one call per page
and leaves pacing to the caller.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError

if TYPE_CHECKING:
    from .client import InstagramClient

CONVERSATION_FIELDS = "id,updated_time"
MESSAGE_FIELDS = "id,created_time,from,to,message"


def parse_time(value: str | None) -> datetime | None:
    """A Graph timestamp (``2026-11-25T10:00:00+0000``) as an aware datetime; None if unparsable."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


@dataclass(frozen=True)
class Participant:
    """One side of a message: an IGSID (or the account's id) and the username when given."""

    id: str
    username: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> Participant | None:
        if not isinstance(data, Mapping) or data.get("id") in (None, ""):
            return None
        username = data.get("username")
        return cls(str(data["id"]), str(username) if username is not None else None)


@dataclass(frozen=True)
class Conversation:
    """A conversation id and when it last changed (Graph's string; see :attr:`updated_at`)."""

    id: str
    updated_time: str | None = None

    @property
    def updated_at(self) -> datetime | None:
        return parse_time(self.updated_time)


@dataclass(frozen=True)
class Message:
    """One message read back: ``text`` is Graph's ``message`` field (None for attachments only)."""

    id: str
    created_time: str | None = None
    from_: Participant | None = None
    to: tuple[Participant, ...] = ()
    text: str | None = None

    @property
    def created_at(self) -> datetime | None:
        return parse_time(self.created_time)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], default_id: str = "") -> Message:
        to = data.get("to")
        items = to.get("data") if isinstance(to, Mapping) else to
        people = [Participant.from_json(p) for p in items] if isinstance(items, list) else []
        text, created = data.get("message"), data.get("created_time")
        return cls(
            id=str(data.get("id") or default_id),
            created_time=str(created) if created is not None else None,
            from_=Participant.from_json(data.get("from")),
            to=tuple(p for p in people if p is not None),
            text=text if isinstance(text, str) else None,
        )


MessageList = list[Message]


class Conversations:
    """The Conversations API of one :class:`~dmworker.graph.client.InstagramClient`.

    Every method raises :class:`~dmworker.graph.errors.GraphError` subclasses like the Send API.
    """

    def __init__(self, client: InstagramClient) -> None:
        self._client = client

    def list(self, limit: int | None = None, user_id: str | None = None) -> Iterator[Conversation]:
        """Every conversation, newest first, fetched lazily page by page.

        ``limit`` is the page size sent as ``limit=`` (not a total); ``user_id`` keeps the
        conversation with that IGSID. Paging follows ``paging.next`` until it is absent (a
        short page is not the end).

        Raises:
            ValueError: at once, for a ``limit`` below 1.
            GraphError: while iterating, for a failed page.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit is a page size >= 1, got {limit!r}")
        return self._pages(limit, user_id)

    def _pages(self, limit: int | None, user_id: str | None) -> Generator[Conversation, None, None]:
        params = {"platform": "instagram", "fields": CONVERSATION_FIELDS}
        if limit is not None:
            params["limit"] = str(limit)
        if user_id:
            params["user_id"] = user_id
        client = self._client
        first = client.url(client.account_id, "conversations")
        where: tuple[str | None, dict[str, str] | None] = (first, params)
        while where[0] is not None:
            data = client.request("GET", where[0], params=where[1]).data
            for item in data.get("data") or ():
                if isinstance(item, Mapping) and item.get("id") not in (None, ""):
                    updated = item.get("updated_time")
                    yield Conversation(str(item["id"]), str(updated) if updated is not None else None)
            after = self._next(data.get("paging"), first, params)
            if after == where:
                raise InvalidRequestError("paging.next repeats the page just read")
            where = after

    def _next(
        self, paging: Any, first: str, params: dict[str, str]
    ) -> tuple[str | None, dict[str, str] | None]:
        """Where the next page is: ``paging.next`` on our host, else the ``after`` cursor; or the end."""
        if not isinstance(paging, Mapping) or not paging.get("next"):
            return None, None
        nxt = str(paging["next"])
        if self._client.same_origin(nxt):
            return nxt, None
        cursors = paging.get("cursors")
        after = cursors.get("after") if isinstance(cursors, Mapping) else None
        if not after:
            raise InvalidRequestError("paging.next points outside base_url and there is no after cursor")
        return first, {**params, "after": str(after)}

    def find_by_user(self, igsid: str) -> Conversation | None:
        """The conversation with user ``igsid``, or None (one call)."""
        if not igsid:
            raise ValueError("igsid must be a non-empty string")
        pages = self._pages(None, igsid)
        try:
            return next(pages, None)
        finally:
            pages.close()

    def get_messages(self, conversation_id: str) -> MessageList:
        """The messages of a conversation, newest first (Meta returns only the 20 most recent)."""
        _require(conversation_id, "conversation_id")
        reply = self._client.request(
            "GET", self._client.url(conversation_id), params={"fields": f"messages{{{MESSAGE_FIELDS}}}"}
        )
        box = reply.data.get("messages")
        items = box.get("data") if isinstance(box, Mapping) else None
        return [Message.from_json(m) for m in items or () if isinstance(m, Mapping)]

    def get_message(self, message_id: str) -> Message:
        """One message by id."""
        _require(message_id, "message_id")
        reply = self._client.request("GET", self._client.url(message_id), params={"fields": MESSAGE_FIELDS})
        return Message.from_json(reply.data, default_id=message_id)


def _require(value: str, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
