"""Simulated time for the whole lifecycle: days in seconds, with the real scripts, a real Redis and
the Graph API sandbox over real HTTP.

Every script takes an injected clock; :class:`Sim` owns one and drives what the processes would do
at each moment: the dispatcher's pass (claim due lanes, promote due follow-ups), the lane visits a
worker makes for each published lane, and the housekeeping pass (retention).  :meth:`Sim.advance`
jumps from one due moment to the next, so 30 simulated days with a few hundred jobs take seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from dmworker.dispatcher import Dispatcher, check_reauth, trim_due
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import Settings
from dmworker.worker import LaneWorker

DAY_MS = 86_400_000


class Sim:
    """One account's deployment under a simulated clock (``now`` in epoch ms)."""

    def __init__(self, settings: Settings, rdb: redis.Redis, t0_ms: int) -> None:
        self.now = t0_ms
        self.settings = settings
        self.rdb = rdb
        self.store = LaneStore(settings, rdb)
        self._published: list[tuple[str, str]] = []
        self.outbox = Outbox(settings=settings, client=rdb, publish=self._publish, clock=self.clock)
        self.worker = LaneWorker(settings, self.store, clock=self.clock)
        self.dispatcher = Dispatcher(self.store, self._publish)
        #: (sim ms, job id) of every job a worker was handed: what went on the wire, and when
        self.handed_out: list[tuple[int, str]] = []
        self._wrap_step()

    def clock(self) -> int:
        return self.now

    def _publish(self, account: str, lane: str) -> None:
        self._published.append((account, lane))

    def _wrap_step(self) -> None:
        step = self.store.step

        def recording(*args: Any, **kw: Any) -> Any:
            got = step(*args, **kw)
            if got.action == "job":
                self.handed_out.append((self.now, got.job_id))
            return got

        self.store.step = recording  # type: ignore[method-assign]

    def use_settings(self, settings: Settings) -> None:
        """Workers restarted with new settings (a new token, say)."""
        self.worker.clients.close()
        self.settings = settings
        self.worker = LaneWorker(settings, self.store, clock=self.clock)
        self.worker.store = self.store

    # ------------------------------------------------------------------ running
    def run_due(self) -> None:
        """Everything the processes would do at ``now``, until nothing more is due at ``now``."""
        for _ in range(10_000):
            self.dispatcher.tick(now_ms=self.now)
            trim_due(self.store, now_ms=self.now)
            check_reauth(self.store, self.worker.clients.token, now_ms=self.now)
            if not self._published:
                return
            lanes, self._published = list(dict.fromkeys(self._published)), []
            for account, lane in lanes:
                self.worker.run_lane(account, lane, self._publish)
        raise AssertionError("the simulation does not settle")

    def next_due(self) -> int | None:
        """The earliest moment anything is due: a lane wake-up, a follow-up, a housekeeping pass."""
        out = []
        for account in self.rdb.smembers(self.store.keys.accounts):
            k = self.store.acct(account)
            for key in (*k.ready_sets, k.sched):
                first = self.rdb.zrange(key, 0, 0, withscores=True)
                if first:
                    out.append(int(first[0][1]))
        first = self.rdb.zrange(self.store.keys.housekeep, 0, 0, withscores=True)
        if first:
            out.append(int(first[0][1]))
        return min(out) if out else None

    def advance(self, ms: int) -> None:
        """Move the clock ``ms`` ahead, doing everything that falls due on the way, in order."""
        end = self.now + ms
        self.run_due()
        while True:
            nxt = self.next_due()
            if nxt is None or nxt > end:
                break
            self.now = max(nxt, self.now + 1)
            self.run_due()
        self.now = end
        self.run_due()

    def close(self) -> None:
        self.worker.clients.close()


def prefix_memory(rdb: redis.Redis, prefix: str) -> tuple[int, int]:
    """(keys, bytes by MEMORY USAGE) under ``prefix``."""
    keys = list(_scan(rdb, f"{prefix}:*"))
    total = 0
    for key in keys:
        total += int(rdb.memory_usage(key, samples=0) or 0)
    return len(keys), total


def _scan(rdb: redis.Redis, pattern: str) -> Iterator[str]:
    yield from rdb.scan_iter(match=pattern, count=1000)
