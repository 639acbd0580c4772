"""The dispatcher: promotes due follow-ups, wakes lanes whose wait is over, and keeps house.

Runs as ``dmworker scheduler`` and, by default, as a thread inside every worker process.  Any
number may run: ``promote`` and ``dispatch`` are atomic scripts, so each follow-up is promoted
exactly once and each due lane is published once per ``dispatch_grace_ms``.  A lane whose Celery
message was lost (producer died after writing Redis, worker killed with prefetched messages) is
published again when its grace passes — Celery messages are hints, Redis is the truth.

Housekeeping, in bounded work per pass and spread over every dispatcher:

* **Retention.** ``P:housekeep`` schedules each account that holds data for its next trim (when
  its oldest ended job, dead letter, window or comment record becomes old enough to forget, at
  the latest one retention period ahead).  A pass claims at most :data:`TRIM_ACCOUNTS` due accounts
  (``claim.lua``: each is trimmed by one process) — cost grows with the accounts that have
  something to forget, not with every account.  Busy accounts also trim as they go: every job that
  ends removes up to two expired ones (``_lifecycle.lua``), so trimming keeps up with any send rate.
* **Refused tokens.** ``P:reauth`` lists accounts whose token Meta refused.  A process that holds a
  *different*, non-empty token for such an account lifts the hold and wakes its parked lanes.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import scripts
from .lanes import LaneStore
from .lifecycle import normalize

log = logging.getLogger("dmworker.dispatcher")

Publish = Callable[[str, str], Any]
PublishGroup = Callable[[str, list[str]], Any]
Tokens = Callable[[str], str]

#: Accounts dispatched per pass, and how long a claimed account is left to its claimer (ms).
DUE_ACCOUNTS = 500
DUE_LEASE_MS = 10_000
#: Accounts trimmed per housekeeping pass, jobs (and records) removed per account per call, and
#: how long a claimed account is left to its claimer.
TRIM_ACCOUNTS = 200
TRIM_BATCH = 1000
TRIM_LEASE_MS = 60_000
#: While an account's due lanes wait for its admission budget and passes admit none of them, each
#: next look is put off further: 1, 2, then at most this many ``admit_poll_ms`` (lanes are admitted
#: as workers take their messages, or by the workers themselves as their lanes end).
IDLE_POLLS_MAX = 4


@dataclass
class TickResult:
    promoted: int = 0
    published: int = 0
    next_due_ms: int | None = None
    now_ms: int = 0


class Dispatcher:
    """One dispatcher loop over the accounts that have something due (``P:due``)."""

    def __init__(
        self,
        store: LaneStore,
        publish: Publish,
        name: str | None = None,
        tokens: Tokens | None = None,
        publish_group: PublishGroup | None = None,
    ) -> None:
        self.store = store
        self.publish = publish
        self.publish_group = publish_group  # several lanes of one account per message, when given
        self.name = name or f"{socket.gethostname()}:{id(self):x}"
        self.tokens = tokens
        self._last_trim = 0.0
        self._last_beat = 0.0
        self._last_reauth = 0.0
        self._backfilled = False
        self._idle_polls: dict[str, int] = {}  # account -> passes in a row that admitted nothing

    def _backfill(self) -> None:
        """Once per deployment: schedule every known account (data written before ``P:due``)."""
        self._backfilled = True
        r = self.store.redis
        if not r.set(f"{self.store.keys.due}:backfilled", 1, nx=True):
            return
        batch: list[str] = []
        for account in r.sscan_iter(self.store.keys.accounts, count=1000):
            batch.append(account)
            if len(batch) >= 1000:
                r.zadd(self.store.keys.due, dict.fromkeys(batch, 0), nx=True)
                batch = []
        if batch:
            r.zadd(self.store.keys.due, dict.fromkeys(batch, 0), nx=True)

    def tick(self, now_ms: int | None = None) -> TickResult:
        """One pass over the accounts that are due: claim them, one pipelined round trip of
        ``dispatch`` for all of them, promotions where due, then when each is next due."""
        if not self._backfilled:
            self._backfill()
        res = TickResult()
        keys = self.store.keys
        got = scripts.run(self.store.redis, "claim", [keys.due], [DUE_LEASE_MS, DUE_ACCOUNTS], now_ms)
        now, accounts = int(got[0]), list(got[1:])
        res.now_ms = now
        if not accounts:
            first = self.store.redis.zrange(keys.due, 0, 0, withscores=True)
            res.next_due_ms = int(first[0][1]) if first else None
            return res

        def build(pipe: Any, account: str) -> None:
            self.store.dispatch(account, now_ms=now_ms, pipe=pipe)

        plan: list[Any] = []
        grace = self.store.settings.dispatch_grace_ms
        # one call per account, independent: on NOSCRIPT only the refused accounts run again
        replies = scripts.execute_each(self.store.redis, accounts, build)
        for account, raw in zip(accounts, replies, strict=True):
            d = self.store.parse_dispatch(raw)
            nxt = d.next_ms
            if d.waiting and not d.lanes:  # waiting for the budget, and nothing admitted: look later
                streak = self._idle_polls.get(account, 0) + 1
                self._idle_polls[account] = streak
                later = now + self.store.settings.admit_poll_ms * min(2 ** (streak - 1), IDLE_POLLS_MAX)
                nxt = later if d.next_followup_ms is None else min(later, d.next_followup_ms)
            else:
                self._idle_polls.pop(account, None)
            self._publish(account, d.lanes)
            res.published += len(d.lanes)
            if d.followups:
                sts = self.store.redis.hmget(self.store.acct(account).status, d.followups)
                items = [
                    (jid, normalize(json.loads(st))["lane"])
                    for jid, st in zip(d.followups, sts, strict=True)
                    if st
                ]
                n, lanes = self.store.promote(account, items, now_ms=now_ms)
                res.promoted += n
                self._publish(account, lanes)
                res.published += len(lanes)
                if len(d.followups) >= 1000:
                    nxt = now  # more may be due: look again at once
            if d.lanes or d.followups:  # what was published comes back after its grace if lost
                nxt = min(nxt, now + grace) if nxt is not None else now + grace
            plan += [account, now + DUE_LEASE_MS, -1 if nxt is None else nxt]
        first = scripts.run(self.store.redis, "reschedule", [keys.due], plan, now_ms)
        res.next_due_ms = None if int(float(first)) < 0 else int(float(first))
        return res

    def _publish(self, account: str, lanes: list[str]) -> None:
        if not lanes:
            return
        if self.publish_group is not None:
            self.publish_group(account, lanes)
            return
        for lane in lanes:
            self.publish(account, lane)

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_beat > 5:
            self._last_beat = now
            beat(self.store, self.name)
        if now - self._last_trim > 1:
            self._last_trim = now
            trim_due(self.store)
        if self.tokens is not None and now - self._last_reauth > 2:
            self._last_reauth = now
            check_reauth(self.store, self.tokens)

    def run(self, stop: threading.Event, tick_ms: int | None = None) -> None:
        """Loop until ``stop`` is set; Redis outages are logged and retried, never fatal."""
        max_sleep = (tick_ms or self.store.settings.scheduler_tick_ms) / 1000
        failing = False
        while not stop.is_set():
            try:
                res = self.tick()
                self.housekeeping()
                if failing:
                    log.warning("dispatcher reconnected to Redis")
                    failing = False
                sleep = max_sleep
                if res.next_due_ms is not None:
                    sleep = min(max_sleep, max(0.002, (res.next_due_ms - res.now_ms) / 1000))
            except Exception:  # Redis down, broker down: keep trying
                if not failing:
                    log.exception("dispatcher tick failed; retrying")
                failing = True
                sleep = 1.0
            stop.wait(sleep)


def trim_due(store: LaneStore, now_ms: int | None = None, limit: int = TRIM_ACCOUNTS) -> int:
    """Trim the accounts whose housekeeping is due (at most ``limit``); returns records removed."""
    got = scripts.run(store.redis, "claim", [store.keys.housekeep], [TRIM_LEASE_MS, limit], now_ms)
    now, accounts = int(got[0]), got[1:]
    removed = 0
    retention_ms = store.settings.retention_s * 1000
    for account in accounts:
        res = store.trim(account, now_ms=now_ms, batch=TRIM_BATCH)
        removed += res.removed
        if res.removed >= TRIM_BATCH:
            nxt = now  # more to forget: at the next pass
        else:
            nxt = min(res.next_ms if res.next_ms is not None else now + retention_ms, now + retention_ms)
        store.redis.zadd(store.keys.housekeep, {account: max(nxt, now)}, xx=True)
    return removed


def check_reauth(store: LaneStore, tokens: Tokens, now_ms: int | None = None) -> list[str]:
    """Resume the accounts held for a refused token for which this process has a different one.

    Returns the accounts resumed.
    """
    resumed = []
    for account in store.redis.zrange(store.keys.reauth, 0, 999):
        token = tokens(account)
        if store.redis.hget(store.acct(account).pause, "reason") != "token_invalid":
            store.redis.zrem(store.keys.reauth, account)  # lifted already (or replaced by another pause)
            continue
        if not token:
            continue
        lifted, woken = store.resume(account, mode="token", token=token, now_ms=now_ms)
        if lifted:
            store.redis.zrem(store.keys.reauth, account)
            resumed.append(account)
            log.warning("account %s resumed with a new token: %d waiting lane(s) woken", account, woken)
    return resumed


def beat(store: LaneStore, name: str) -> None:
    """Record that process ``name`` is alive (``/healthz`` looks for a beat younger than 30 s)."""
    sec, usec = store.redis.time()
    store.redis.zadd(store.keys.workers, {name: int(sec) * 1000 + int(usec) // 1000})


def start_heartbeat(
    store: LaneStore, name: str, every_s: float = 5.0, tokens: Tokens | None = None
) -> threading.Event:
    """Beat every ``every_s`` seconds in a daemon thread (workers that run no dispatcher); with
    ``tokens``, also resume accounts held for a refused token this process has a new token for."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                beat(store, name)
                if tokens is not None:
                    check_reauth(store, tokens)
            except Exception:  # Redis down: try again at the next beat
                log.debug("heartbeat failed", exc_info=True)
            stop.wait(every_s)

    threading.Thread(target=loop, name="dmworker-heartbeat", daemon=True).start()
    return stop


def start_thread(dispatcher: Dispatcher) -> tuple[threading.Thread, threading.Event]:
    """Run ``dispatcher`` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    t = threading.Thread(target=dispatcher.run, args=(stop,), name="dmworker-dispatcher", daemon=True)
    t.start()
    return t, stop
