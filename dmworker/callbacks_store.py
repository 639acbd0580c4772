"""Dead callbacks in Redis: events a destination did not take within ``DMWORKER_CALLBACK_MAX_AGE_S``,
kept for an operator to list, replay or purge; the callback counters and the age of the oldest
event not yet delivered (``/metrics``).

Keys (:class:`dmworker.keys.Keys`)::

    P:events:dead       ZSET  event id -> ms it was given up (kept DMWORKER_DLQ_RETENTION_S,
                              at most DMWORKER_DLQ_MAX, like dead letters)
    P:events:dead:data  HASH  event id -> {"event": {...}, "to": ["default"|"account", ...],
                              "reason": "HTTP 500" | "timeout" | ..., "dead_ms": ms}
    P:events:replay     ZSET  event id -> ms from which a deliverer may take it (replays)
    P:events:cbstats    HASH  delivered, failed, dead: counts of (event, destination) pairs

``to`` names destinations, not URLs (``default``: ``DMWORKER_CALLBACK_URL``; ``account``: the
account's ``callback_url``), so a replay goes to the URL configured now and no URL (which may
carry a password) is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .keys import Keys

#: A deliverer that took a replay holds it this long (ms) before another may take it again.
REPLAY_LEASE_MS = 600_000
#: Accounts whose streams are read for the oldest undelivered event (the most recently active).
MAX_GAUGE_ACCOUNTS = 1000
GROUP = "callbacks"
OUTCOMES = ("delivered", "failed", "dead")


@dataclass(frozen=True)
class DeadCallback:
    """One dead callback: the event (with its ``id``), the destinations that refused it, why, when (ms)."""

    id: str
    event: dict[str, Any]
    to: tuple[str, ...]
    reason: str
    dead_ms: int

    @property
    def account(self) -> str:
        return self.id.partition("/")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "to": list(self.to), "reason": self.reason, "dead_ms": self.dead_ms,
                "event": self.event}  # fmt: skip


class CallbackStore:
    """Dead callbacks, replays and counters of one key prefix.

    Args:
        client: a Redis client with ``decode_responses=True``.
        retention_ms: how long a dead callback is kept (ms).
        max_dead: most dead callbacks kept (the oldest go first).
    """

    def __init__(self, client: Any, prefix: str, retention_ms: int, max_dead: int) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.retention_ms = retention_ms
        self.max_dead = max_dead

    # ------------------------------------------------------------------ writes (deliverer)
    def bury(self, event: dict[str, Any], to: Iterable[str], reason: str, now_ms: int) -> None:
        """Keep ``event`` as dead for the destinations ``to`` (merged with any it is dead for)."""
        k, eid = self.keys, str(event["id"])
        old = self.redis.hget(k.events_dead_data, eid)
        labels = set(to) | (set(json.loads(old).get("to", [])) if old else set())
        record = {"event": event, "to": sorted(labels), "reason": reason, "dead_ms": now_ms}
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(k.events_replay, eid)
        pipe.zadd(k.events_dead, {eid: now_ms})
        pipe.hset(k.events_dead_data, eid, json.dumps(record, separators=(",", ":")))
        pipe.execute()
        self._trim(now_ms)

    def done(self, ids: Sequence[str]) -> None:
        """Replays delivered everywhere: forget them."""
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self.keys.events_replay, *ids)
            pipe.hdel(self.keys.events_dead_data, *ids)
            pipe.execute()

    def count(self, outcome: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``outcome`` (one of :data:`OUTCOMES`)."""
        if n:
            self.redis.hincrby(self.keys.events_callback_stats, outcome, n)

    def take_replays(self, now_ms: int, limit: int = 100) -> list[DeadCallback]:
        """Replays due at ``now_ms``; each is leased for :data:`REPLAY_LEASE_MS` to the caller."""
        k = self.keys
        ids = self.redis.zrangebyscore(k.events_replay, "-inf", now_ms, start=0, num=limit)
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(k.events_replay, dict.fromkeys(ids, now_ms + REPLAY_LEASE_MS), xx=True)
        pipe.hmget(k.events_dead_data, ids)
        raws = pipe.execute()[1]
        out, gone = [], []
        for eid, raw in zip(ids, raws, strict=True):
            if raw:
                out.append(_record(eid, raw))
            else:
                gone.append(eid)
        if gone:
            self.redis.zrem(k.events_replay, *gone)
        return out

    # ------------------------------------------------------------------ operator
    def list(self, account: str | None = None, limit: int = 100) -> list[DeadCallback]:
        """Dead callbacks, newest first (of ``account``, or of every account)."""
        k, start, chunk = self.keys, 0, max(limit, 1000)
        out: list[DeadCallback] = []
        while len(out) < limit:
            ids = self.redis.zrevrange(k.events_dead, start, start + chunk - 1)
            if not ids:
                break
            start += chunk
            wanted = [i for i in ids if account is None or i.startswith(f"{account}/")]
            if wanted:
                raws = self.redis.hmget(k.events_dead_data, wanted)
                out += [_record(i, r) for i, r in zip(wanted, raws, strict=True) if r]
        return out[:limit]

    def replay(self, ids: Iterable[str] | None = None, account: str | None = None, now_ms: int = 0) -> int:
        """Hand dead callbacks back to the deliverers (``ids``, else all of ``account``, else all);
        returns how many.  Each keeps its id; it is retried for a new max age from the replay."""
        chosen = list(ids) if ids is not None else [d.id for d in self.list(account, limit=self.max_dead)]
        k, moved = self.keys, 0
        for start in range(0, len(chosen), 1000):
            part = chosen[start : start + 1000]
            scores = self.redis.zmscore(k.events_dead, part)
            found = [i for i, s in zip(part, scores, strict=True) if s is not None]
            if found:
                pipe = self.redis.pipeline(transaction=False)
                pipe.zrem(k.events_dead, *found)
                pipe.zadd(k.events_replay, dict.fromkeys(found, now_ms))
                pipe.execute()
                moved += len(found)
        return moved

    def purge(self, account: str | None = None) -> int:
        """Forget the dead callbacks of ``account`` (``None``: every one); returns how many."""
        ids = [d.id for d in self.list(account, limit=max(self.max_dead, self.size()))]
        for start in range(0, len(ids), 1000):
            part = ids[start : start + 1000]
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self.keys.events_dead, *part)
            pipe.hdel(self.keys.events_dead_data, *part)
            pipe.execute()
        return len(ids)

    # ------------------------------------------------------------------ numbers
    def size(self) -> int:
        return int(self.redis.zcard(self.keys.events_dead))

    def counters(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.keys.events_callback_stats)
        return {o: float(raw.get(o) or 0) for o in OUTCOMES}

    def oldest_undelivered_ms(self, stream_of: Any) -> int | None:
        """Creation time (ms) of the oldest event group ``callbacks`` has not acknowledged, over the
        :data:`MAX_GAUGE_ACCOUNTS` accounts with the newest events (``stream_of(account)``: the
        account's stream key); ``None`` when there is none (or no deliverer ever ran)."""
        accounts = self.redis.zrevrange(self.keys.events_active, 0, MAX_GAUGE_ACCOUNTS - 1)
        pipe = self.redis.pipeline(transaction=False)
        for a in accounts:
            pipe.xpending(stream_of(a), GROUP)
            pipe.xinfo_groups(stream_of(a))
        replies = pipe.execute(raise_on_error=False) if accounts else []
        ids: list[str] = []
        reads = self.redis.pipeline(transaction=False)
        for n, a in enumerate(accounts):
            pending, groups = replies[2 * n], replies[2 * n + 1]
            if isinstance(pending, dict) and pending.get("pending") and pending.get("min"):
                ids.append(pending["min"])
            group = (
                next((g for g in groups if g.get("name") == GROUP), None)
                if isinstance(groups, list)
                else None
            )
            if group is not None:
                reads.xrange(stream_of(a), f"({group['last-delivered-id']}", "+", count=1)
        for got in reads.execute() if len(reads) else []:
            ids += [entry for entry, _ in got]
        stamps = [int(str(i).partition("-")[0]) for i in ids]
        return min(stamps) if stamps else None

    def _trim(self, now_ms: int) -> None:
        k = self.keys
        old = self.redis.zrangebyscore(k.events_dead, "-inf", now_ms - self.retention_ms, start=0, num=1000)
        extra = self.size() - len(old) - self.max_dead
        if extra > 0:
            old += self.redis.zrange(k.events_dead, len(old), len(old) + min(extra, 1000) - 1)
        if old:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(k.events_dead, *old)
            pipe.hdel(k.events_dead_data, *old)
            pipe.execute()


def _record(eid: str, raw: str) -> DeadCallback:
    data = json.loads(raw)
    to = tuple(data.get("to") or ())
    return DeadCallback(
        eid, data.get("event") or {}, to, str(data.get("reason", "")), int(data.get("dead_ms") or 0)
    )
