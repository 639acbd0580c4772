"""Run every dmworker benchmark and write docs/benchmarks.md.

    /work/venv/bin/python bench/run.py [--quick] [--out docs/benchmarks.md]

Each figure is measured beside its baseline in the same run (see the modules: throughput.py,
enqueue.py, limiter.py, scheduler.py, hotpath.py, naive.py for the baseline). Redis: DMWB_REDIS_URL
(default redis://127.0.0.1:6379/14), own key prefixes ``dmwb...``, deleted afterwards. The full run
takes about 10 minutes on 2 cores, ``--quick`` under 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from typing import Any

import common as c
import enqueue
import hotpath
import limiter
import report
import scheduler
import throughput
from workers import Group


def measure_all(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": c.loadavg()}
    sandbox = c.start_sandbox(n_accounts=21)
    c.say(f"sandbox pid {sandbox.pid} at {sandbox.url}")
    try:
        c.say("== 5. limiter decision cost")
        out["cost"] = limiter.decision_cost(sandbox, quick)
        c.say("== 3. enqueue")
        out["enqueue"] = enqueue.run(sandbox, quick)
        c.say("== 6. scheduler")
        out["scheduler"] = scheduler.run(sandbox, quick)
        c.say("== 1, 2, 4, 7, 8: throughput, CPU/send, end-to-end latency, scaling, hot path")
        res: dict[str, Any] = {}
        e2e: dict[str, Any] = {}
        counts: dict[str, Any] = {}
        for procs, lats in throughput.PLAN.items():
            for system in ("naive", "dmworker"):
                g = Group(system, procs, throughput.CONCURRENCY, sandbox).start()
                try:
                    for lat in lats:
                        res[throughput.key(system, procs, lat)] = throughput.measure(g, lat, quick)
                    if procs == 1:
                        res[throughput.key(system, 1, 0, True)] = throughput.measure(g, 0, quick, single=True)
                    if system == "dmworker" and procs == 1:
                        _paced(g, res, e2e, counts, quick)
                        out["profile"] = hotpath.profile(g, quick)
                        out["micro"] = hotpath.micro(sandbox, g.settings, quick)
                finally:
                    g.stop()
            if procs == 1:  # the baseline's paced run needs both saturations: start it again
                g = Group("naive", 1, throughput.CONCURRENCY, sandbox).start()
                try:
                    _paced(g, res, e2e, counts, quick)
                finally:
                    g.stop()
        out.update(runs=res, e2e=e2e, counts=counts)
        c.say("== 5. limiter saturation")
        out["saturation"] = limiter.saturation(sandbox, quick)
    finally:
        sandbox.stop()
    out["load_after"] = c.loadavg()
    return out


def _paced(g: Group, res: dict[str, Any], e2e: dict[str, Any], counts: dict[str, Any], quick: bool) -> None:
    """End-to-end latency at half the lower single-job saturation of the two systems, then the
    Redis command count."""
    rate = 0.5 * min(res[throughput.key(s, 1, 0, True)].rate for s in ("dmworker", "naive"))
    e2e[g.system] = throughput.e2e(g, rate, 2 if quick else 10)
    counts[g.system] = hotpath.count_commands(g, quick)


def main() -> int:
    p = argparse.ArgumentParser(description="Run the dmworker benchmarks and write docs/benchmarks.md.")
    p.add_argument("--quick", action="store_true", help="smaller counts (under 2 minutes)")
    p.add_argument("--out", default=os.path.join(c.ROOT, "docs", "benchmarks.md"))
    args = p.parse_args()
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    command = "python bench/run.py" + (" --quick" if args.quick else "")
    if args.out != p.get_default("out"):
        command += f" --out {args.out}"
    c.say(f"dmworker benchmarks ({'quick' if args.quick else 'full'}), load average {c.loadavg()}")
    results = measure_all(args.quick)
    results.update(
        machine=c.machine(), started=started, seconds=time.monotonic() - t0, command=command, quick=args.quick
    )
    text = report.render(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    c.say(f"wrote {args.out} ({results['seconds']:.0f} s)")
    print(report.summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
