"""Housekeeping and event reading with many accounts: their cost grows with the accounts that have
something due, not with every account.

    .venv/bin/python bench/housekeep.py [--accounts 10000]

Given ``--accounts`` accounts that each hold one ended job (so each is scheduled in ``P:housekeep``),
it measures one housekeeping pass (``dispatcher.trim_due``) and one event poll
(``events.EventConsumer.poll``) in three situations — nothing due / all due once their retention
passed / only 10 accounts active — counting the Redis commands each costs (``INFO commandstats``)
and its wall time.  Redis: ``DMWB_REDIS_URL`` (default DB 14), own key prefix, deleted afterwards.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import common as c

from dmworker import scripts
from dmworker.dispatcher import trim_due
from dmworker.events import EventConsumer
from dmworker.lanes import LaneStore


def _commands(r: Any) -> int:
    return sum(int(v["calls"]) for k, v in r.info("commandstats").items() if k.startswith("cmdstat_"))


def _measure(r: Any, fn: Any) -> tuple[int, float]:
    before, t0 = _commands(r), time.perf_counter()
    fn()
    return _commands(r) - before - 1, (time.perf_counter() - t0) * 1000  # -1: the INFO itself


def run(n_accounts: int) -> list[tuple[str, int, float]]:
    r = c.rdb()
    prefix = c.new_prefix("hk")
    sandbox = c.start_sandbox(n_accounts=1)
    s = c.make_settings(prefix, sandbox, retention_s=60)
    store = LaneStore(s, r)
    accounts = [f"1784150{i:010d}" for i in range(n_accounts)]
    out: list[tuple[str, int, float]] = []
    try:
        c.say(f"housekeep: {n_accounts} accounts with one cancelled job each")
        now = store._redis_now_ms()
        for start in range(0, n_accounts, 500):

            def build(pipe: Any, chunk: list[str] = accounts[start : start + 500]) -> None:
                for a in chunk:
                    store.enqueue(
                        a, "5550001", [(f"{a}.j0", '{"kind":"text"}', "text")], now_ms=now, pipe=pipe
                    )
                    pipe.zadd(store.keys.housekeep, {a: now + 60_000})

            scripts.execute_pipeline(r, build)
        for a in accounts:
            store.cancel(a, job_id=f"{a}.j0", now_ms=now)
        out.append(
            ("housekeeping pass, nothing due", *_measure(r, lambda: trim_due(store, now_ms=now + 1000)))
        )
        due = now + 61_000
        passes = 0

        def drain() -> None:
            nonlocal passes
            while r.zcount(store.keys.housekeep, "-inf", due) > 0 and passes < 1000:
                trim_due(store, now_ms=due)
                passes += 1

        cmds, ms = _measure(r, drain)
        out.append((f"housekeeping, all {n_accounts} due ({passes} passes)", cmds, ms))
        out.append(
            ("housekeeping pass after that, nothing due", *_measure(r, lambda: trim_due(store, now_ms=due)))
        )
        consumer = EventConsumer("bench", "c1", store=store)
        consumer.poll()  # the group is created on every active account's stream
        r.delete(store.keys.events_active)
        for a in accounts[:10]:
            store.enqueue(a, "5550002", [(f"{a}.j1", '{"kind":"text"}', "text")], now_ms=due)
            store.cancel(a, job_id=f"{a}.j1", now_ms=due)
        got: list[Any] = []
        out.append(("event poll, 10 accounts active", *_measure(r, lambda: got.extend(consumer.poll()))))
        assert len(got) == 10, len(got)
        out.append(("event poll, nothing new", *_measure(r, lambda: consumer.poll())))
    finally:
        sandbox.stop()
        c.cleanup(r, prefix)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--accounts", type=int, default=10_000)
    args = p.parse_args()
    rows = run(args.accounts)
    print(f"\n`.venv/bin/python bench/housekeep.py --accounts {args.accounts}`\n")
    print("| operation | Redis commands | wall ms |")
    print("|---|---|---|")
    for name, cmds, ms in rows:
        print(f"| {name} | {cmds} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
