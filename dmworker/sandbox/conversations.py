"""Conversations (one per account and IGSID) and their messages, with Graph-style cursor paging.

Inbound user messages and accepted sends are the messages. Listing is newest first by
``updated_time``; a cursor encodes the position (opaque base64), so paging stays correct while new
conversations arrive. Not thread-safe by itself (the state's lock guards it).
"""

from __future__ import annotations

import base64
import bisect
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DETAIL_LIMIT = 20  # only the 20 most recent messages of a conversation can be read in detail


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def iso(t_ms: float) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")


@dataclass
class Message:
    mid: str
    t_ms: float
    outbound: bool
    text: str
    conv: Conversation


@dataclass
class Conversation:
    id: str
    account: str
    igsid: str
    updated_ms: float = 0.0
    messages: list[Message] = field(default_factory=list)  # oldest first


def encode_cursor(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")))


def decode_cursor(cursor: str) -> Any:
    try:
        return json.loads(unb64(cursor))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("bad cursor") from exc


class Conversations:
    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.by_pair: dict[tuple[str, str], Conversation] = {}
        self.by_id: dict[str, Conversation] = {}
        self.messages: dict[str, Message] = {}

    def get(self, account: str, igsid: str) -> Conversation:
        conv = self.by_pair.get((account, igsid))
        if conv is None:
            conv = Conversation(b64(f"ig_conversation:{account}:{igsid}"), account, igsid)
            self.by_pair[(account, igsid)] = conv
            self.by_id[conv.id] = conv
        return conv

    def add(self, account: str, igsid: str, mid: str, t_ms: float, outbound: bool, text: str) -> Message:
        conv = self.get(account, igsid)
        msg = Message(mid, t_ms, outbound, text, conv)
        if not conv.messages or conv.messages[-1].t_ms <= t_ms:
            conv.messages.append(msg)
        else:
            bisect.insort(conv.messages, msg, key=lambda m: m.t_ms)
        conv.updated_ms = max(conv.updated_ms, t_ms)
        self.messages[mid] = msg
        return msg

    def page(
        self, account: str, user_id: str | None, after: str | None, before: str | None, limit: int
    ) -> tuple[list[Conversation], dict[str, str], bool]:
        """One page of ``account``'s conversations, newest first: (items, cursors, has_next)."""
        if user_id is not None:
            one = self.by_pair.get((account, user_id))
            convs = [one] if one is not None and one.messages else []
        else:
            convs = [c for c in self.by_id.values() if c.account == account and c.messages]
        keys = sorted(((-c.updated_ms, c.id), c) for c in convs)
        pos = [k for k, _ in keys]
        if after:
            u, cid = decode_cursor(after)
            start = bisect.bisect_right(pos, (-u, cid))
            chosen = keys[start : start + limit]
            has_next = start + limit < len(keys)
        elif before:
            u, cid = decode_cursor(before)
            end = bisect.bisect_left(pos, (-u, cid))
            chosen = keys[max(0, end - limit) : end]
            has_next = end < len(keys)
        else:
            chosen = keys[:limit]
            has_next = limit < len(keys)
        items = [c for _, c in chosen]
        cursors = {}
        if items:
            cursors = {
                "before": encode_cursor([items[0].updated_ms, items[0].id]),
                "after": encode_cursor([items[-1].updated_ms, items[-1].id]),
            }
        return items, cursors, has_next

    @staticmethod
    def message_page(
        conv: Conversation, after: str | None, limit: int
    ) -> tuple[list[tuple[int, Message]], dict[str, str], bool]:
        """Messages newest first as (rank, message); rank < 20 can be read in detail."""
        newest = conv.messages[::-1]
        start = int(decode_cursor(after)) + 1 if after else 0
        chosen = list(enumerate(newest))[start : start + limit]
        cursors = {}
        if chosen:
            cursors = {"before": encode_cursor(chosen[0][0]), "after": encode_cursor(chosen[-1][0])}
        return chosen, cursors, start + limit < len(newest)


def render_message(msg: Message, fields: set[str], account_name: str) -> dict[str, Any]:
    conv = msg.conv
    biz = {"id": conv.account, "username": account_name}
    user = {"id": conv.igsid, "username": f"user_{conv.igsid}"}
    sender, to = (biz, user) if msg.outbound else (user, biz)
    out: dict[str, Any] = {}
    for name in ("id", "created_time", "from", "to", "message"):
        if name not in fields:
            continue
        if name == "id":
            out["id"] = msg.mid
        elif name == "created_time":
            out["created_time"] = iso(msg.t_ms)
        elif name == "from":
            out["from"] = sender
        elif name == "to":
            out["to"] = {"data": [to]}
        else:
            out["message"] = msg.text
    return out
