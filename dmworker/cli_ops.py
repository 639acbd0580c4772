"""``dmworker`` subcommands an operator reads with: the read side of conversations;
:func:`describe_account`, an account's state in one line with readable times (``dmworker accounts``
lives in :mod:`dmworker.cli_accounts`); and :func:`describe_workers`, whether any worker is alive."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

from .cli_common import UsageError, add_parser, when


def register(sub: Any) -> None:
    cv = add_parser(sub, "conversations", "read side: list conversations, read messages")
    cv.add_argument("action", choices=("list", "messages"), help="what to read")
    cv.add_argument("conversation_id", nargs="?", help="the conversation (messages)")
    cv.add_argument("--account", help="account to read (default: DMWORKER_ACCOUNT_ID)")
    cv.add_argument("--limit", type=int, default=25, help="most conversations listed")
    cv.set_defaults(handler=conversations)


def describe_account(s: Any, now_ms: float | None = None) -> str:
    """One line for an :class:`~dmworker.admin.AccountState` (times in UTC and relative to now)."""
    now = time.time() * 1000 if now_ms is None else now_ms
    if s.paused_until_ms and s.paused_until_ms > now:
        pause = f"paused until {when(s.paused_until_ms, now)} ({s.pause_reason})"
    elif s.paused_until_ms:  # a bad token: paused until the token is replaced
        pause = f"paused until resumed ({s.pause_reason})"
    else:
        pause = "active"
    limits = ", ".join(f"{k} {v}" for k, v in s.limits.items())
    usage = f"{s.usage_pct}%" if s.usage_pct is not None else "-"
    return (
        f"{s.account}: {pause}; limits {limits} (burst {s.burst}); usage {usage}; slowdown x{s.slowdown:g}; "
        f"lanes {s.backlog_lanes}; scheduled {s.scheduled}; dead letters {s.dead_letters}"
    )


def conversations(ns: argparse.Namespace) -> int:
    from .graph import InstagramClient
    from .runtime import get_runtime

    if ns.action == "messages" and not ns.conversation_id:
        raise UsageError("conversations messages takes a conversation id (`conversations list` shows them)")
    # the account's login decides the host and the path id (a Facebook Login account reads
    # /<page id>/conversations with its Page token)
    with InstagramClient.for_account(get_runtime().settings, ns.account) as client:
        if ns.action == "list":
            for i, conv in enumerate(client.conversations.list(limit=min(ns.limit, 100))):
                if i >= ns.limit:
                    break
                print(f"{conv.id}\t{conv.updated_time}")
        else:
            for m in client.conversations.get_messages(ns.conversation_id):
                print(json.dumps(getattr(m, "__dict__", m), default=str))
    return 0


#: A worker or dispatcher counts as alive when it beat within this many ms (as ``/healthz`` and
#: ``dmworker_workers_alive``; kept equal to ``dmworker.web.health.HEARTBEAT_MAX_AGE_MS``, which the
#: CLI does not import: the web extra may be missing).
WORKER_ALIVE_MS = 30_000
#: Most names of live workers printed on the line.
WORKER_NAMES_SHOWN = 5


@dataclass(frozen=True)
class WorkerLiveness:
    """The worker heartbeats (``P:workers``) as of ``now_ms`` (Redis clock, epoch ms)."""

    alive: list[str]  # names that beat within WORKER_ALIVE_MS, newest first
    last_name: str | None  # the newest beat of any age
    last_beat_ms: int | None
    now_ms: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``alive`` (count), ``names``, ``last_beat_ms``, ``last_beat_age_s``, ``window_s``."""
        age = None if self.last_beat_ms is None else (self.now_ms - self.last_beat_ms) / 1000
        return {
            "alive": len(self.alive),
            "names": self.alive,
            "last_beat_ms": self.last_beat_ms,
            "last_beat_age_s": age,
            "window_s": WORKER_ALIVE_MS / 1000,
        }


def worker_liveness(store: Any) -> WorkerLiveness:
    """Which workers (and schedulers) beat in the last :data:`WORKER_ALIVE_MS`; two round trips.

    Raises:
        redis.RedisError: when Redis cannot be reached.
    """
    r = store.redis
    sec, usec = r.time()
    now = int(sec) * 1000 + int(usec) // 1000
    pipe = r.pipeline(transaction=False)
    pipe.zrevrangebyscore(store.keys.workers, "+inf", now - WORKER_ALIVE_MS)
    pipe.zrevrange(store.keys.workers, 0, 0, withscores=True)
    alive, newest = pipe.execute()
    name, at = (str(newest[0][0]), int(newest[0][1])) if newest else (None, None)
    return WorkerLiveness([str(n) for n in alive], name, at, now)


def describe_workers(w: WorkerLiveness) -> str:
    """One line: how many workers beat in the last 30 s (their names), or when the last one did."""
    window = f"{WORKER_ALIVE_MS // 1000} s"
    if w.alive:
        names = ", ".join(w.alive[:WORKER_NAMES_SHOWN])
        more = f" and {len(w.alive) - WORKER_NAMES_SHOWN} more" if len(w.alive) > WORKER_NAMES_SHOWN else ""
        return f"workers: {len(w.alive)} alive (a heartbeat in the last {window}: {names}{more})"
    if w.last_beat_ms is None:
        return "workers: NONE has ever sent a heartbeat: nothing is sent until one runs (`dmworker worker`)"
    return (
        f"workers: NONE alive (no heartbeat in the last {window}); the last one was "
        f"{when(w.last_beat_ms, w.now_ms)} from {w.last_name}: queued jobs wait until a worker runs"
    )
