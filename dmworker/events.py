"""What happened to jobs and accounts, as events a producer consumes instead of polling.

Every change of a job's state is an event, written by the same Lua call that makes the change
(``lua/_lifecycle.lua`` ``emit``), so none is lost when a process dies::

    {"id": "17841400000000001/1764064800000-0", "type": "job.sent", "created_ms": 1764064800000,
     "account": "17841400000000001", "recipient": "1784...", "job_id": "...", "kind": "text",
     "state": "sent", "message_id": "m_...", "attempts": 1, "error": null}

Job events: ``job.sent``, ``job.failed`` (``error``: kind, code, subcode, message — never a token),
``job.expired``, ``job.cancelled`` (``why``: cancelled, cancelled_by_reply, replaced,
account_removed, forgotten), ``job.seen``.  Account events: ``account.paused``,
``account.resumed``, ``account.reauth_required``, ``account.token_refreshed``.

Storage: one Redis stream per account (``P:{A}:events``, in the account's hash slot), kept
``DMWORKER_EVENTS_RETENTION_S`` (24 h) on the Redis server's clock; ``P:events:active`` says which
accounts wrote events lately, so a consumer reads only those (its cost grows with the accounts that
have events, not with every account).  An event's ``id`` is ``<account>/<stream entry id>``: unique
and stable, so receivers de-duplicate on it.

Consumers use Redis consumer groups: every group sees every event, and within a group each event is
handed to one consumer and stays pending until acknowledged (at least once; a consumer that died
leaves its pending events to be claimed by another after ``claim_idle_ms``)::

    from dmworker.events import EventConsumer
    for event in EventConsumer(group="helpdesk", consumer="web-1"):   # settings from the environment
        handle(event)                      # acknowledged when the loop asks for the next one
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .lanes import LaneStore
from .settings import Settings

#: How far back (ms) a consumer looks in ``P:events:active`` beyond its last read, for clock skew
#: between the processes that mark accounts.
ACTIVE_SLACK_MS = 60_000
#: Streams read per XREADGROUP call.
STREAMS_PER_READ = 200


@dataclass(frozen=True)
class Event:
    """One event: ``data`` is its JSON object (with ``id``); ``account`` and ``entry`` locate it."""

    id: str
    account: str
    entry: str
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))


def event_id(account: str, entry: str) -> str:
    return f"{account}/{entry}"


def parse(account: str, entry: str, fields: dict[str, str] | None) -> Event:
    """An :class:`Event` from a stream entry (a malformed or deleted one: ``type: "invalid"``)."""
    try:
        data = json.loads((fields or {}).get("e", ""))
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:
        data = {"type": "invalid"}
    data["id"] = event_id(account, entry)
    return Event(data["id"], account, entry, data)


class EventConsumer:
    """Read the event streams of every account as one member (``consumer``) of ``group``.

    A group new to an account's stream starts at the oldest event still kept
    (``start_at_beginning=True``, the default) or at the events written from then on.

    Raises:
        ValueError: an empty group name.
    """

    def __init__(
        self,
        group: str,
        consumer: str | None = None,
        *,
        store: LaneStore | None = None,
        settings: Settings | None = None,
        claim_idle_ms: int = 60_000,
        start_at_beginning: bool = True,
    ) -> None:
        if store is None:
            from .runtime import get_runtime

            rt = get_runtime() if settings is None else None
            if rt is not None:
                store = rt.store
            else:
                from . import redisconn

                assert settings is not None
                store = LaneStore(settings, redisconn.client(settings))
        if not group or not isinstance(group, str):
            raise ValueError("group must be a non-empty string")
        self.store = store
        self.redis: Any = store.redis
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self.claim_idle_ms = claim_idle_ms
        self._start = "0" if start_at_beginning else "$"
        self._grouped: set[str] = set()
        self._read_since_ms = 0
        self._last_claim = 0.0
        self._unacked: list[Event] = []

    # ------------------------------------------------------------------ reading
    def _ensure_group(self, account: str) -> None:
        if account in self._grouped:
            return
        try:
            self.redis.xgroup_create(
                self.store.acct(account).events, self.group, id=self._start, mkstream=True
            )
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._grouped.add(account)

    def _active(self) -> list[str]:
        key = self.store.keys.events_active
        since = self._read_since_ms - ACTIVE_SLACK_MS
        self._read_since_ms = int(time.time() * 1000)
        return list(self.redis.zrangebyscore(key, since, "+inf"))

    def poll(self, count: int = 100) -> list[Event]:
        """New events for this consumer (at most ``count``), oldest first per account; plus events
        other members of the group left unacknowledged for ``claim_idle_ms``.  Non-blocking."""
        out: list[Event] = []
        accounts = self._active()
        for start in range(0, len(accounts), STREAMS_PER_READ):
            chunk = accounts[start : start + STREAMS_PER_READ]
            for a in chunk:
                self._ensure_group(a)
            streams = {self.store.acct(a).events: ">" for a in chunk}
            got = self.redis.xreadgroup(self.group, self.consumer, streams, count=count)
            for key, entries in got or []:
                account = _account_of(key)
                out += [parse(account, entry, fields) for entry, fields in entries]
            if len(out) >= count:
                break
        if time.monotonic() - self._last_claim > self.claim_idle_ms / 1000:
            self._last_claim = time.monotonic()
            out += self.claim(count)
        return out

    def claim(self, count: int = 100) -> list[Event]:
        """Take over events another consumer of the group left unacknowledged for ``claim_idle_ms``."""
        out: list[Event] = []
        accounts = sorted(self._grouped)
        for start in range(0, len(accounts), STREAMS_PER_READ):  # one round trip per chunk
            chunk = accounts[start : start + STREAMS_PER_READ]
            pipe = self.redis.pipeline(transaction=False)
            for account in chunk:
                key = self.store.acct(account).events
                pipe.xautoclaim(key, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count)
            for account, got in zip(chunk, pipe.execute(), strict=True):
                out += [parse(account, entry, fields) for entry, fields in got[1] if fields]
        return out

    def ack(self, events: Sequence[Event]) -> int:
        """Acknowledge ``events`` for this group; returns how many were pending."""
        by_account: dict[str, list[str]] = {}
        for e in events:
            by_account.setdefault(e.account, []).append(e.entry)
        pipe = self.redis.pipeline(transaction=False)
        for account, entries in by_account.items():
            pipe.xack(self.store.acct(account).events, self.group, *entries)
        return sum(int(x) for x in pipe.execute())

    def __iter__(self) -> Iterator[Event]:
        """Events forever; each is acknowledged when the next one is asked for (at least once)."""
        while True:
            events = self.poll()
            if not events:
                time.sleep(0.2)
                continue
            for e in events:
                yield e
                self.ack([e])


def read(store: LaneStore, account: str, since: str = "-", count: int = 100) -> list[Event]:
    """Events of ``account`` from entry ``since`` (inclusive; ``-`` = the oldest kept), no group."""
    got = store.redis.xrange(store.acct(account).events, since, "+", count=count)
    return [parse(account, entry, fields) for entry, fields in got]


def _account_of(stream_key: str) -> str:
    start, end = stream_key.index("{") + 1, stream_key.index("}")
    return stream_key[start:end]


def emit(store: LaneStore, account: str, event: dict[str, Any]) -> str | None:
    """Write an account event from Python (for changes made outside the account's scripts, such as a
    refreshed token in the registry); returns its id, or None when events are off."""
    keep = store.events_keep_ms
    if not keep:
        return None
    sec, usec = store.redis.time()
    now = int(sec) * 1000 + int(usec) // 1000
    body = json.dumps({**event, "account": account, "created_ms": now}, separators=(",", ":"))
    pipe = store.redis.pipeline(transaction=False)
    pipe.xadd(store.acct(account).events, {"e": body}, minid=now - keep, approximate=True)
    pipe.zadd(store.keys.events_active, {account: now})
    entry = pipe.execute()[0]
    return event_id(account, entry)
