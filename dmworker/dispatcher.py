"""The dispatcher: promotes due follow-ups and wakes lanes whose wait is over.

Runs as ``dmworker scheduler`` and, by default, as a thread inside every worker process.  Any
number may run: ``promote`` and ``dispatch`` are atomic scripts, so each follow-up is promoted
exactly once and each due lane is published once per ``dispatch_grace_ms``.  A lane whose Celery
message was lost (producer died after writing Redis, worker killed with prefetched messages) is
published again when its grace passes — Celery messages are hints, Redis is the truth.
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

log = logging.getLogger("dmworker.dispatcher")

Publish = Callable[[str, str], Any]


@dataclass
class TickResult:
    promoted: int = 0
    published: int = 0
    next_due_ms: int | None = None
    now_ms: int = 0


class Dispatcher:
    """One dispatcher loop over every account that has jobs."""

    def __init__(self, store: LaneStore, publish: Publish, name: str | None = None) -> None:
        self.store = store
        self.publish = publish
        self.name = name or f"{socket.gethostname()}:{id(self):x}"
        self._accounts: list[str] = []
        self._accounts_at = 0.0
        self._last_trim = 0.0
        self._last_beat = 0.0

    def accounts(self) -> list[str]:
        if time.monotonic() - self._accounts_at > 1.0:
            self._accounts = sorted(self.store.redis.smembers(self.store.keys.accounts))
            self._accounts_at = time.monotonic()
        return self._accounts

    def tick(self, now_ms: int | None = None) -> TickResult:
        """One pass over every account: one pipelined round trip, then promotions where due."""
        res = TickResult()
        accounts = self.accounts()
        if not accounts:
            return res

        def build(pipe: Any) -> None:
            for account in accounts:
                self.store.dispatch(account, now_ms=now_ms, pipe=pipe)

        for account, raw in zip(accounts, scripts.execute_pipeline(self.store.redis, build), strict=True):
            d = self.store.parse_dispatch(raw)
            res.now_ms = d.now_ms
            if d.next_ms is not None and (res.next_due_ms is None or d.next_ms < res.next_due_ms):
                res.next_due_ms = d.next_ms
            for rec in d.lanes:
                self.publish(account, rec)
                res.published += 1
            if d.followups:
                sts = self.store.redis.hmget(self.store.acct(account).status, d.followups)
                items = [(jid, json.loads(st)["r"]) for jid, st in zip(d.followups, sts, strict=True) if st]
                n, lanes = self.store.promote(account, items, now_ms=now_ms)
                res.promoted += n
                for rec in lanes:
                    self.publish(account, rec)
                    res.published += 1
                if len(d.followups) >= 1000:
                    res.next_due_ms = d.now_ms  # more may be due: look again at once
        return res

    def housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_beat > 5:
            self._last_beat = now
            beat(self.store, self.name)
        if now - self._last_trim > 60:
            self._last_trim = now
            for account in self.accounts():
                self.store.trim(account)

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


def beat(store: LaneStore, name: str) -> None:
    """Record that process ``name`` is alive (``/healthz`` looks for a beat younger than 30 s)."""
    sec, usec = store.redis.time()
    store.redis.zadd(store.keys.workers, {name: int(sec) * 1000 + int(usec) // 1000})


def start_heartbeat(store: LaneStore, name: str, every_s: float = 5.0) -> threading.Event:
    """Beat every ``every_s`` seconds in a daemon thread (workers that run no dispatcher)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                beat(store, name)
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
