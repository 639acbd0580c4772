"""Redis memory over time under steady traffic: with a short retention it reaches a plateau; the
baseline is the same traffic with the default retention (7 days: nothing is forgotten in the run).

    .venv/bin/python bench/retention.py [--seconds 60] [--rate 300] [--retention 10]

Traffic, per second: ``rate`` jobs to 10,000 recipients with open windows, of which 10 % are
follow-ups scheduled an hour ahead and cancelled a second later, and 2 % go to recipients Meta
refuses (dead letters, kept for the same short retention).  One process drives it all in real time
through the real scripts: the enqueue path, the dispatcher's pass, lane visits sending to the Graph
API sandbox over HTTP, and the housekeeping pass.  Memory is the sum of ``MEMORY USAGE`` of the
run's keys, sampled every 5 s.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from typing import Any

import common as c

from dmworker.dispatcher import Dispatcher, trim_due
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.worker import LaneWorker


def _memory(r: Any, prefix: str) -> int:
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in r.scan_iter(match=f"{prefix}:*", count=1000))


def drive(sandbox: Any, seconds: float, rate: int, retention_s: int | None) -> dict[str, Any]:
    """Run the traffic for ``seconds``; ``retention_s`` None = the defaults (7 days, 30 days)."""
    r = c.rdb()
    prefix = c.new_prefix("ret")
    over: dict[str, Any] = {"window_policy": "trust"}
    if retention_s is not None:
        over.update(retention_s=retention_s, dlq_retention_s=retention_s)
    s = c.make_settings(prefix, sandbox, **over)
    store = LaneStore(s, r)
    published: list[tuple[str, str]] = []
    ob = Outbox(settings=s, client=r, publish=lambda a, lane: published.append((a, lane)))
    worker = LaneWorker(s, store)
    disp = Dispatcher(store, lambda a, lane: published.append((a, lane)))
    rng = random.Random(7)
    users = [str(9_000_000 + i) for i in range(10_000)]
    sandbox.control.open_windows(c.ACCOUNT, users)
    samples: list[tuple[float, int]] = []
    to_cancel: list[tuple[float, str]] = []
    sent = 0
    t0 = time.monotonic()
    next_sample = 0.0
    try:
        while (now := time.monotonic() - t0) < seconds:
            batch = []
            for _ in range(rate // 10):
                roll = rng.random()
                if roll < 0.10:
                    batch.append(
                        {"kind": "text", "recipient": rng.choice(users), "text": "later", "delay": 3600}
                    )
                elif roll < 0.12:
                    batch.append({"kind": "text", "recipient": str(rng.randrange(10**8, 10**9)), "text": "x"})
                else:
                    batch.append({"kind": "text", "recipient": rng.choice(users), "text": "hello"})
            for item, job in zip(batch, ob.send_many(batch), strict=True):
                if "delay" in item:
                    to_cancel.append((now + 1.0, job.id))
            while to_cancel and to_cancel[0][0] <= now:
                ob.cancel(to_cancel.pop(0)[1])
            disp.tick()
            trim_due(store)
            lanes, published[:] = list(dict.fromkeys(published)), []
            for a, lane in lanes:
                sent += worker.run_lane(a, lane).sent
            if now >= next_sample:
                samples.append((round(now), _memory(r, prefix)))
                next_sample += 5.0
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t0 - now)))
        samples.append((round(time.monotonic() - t0), _memory(r, prefix)))
    finally:
        worker.clients.close()
        c.cleanup(r, prefix)
    return {"samples": samples, "sent": sent, "seconds": time.monotonic() - t0}


def markdown(short: dict[str, Any], base: dict[str, Any], retention_s: int, rate: int, command: str) -> str:
    rows = [
        "| t (s) | memory, retention 7 days (baseline) | memory, retention " + f"{retention_s} s |",
        "|---|---|---|",
    ]
    for (t, mb), (_, ms) in zip(base["samples"], short["samples"], strict=False):
        rows.append(f"| {t} | {mb / 1e6:.2f} MB | {ms / 1e6:.2f} MB |")
    half = len(short["samples"]) // 2
    late = [m for _, m in short["samples"][half:]]
    return "\n".join(
        [
            "## Redis memory under steady traffic (retention)",
            "",
            f"`{command}` — {rate} jobs/s offered (10 % follow-ups cancelled after 1 s, 2 % dead letters), "
            f"sent {short['sent'] / short['seconds']:.0f}/s with the short retention and "
            f"{base['sent'] / base['seconds']:.0f}/s in the baseline, same process, same run.",
            "",
            *rows,
            "",
            f"Second half of the short-retention run: {min(late) / 1e6:.2f} to {max(late) / 1e6:.2f} MB "
            f"(a plateau); the baseline grows to {base['samples'][-1][1] / 1e6:.2f} MB and keeps growing.",
            "",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rate", type=int, default=300, help="jobs offered per second")
    p.add_argument("--retention", type=int, default=10, help="retention of the measured run (s)")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the refused sends would log a line each
    command = (
        f".venv/bin/python bench/retention.py --seconds {args.seconds:g} --rate {args.rate} "
        f"--retention {args.retention}"
    )
    sandbox = c.start_sandbox(n_accounts=1)
    try:
        c.say("retention: baseline (7 days)")
        base = drive(sandbox, args.seconds, args.rate, None)
        c.say(f"retention: {args.retention} s")
        short = drive(sandbox, args.seconds, args.rate, args.retention)
    finally:
        sandbox.stop()
    print(markdown(short, base, args.retention, args.rate, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
