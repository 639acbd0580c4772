"""Operator views: dead letters (list, show, replay, purge) and per-account state.

The same functions back ``dmworker dlq ...``, ``dmworker accounts`` and the HTTP API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import jobindex
from .accountinfo import pause_state
from .errors import JobNotFoundError, JobStateError
from .jobs import JobStatus
from .keys import account_of_job
from .lanes import LaneStore
from .settings import RATE_CLASSES, Settings


class DeadLetters:
    """The dead-letter queue of every account (jobs that failed for good, with their reason)."""

    def __init__(self, store: LaneStore, publish: Any = None, clock: Any = None) -> None:
        self.store = store
        self._publish = publish
        self._clock = clock  # () -> epoch ms or None (the Redis clock); tests inject time

    def accounts(self) -> list[str]:
        return sorted(self.store.redis.smembers(self.store.keys.accounts))

    def list(self, account: str | None = None, limit: int = 100) -> list[JobStatus]:
        """Dead letters, newest first (at most ``limit``)."""
        out: list[JobStatus] = []
        for acct in [account] if account else self.accounts():
            k = self.store.acct(acct)
            ids = self.store.redis.zrevrange(k.dlq, 0, limit - 1)
            if not ids:
                continue
            sts = self.store.redis.hmget(k.status, ids)
            jobs = self.store.redis.hmget(k.jobs, ids)
            for jid, st, job in zip(ids, sts, jobs, strict=True):
                if st:
                    out.append(JobStatus.from_redis(jid, acct, st, job))
        out.sort(key=lambda s: s.updated_ms, reverse=True)
        return out[:limit]

    def count(self, account: str | None = None) -> int:
        return sum(
            self.store.redis.zcard(self.store.acct(a).dlq)
            for a in ([account] if account else self.accounts())
        )

    def show(self, job_id: str) -> tuple[JobStatus, dict[str, Any] | None]:
        """A dead letter's status and its stored job (payload, no token).

        Raises:
            JobNotFoundError: when the job is not in the dead-letter queue.
        """
        acct = account_of_job(job_id)
        k = self.store.acct(acct)
        if self.store.redis.zscore(k.dlq, job_id) is None:
            raise JobNotFoundError(job_id)
        st, job = self.store.redis.hget(k.status, job_id), self.store.redis.hget(k.jobs, job_id)
        if st is None:
            raise JobNotFoundError(job_id)
        return JobStatus.from_redis(job_id, acct, st, job), (json.loads(job) if job else None)

    def replay(self, job_id: str) -> None:
        """Put a dead letter back at the tail of its lane (attempts reset, a fresh age).

        Raises:
            JobNotFoundError: no such job (or its retention has passed).
            JobStateError: the job exists but is not dead-lettered (``state`` says what it is:
                already replayed, sent, ...).
        """
        try:
            acct = account_of_job(job_id)
        except ValueError:
            raise JobNotFoundError(job_id) from None
        raw = self.store.redis.hget(self.store.acct(acct).status, job_id)
        if raw is None:
            raise JobNotFoundError(job_id)
        status = JobStatus.from_redis(job_id, acct, raw, None)
        now = self._clock() if self._clock is not None else None
        tag, extra = self.store.replay(acct, job_id, status.lane, now_ms=now)
        if tag == "notfound":
            raise JobNotFoundError(job_id)
        if tag == "notdead":
            raise JobStateError(job_id, extra, f"job {job_id} is not dead-lettered (state: {extra})")
        if extra:
            self._do_publish(acct, status.lane)

    def purge(self, account: str | None = None) -> int:
        """Forget every dead letter (of ``account``); returns how many."""
        n = 0
        for acct in [account] if account else self.accounts():
            ids = self.store.redis.zrange(self.store.acct(acct).dlq, 0, -1)
            if ids:
                n += self.purge_ids(acct, ids)
        return n

    def replay_ids(self, account: str, ids: Sequence[str]) -> int:
        """Replay the dead letters among ``ids`` of ``account`` in pipelined round trips (what is no
        longer dead-lettered is skipped); returns how many were replayed."""
        from . import scripts

        store, k = self.store, self.store.acct(account)
        raws: Any = store.redis.hmget(k.status, list(ids)) if ids else []
        lanes: dict[str, str] = {}
        for job_id, raw in zip(ids, raws, strict=True):
            if raw:
                lanes[job_id] = JobStatus.from_redis(job_id, account, raw, None).lane
        if not lanes:
            return 0
        s = store.settings
        now = self._clock() if self._clock is not None else None
        todo = list(lanes.items())

        def build(pipe: Any) -> None:
            for job_id, lane in todo:
                store._run(
                    "replay",
                    account,
                    [k.lane(lane), k.ready],
                    [job_id, lane, s.dispatch_grace_ms, int(s.max_age_s * 1000)],
                    now,
                    pipe=pipe,
                )

        # dead letters of one lane go back in the order given even if the script cache is emptied
        replies = scripts.execute_pipeline(store.redis, build, load=("replay",) if len(todo) > 1 else ())
        replayed = 0
        publish = []
        for (_job_id, lane), reply in zip(todo, replies, strict=True):
            if reply[0] == "replayed":
                replayed += 1
                if int(reply[1]):
                    publish.append(lane)
        if replayed:
            wall = now if now is not None else int(store._redis_now_ms())
            store.redis.zadd(store.keys.due, {account: wall + s.dispatch_grace_ms}, lt=True)
        for lane in publish:
            self._do_publish(account, lane)
        return replayed

    def purge_ids(self, account: str, ids: Sequence[str]) -> int:
        """Forget the dead letters among ``ids`` of ``account``; returns how many."""
        k = self.store.acct(account)
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.zscore(k.dlq, job_id)
        scores: Any = pipe.execute() if ids else []
        dead: list[str] = [str(j) for j, score in zip(ids, scores, strict=True) if score is not None]
        if not dead:
            return 0
        jobindex.unindex(self.store.redis, k, dead)
        pipe = self.store.redis.pipeline()
        pipe.zrem(k.dlq, *dead)
        pipe.hdel(k.jobs, *dead)
        pipe.hdel(k.status, *dead)
        pipe.execute()
        return len(dead)

    def _do_publish(self, account: str, recipient: str) -> None:
        if self._publish is not None:
            self._publish(account, recipient)
            return
        from .celery_app import publish

        publish(account, recipient)


@dataclass(frozen=True)
class AccountState:
    """One account as an operator sees it.  Times are epoch milliseconds."""

    account: str
    state: str  # active | paused | reauth_required | disabled
    configured: bool
    limits: dict[str, str]
    burst: int
    usage_pct: int | None
    slowdown: float
    paused_until_ms: int | None
    pause_reason: str | None
    pause_detail: str | None
    backlog_lanes: int
    scheduled: int
    dead_letters: int
    stats: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def known_accounts(store: LaneStore) -> list[str]:
    """Every account with data (``P:accounts``) or configured in this process, sorted by id."""
    return sorted(set(store.redis.smembers(store.keys.accounts)) | set(store.settings.accounts))


def account_states(store: LaneStore, names: Sequence[str] | None = None) -> list[AccountState]:
    """Limits, current usage, pause (until when and why) and backlog of ``names`` (default: every
    known account, :func:`known_accounts`), in that order; one Redis round trip per 500 accounts."""
    s = store.settings
    r = store.redis
    sec, usec = r.time()
    now = int(sec) * 1000 + int(usec) // 1000
    out = []
    names = known_accounts(store) if names is None else list(names)
    replies: list[Any] = []
    for i in range(0, len(names), 500):  # one round trip per 500 accounts
        pipe = r.pipeline(transaction=False)
        for acct in names[i : i + 500]:
            k = store.acct(acct)
            pipe.hgetall(k.pause)
            pipe.hget(k.usage, "call_count_pct")
            pipe.hget(k.limiter, "slow")
            for ready in k.ready_sets:
                pipe.zcard(ready)
            pipe.zcard(k.sched)
            pipe.zcard(k.dlq)
            pipe.hgetall(k.stats)
        replies += pipe.execute()
    for n, acct in enumerate(names):
        pause, usage, slow, lanes_h, lanes_n, lanes_l, sched, dlq, stats = replies[n * 9 : (n + 1) * 9]
        lanes = int(lanes_h) + int(lanes_n) + int(lanes_l)
        until = int(pause["until"]) if pause.get("until") else None
        active = until is not None and (until > now or pause.get("reason") == "token_invalid")
        out.append(
            AccountState(
                account=acct,
                state=pause_state(pause, now, _fingerprint(s, acct), False),
                configured=acct in s.accounts,
                limits={c: str(s.rate_for(acct, c)) for c in RATE_CLASSES},
                burst=s.burst_for(acct),
                usage_pct=int(usage) if usage else None,
                slowdown=float(slow or 1),
                paused_until_ms=until if active else None,
                pause_reason=pause.get("reason") if active else None,
                pause_detail=pause.get("detail") if active else None,
                backlog_lanes=int(lanes),
                scheduled=int(sched),
                dead_letters=int(dlq),
                stats={kk: float(v) for kk, v in stats.items()},
            )
        )
    return out


def resume_account(store: LaneStore, account: str) -> bool:
    """Lift an account pause by hand and wake the lanes parked behind it; True if one was lifted."""
    lifted, _woken = store.resume(account, mode="any")
    return lifted


def _fingerprint(settings: Settings, account: str) -> str | None:
    """The fingerprint of the token this process holds for ``account`` (None: no token)."""
    conf = settings.accounts.get(account)
    return conf.fingerprint if conf is not None and conf.access_token else None
