"""The lane store: typed Python calls over the Lua scripts (one Redis round trip each).

A *lane* is the FIFO of one (account, recipient).  At most one worker holds a lane (a lease
with an expiry); the ``ready`` sorted set of the account says when each non-empty lane should
next be looked at, which is how waits (typing pause, backoff, rate limit, account pause) hold
no worker: the lane is released with a wake-up time and dispatched again when it comes.

Every method takes ``now_ms`` (``None`` = the Redis server's clock) so tests inject time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis

from . import scripts
from .account_ops import AccountOps
from .keys import AccountKeys, Keys
from .settings import RATE_CLASSES, Settings, token_fingerprint

#: Lanes of one account a Celery message may carry (dispatchers admit a backlog in such groups).
LANES_PER_MESSAGE = 8


@dataclass(frozen=True)
class EnqueueResult:
    status: str  # "new" | "dup" | "idemconflict" | "keyexists" | "window" | "expiry" | "backlog"
    ids: tuple[str, ...] = ()
    publish: bool = False
    due_ms: int | None = None
    window_closes_ms: int | None = None
    existing_id: str | None = None
    over: int = 0  # "backlog": due jobs beyond the account's limit with this unit


@dataclass(frozen=True)
class DispatchResult:
    """Lanes claimed for publishing, follow-ups due, and when to look again (ms, Redis clock)."""

    now_ms: int
    lanes: list[str]
    followups: list[str]
    next_ms: int | None
    #: due lanes wait for the admission budget (``next_ms`` is then a poll, ``admit_poll_ms`` ahead)
    waiting: bool = False
    next_followup_ms: int | None = None


@dataclass(frozen=True)
class Step:
    """What the lane asks its holder to do next."""

    action: str  # "job" | "wait" | "empty" | "busy" | "lost" | "yield"
    job_id: str | None = None
    job_json: str | None = None
    state_before: str | None = None
    attempts: int = 0
    window_ms: int | None = None
    comment_state: str | None = None
    now_ms: int = 0
    until_ms: int | None = None
    why: str | None = None
    #: the step of the next lane taken in the same call (``LaneStore.step(next_lane=...)``)
    next: Step | None = None
    #: lanes claimed for the caller in the same call (``LaneStore.step(claim=...)``)
    claimed: tuple[str, ...] = ()


class LaneStore(AccountOps):
    """Lane operations for one Redis and one key prefix (account-wide ones: :class:`AccountOps`)."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        # decode_responses=True: every reply is str (redis-py's stubs cannot say so, hence Any)
        self.redis: Any = client
        self.keys = Keys(settings.key_prefix)

    def acct(self, account: str) -> AccountKeys:
        return self.keys.account(account)

    def _life(self, account: str, *keys: str) -> tuple[list[str], list[Any]]:
        """KEYS and the leading ARGV (after the clock) of a lifecycle script for ``account``."""
        s = self.settings
        retention = [s.retention_s * 1000, s.dlq_retention_s * 1000, s.dlq_max]
        return [*self.acct(account).block(), *keys], retention

    @property
    def events_keep_ms(self) -> int:
        """How long events are kept (ms); 0 = no events are written."""
        return int(self.settings.events_retention_s * 1000)

    def _run(
        self,
        name: str,
        account: str,
        keys: Sequence[str],
        args: Sequence[Any],
        now_ms: int | None,
        pipe: Any = None,
        emits: bool = True,
    ) -> Any:
        """Run lifecycle script ``name``; when it may write events (``emits``), the account is
        marked in ``P:events:active`` in the same round trip (consumers read only marked accounts)."""
        all_keys, leading = self._life(account, *keys)
        all_keys += self.acct(account).tail()
        argv = [*leading, *args, self.settings.admit_budget(account), self.events_keep_ms]
        if pipe is not None or not emits or not self.events_keep_ms:
            return scripts.run(self.redis, name, all_keys, argv, now_ms, pipe=pipe)

        def build(p: Any) -> None:  # the account is marked as having new events, same round trip
            scripts.run(self.redis, name, all_keys, argv, now_ms, pipe=p)
            p.zadd(self.keys.events_active, {account: int(time.time() * 1000)})

        return scripts.execute_pipeline(self.redis, build)[0]

    # ------------------------------------------------------------------ producer side
    def enqueue(
        self,
        account: str,
        recipient: str,
        jobs: Sequence[tuple[str, str, str]],
        *,
        delay_ms: int | None = None,
        at_ms: int | None = None,
        idempotency_key: str | None = None,
        fingerprint: str = "",
        key: str | None = None,
        replace: bool = False,
        cancel_on_reply: bool = False,
        window_limit_ms: int = 0,
        ttl_ms: int | None = None,
        expires_at_ms: int | None = None,
        priority: str = "normal",
        now_ms: int | None = None,
        pipe: Any = None,
    ) -> Any:
        """Accept ``jobs`` (id, job JSON, rate class) for one lane atomically, as one unit.

        ``fingerprint`` identifies the request behind ``idempotency_key`` (the same key with a
        different request is refused).  With ``pipe`` the call is only queued; pass the raw reply
        to :meth:`parse_enqueue`.
        """
        k = self.acct(account)
        s = self.settings
        keys = [
            k.lane(recipient),
            k.ready,
            k.idempotency(idempotency_key) if idempotency_key else k.idempotency("-"),
            k.windows,
        ]
        args: list[Any] = [
            recipient,
            "" if delay_ms is None else int(delay_ms),
            "" if at_ms is None else int(at_ms),
            s.retention_s if idempotency_key else 0,
            key or "",
            1 if replace else 0,
            1 if cancel_on_reply else 0,
            int(window_limit_ms),
            s.dispatch_grace_ms,
            "" if ttl_ms is None else int(ttl_ms),
            "" if expires_at_ms is None else int(expires_at_ms),
            int(s.max_age_s * 1000),
            fingerprint,
            {"high": "h", "low": "l"}.get(priority, "n"),
            s.backlog_limit(account),
            len(jobs),
        ]
        for job_id, job_json, rate_class in jobs:
            args += [job_id, job_json, rate_class]
        reply = self._run("enqueue", account, keys, args, now_ms, pipe=pipe)
        return reply if pipe is not None else self.parse_enqueue(reply)

    @staticmethod
    def parse_enqueue(reply: list[Any]) -> EnqueueResult:
        tag = reply[0]
        if tag in ("new", "dup", "idemconflict"):
            return EnqueueResult(
                tag, tuple(reply[3:]), bool(int(reply[1])), int(reply[2]) if tag == "new" else None
            )
        if tag == "keyexists":
            return EnqueueResult(tag, existing_id=reply[1])
        if tag == "window":
            closes = int(reply[1])
            return EnqueueResult(tag, window_closes_ms=None if closes < 0 else closes)
        if tag == "expiry":
            return EnqueueResult(tag, due_ms=int(reply[1]))
        if tag == "backlog":
            return EnqueueResult(tag, over=int(reply[1]))
        raise RuntimeError(f"unexpected enqueue reply {reply!r}")

    def cancel(
        self,
        account: str,
        job_id: str | None = None,
        key: str | None = None,
        reason: str = "cancelled by the producer",
        why: str = "cancelled",
        now_ms: int | None = None,
    ) -> tuple[str, str | None, str | None]:
        """Cancel a job's unit by job id or follow-up key.

        Returns ("cancelled", id, None) | ("notfound", id or None, None) | ("final", id, state):
        nothing was left to cancel (``state`` is the first step's state).
        """
        reply = self._run("cancel", account, [], [job_id or "", key or "", why, reason], now_ms)
        if reply[0] == "cancelled":
            return "cancelled", reply[1], None
        return reply[0], (reply[1] or None), (reply[2] if len(reply) > 2 else None)

    def inbound(
        self,
        account: str,
        user: str,
        event_id: str,
        ts_ms: int,
        *,
        opens_window: bool,
        cancels: bool,
        dedupe_ttl_s: int = 48 * 3600,
        now_ms: int | None = None,
    ) -> tuple[bool, list[str]]:
        """Record a user's event: (was it new, ids of follow-ups cancelled by it).

        An event older than ``dedupe_ttl_s`` counts as not new (it could be a replay).
        """
        k = self.acct(account)
        reply = self._run(
            "inbound",
            account,
            [k.event(event_id), k.windows, k.window_times, k.legacy_cancel_on_reply(user)],
            [user, int(ts_ms), 1 if opens_window else 0, 1 if cancels else 0, dedupe_ttl_s],
            now_ms,
        )
        if reply[0] in ("dup", "old"):
            return False, []
        return True, list(reply[2:])

    def replay(self, account: str, job_id: str, lane: str, now_ms: int | None = None) -> tuple[str, Any]:
        """Put a dead letter back in its lane: ("replayed", publish?) | ("notfound", None) |
        ("notdead", its state)."""
        k = self.acct(account)
        s = self.settings
        reply = self._run(
            "replay",
            account,
            [k.lane(lane), k.ready],
            [job_id, lane, s.dispatch_grace_ms, int(s.max_age_s * 1000)],
            now_ms,
        )
        if reply[0] == "replayed":
            wall = now_ms if now_ms is not None else int(time.time() * 1000)
            self.redis.zadd(self.keys.due, {account: wall + s.dispatch_grace_ms}, lt=True)
            return "replayed", bool(int(reply[1]))
        return reply[0], (reply[1] if len(reply) > 1 else None)

    # ------------------------------------------------------------------ worker side
    def step(
        self,
        account: str,
        recipient: str,
        holder: str,
        *,
        acquire: bool,
        prev_id: str | None = None,
        outcome: Mapping[str, Any] | None = None,
        yield_lane: bool = False,
        token: str = "",
        next_lane: str | None = None,
        next_holder: str = "",
        claim: int = 0,
        now_ms: int | None = None,
    ) -> Step:
        """Record ``outcome`` of ``prev_id`` and get the lane's next action (one round trip).

        With ``next_lane`` (another lane of ``account``, the next one of the same Celery message):
        when this lane has no job to hand out now, the same call takes ``next_lane`` for
        ``next_holder`` as an ``acquire=True`` step would, and its step is the result's ``next``
        (``None`` when this lane handed out a job and the next one was not touched).

        With ``claim`` > 0: when this lane ends in this call, up to ``claim`` lanes of the account
        that are due and wait for admission are claimed for the caller as a dispatcher would claim
        them for a new Celery message (admitted, within the budget; a whole group or none unless a
        high-priority lane is due): the result's ``claimed``, for the caller to visit.
        """
        k = self.acct(account)
        s = self.settings
        keys = [
            *k.block(),
            k.lane(recipient),
            k.lease(recipient),
            k.hold,
            k.limiter,
            k.pause,
            k.windows,
            k.comments,
            k.usage,
            k.comment_times,
        ]
        if next_lane is not None:
            keys += [k.lane(next_lane), k.lease(next_lane)]
        keys += k.tail()
        args: list[Any] = [
            s.retention_s * 1000,
            s.dlq_retention_s * 1000,
            s.dlq_max,
            recipient,
            holder,
            "acquire" if acquire else "continue",
            s.lease_ms,
            prev_id or "",
            json.dumps(outcome, separators=(",", ":")) if outcome else "",
            1 if yield_lane else 0,
            token_fingerprint(token) if token else "",
            s.decision_burst_for(account),
            s.thread_min_interval_ms * 1000,
            int(s.usage_decay_s * 1000),
            next_lane or "",
            next_holder,
            int(claim),
            s.dispatch_grace_ms,
        ]
        for klass in RATE_CLASSES:
            args += [klass, s.rate_for(account, klass).interval_us]
        args += [s.admit_budget(account), self.events_keep_ms]
        reply = self._step_call(account, keys, args, now_ms, emits=bool(prev_id))
        if isinstance(reply[0], str):  # one lane, and no event left unmarked
            return self._parse_step(reply)
        first, nxt, claimed, emitted = reply
        if int(emitted) and not prev_id and self.events_keep_ms:  # e.g. a job expired at a lane's head
            self.redis.zadd(self.keys.events_active, {account: int(time.time() * 1000)})
        return replace(
            self._parse_step(first), next=self._parse_step(nxt) if nxt else None, claimed=tuple(claimed)
        )

    def _step_call(
        self, account: str, keys: list[str], args: list[Any], now_ms: int | None, emits: bool
    ) -> Any:
        """The ``step`` script; with ``emits``, the account is marked in ``P:events:active`` in the
        same round trip (as :meth:`_run` does)."""
        if not emits or not self.events_keep_ms:
            return scripts.run(self.redis, "step", keys, args, now_ms)

        def build(p: Any) -> None:
            scripts.run(self.redis, "step", keys, args, now_ms, pipe=p)
            p.zadd(self.keys.events_active, {account: int(time.time() * 1000)})

        return scripts.execute_pipeline(self.redis, build)[0]

    @staticmethod
    def _parse_step(reply: list[Any]) -> Step:
        tag = reply[0]
        if tag == "job":
            return Step(
                "job",
                job_id=reply[1],
                job_json=reply[2],
                state_before=reply[3],
                attempts=int(reply[4]),
                window_ms=int(reply[5]) if reply[5] else None,
                comment_state=reply[6] or None,
                now_ms=int(reply[7]),
            )
        if tag == "wait":
            return Step("wait", until_ms=int(reply[1]), why=reply[2])
        return Step(tag)

    def dispatch(self, account: str, limit: int = 500, now_ms: int | None = None, pipe: Any = None) -> Any:
        """Claim due lanes and list due follow-ups (one round trip; queued on ``pipe`` if given).

        Parse the reply with :meth:`parse_dispatch`.
        """
        k = self.acct(account)
        reply = scripts.run(
            self.redis,
            "dispatch",
            [k.ready, k.sched, k.readyh, k.readyl, k.admitted, k.held],
            [
                self.settings.dispatch_grace_ms,
                limit,
                1000,
                self.settings.admit_budget(account),
                self.settings.admit_poll_ms,
                LANES_PER_MESSAGE,
            ],
            now_ms,
            pipe=pipe,
        )
        return reply if pipe is not None else self.parse_dispatch(reply)

    @staticmethod
    def parse_dispatch(reply: list[Any]) -> DispatchResult:
        n = int(reply[3])
        nxt = [int(x) for x in (reply[1], reply[2]) if int(x) >= 0]
        return DispatchResult(
            now_ms=int(reply[0]),
            lanes=list(reply[5 : 5 + n]),
            followups=list(reply[5 + n :]),
            next_ms=min(nxt) if nxt else None,
            waiting=bool(int(reply[4])),
            next_followup_ms=int(reply[2]) if int(reply[2]) >= 0 else None,
        )

    def due_followups(self, account: str, limit: int = 500, now_ms: int | None = None) -> list[str]:
        """Ids of follow-ups due now (not yet promoted)."""
        upper: Any = now_ms if now_ms is not None else self._redis_now_ms()
        return list(self.redis.zrangebyscore(self.acct(account).sched, "-inf", upper, start=0, num=limit))

    def promote(
        self, account: str, items: Sequence[tuple[str, str]], now_ms: int | None = None
    ) -> tuple[int, list[str]]:
        """Move due follow-ups ``(job id, lane)`` into their lanes: (count, lanes to publish).

        A follow-up whose expiry passed before it could be promoted ends ``expired``.
        """
        if not items:
            return 0, []
        k = self.acct(account)
        keys = [k.ready] + [k.lane(r) for _, r in items]
        args: list[Any] = [self.settings.dispatch_grace_ms, len(items)]
        for job_id, r in items:
            args += [job_id, r]
        reply = self._run("promote", account, keys, args, now_ms)
        return int(reply[0]), list(reply[1:])

    def limit(self, account: str, klass: str, now_ms: int | None = None) -> tuple[bool, int]:
        """One limiter decision outside a lane: (allowed, microseconds to wait)."""
        rate = self.settings.rate_for(account, klass)
        reply = scripts.run(
            self.redis,
            "limit",
            [self.acct(account).limiter],
            [
                klass,
                rate.interval_us,
                self.settings.decision_burst_for(account),
                int(self.settings.usage_decay_s * 1000),
            ],
            now_ms,
        )
        return bool(int(reply[0])), int(reply[1])

    def _redis_now_ms(self) -> int:
        sec, usec = self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000
