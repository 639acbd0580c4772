"""Figure 5: the limiter. Decision cost (round trip and Redis CPU per call, one connection, one
thread) beside a plain SET and a trivial EVALSHA; and saturation efficiency with real workers:
one account limited to 50/s, then 20 accounts limited to 20/s each, each with a backlog.
"""

from __future__ import annotations

import json
import time
from typing import Any

import common as c
from workers import Group, backlog, timed_run

from dmworker.keys import Keys
from dmworker.lanes import LaneStore
from dmworker.testing import max_in_window

BURST = 5  # the default DMWORKER_RATE_BURST


def decision_cost(sandbox: Any, quick: bool) -> dict[str, dict[str, float]]:
    n = 5_000 if quick else 20_000
    prefix = c.new_prefix("l")
    r = c.rdb()
    store = LaneStore(c.make_settings(prefix, sandbox), r)
    trivial = r.register_script("return 1")
    rpid = c.redis_pid(r)
    calls = {
        "plain SET": lambda: r.set(f"{prefix}:k", "1"),
        "plain EVALSHA of `return 1`": lambda: trivial(),
        "limit.lua (LaneStore.limit)": lambda: store.limit(c.ACCOUNT, "text"),
        "step.lua on an empty lane (LaneStore.step)": lambda: store.step(
            c.ACCOUNT, "empty", "h", acquire=True
        ),
    }
    walls: dict[str, list[float]] = {k: [] for k in calls}
    cpus: dict[str, float] = dict.fromkeys(calls, 0.0)
    out = {}
    try:
        for fn in calls.values():
            for _ in range(200):
                fn()
        rounds = 10
        for _ in range(rounds):  # interleaved rounds: background load hits every call alike
            for name, fn in calls.items():
                cpu0, t = c.cpu_s(rpid), time.perf_counter()
                for _ in range(n // rounds):
                    fn()
                walls[name].append((time.perf_counter() - t) / (n // rounds) * 1e6)
                cpus[name] += c.cpu_s(rpid) - cpu0
        for name in calls:
            out[name] = {"us": c.pct(walls[name], 0.5), "redis_us": cpus[name] / n * 1e6}
            c.say(f"  {name}: {out[name]['us']:.1f} us/call (Redis CPU {out[name]['redis_us']:.1f} us)")
    finally:
        c.cleanup(r, prefix)
    return out


def _achieved(times_ms: list[float], t0: float) -> float:
    """Sends beyond the initial burst, per second after the release (steady-state rate)."""
    return (len(times_ms) - BURST) / (max(times_ms) / 1000 - t0)


def _decisions(g: Group, account: str) -> list[float]:
    """Handout times (Redis clock, ms) of the sent jobs of ``account``: when the limiter said yes."""
    out = []
    for raw in g.r.hvals(Keys(g.prefix).account(account).status):
        st = json.loads(raw)
        if st.get("state") == "sent" and "sending_since_ms" in st:
            out.append(float(st["sending_since_ms"]))
    return out


def saturation(sandbox: Any, quick: bool, procs: int = 4, threads: int = 8) -> dict[str, Any]:
    seconds = 4 if quick else 15
    accounts = list(c.accounts(21).values())
    one, many = accounts[0], accounts[1:]
    g = Group(
        "dmworker", procs, threads, sandbox, n_accounts=21, rate="20/s", account_rates={one: "50/s"}
    ).start()
    out: dict[str, Any] = {"procs": procs, "threads": threads, "seconds": seconds}
    try:
        per = max(2, round((50 * seconds + BURST) / 100))
        run = timed_run(g, backlog(100, per, "sat1", [one]), 0)
        times = [x["t_ms"] for x in run.records]
        out["one"] = {
            "limit": 50.0,
            "n": run.sends,
            "achieved": _achieved(times, run.t0),
            "max_1s": max_in_window(times),
            "elapsed": run.elapsed_s,
            "max_1s_redis": max_in_window(_decisions(g, one)),
        }
        keys = Keys(g.prefix)
        out["one"]["waits"] = int(g.r.hget(keys.account(one).stats, "limiter_waits") or 0)
        c.say(
            f"  1 account at 50/s: {out['one']['achieved']:.2f}/s over {run.elapsed_s:.1f} s, "
            f"max {out['one']['max_1s']} in any 1 s"
        )
        per = max(2, round((20 * seconds + BURST) / 20))
        run = timed_run(g, backlog(20, per, "sat20", many), 0, warm=False)
        by: dict[str, list[float]] = {}
        for x in run.records:
            by.setdefault(x["account"], []).append(x["t_ms"])
        ach = [_achieved(v, run.t0) for v in by.values()]
        out["many"] = {
            "limit": 20.0,
            "n": run.sends,
            "accounts": len(by),
            "mean": sum(ach) / len(ach),
            "min": min(ach),
            "max": max(ach),
            "max_1s": max(max_in_window(v) for v in by.values()),
            "total": run.sends / run.elapsed_s,
            "elapsed": run.elapsed_s,
            "max_1s_redis": max(max_in_window(_decisions(g, a)) for a in many),
        }
        c.say(
            f"  20 accounts at 20/s: mean {out['many']['mean']:.2f}/s, min {out['many']['min']:.2f}/s "
            f"per account, total {out['many']['total']:.0f}/s"
        )
        out["many"]["waits"] = sum(int(g.r.hget(keys.account(a).stats, "limiter_waits") or 0) for a in many)
    finally:
        g.stop()
    return out


def section(cost: dict[str, dict[str, float]], sat: dict[str, Any]) -> str:
    base = cost["plain SET"]["us"]
    rows = [
        [name, f"{v['us']:.1f}", f"{v['redis_us']:.1f}", c.ratio(v["us"], base)] for name, v in cost.items()
    ]
    t1 = c.table(
        [
            "call (one connection, one thread)",
            "us per call (round trip, median of 10 rounds)",
            "Redis CPU us per call",
            "vs plain SET",
        ],
        rows,
    )
    one, many = sat["one"], sat["many"]
    rows2 = [
        [
            "1 account, 50/s",
            f"{one['n']:,}",
            "50.0",
            f"{one['achieved']:.2f}",
            f"{one['achieved'] / one['limit']:.1%}",
            f"{one['max_1s_redis']} / {one['max_1s']} (bound {50 + BURST})",
        ],
        [
            f"{many['accounts']} accounts, 20/s each",
            f"{many['n']:,}",
            "20.0 each",
            f"{many['mean']:.2f} mean, {many['min']:.2f} min",
            f"{many['mean'] / many['limit']:.1%} mean, {many['min'] / many['limit']:.1%} min",
            f"{many['max_1s_redis']} / {many['max_1s']} (bound {20 + BURST})",
        ],
    ]
    rows2[0].append(f"{one['waits'] / one['n']:.2f}")
    rows2[1].append(f"{many['waits'] / many['n']:.2f}")
    t2 = c.table(
        [
            "scenario",
            "sends",
            "limit (baseline) /s",
            "achieved /s",
            "efficiency",
            "most sends in any 1 s window: limiter decisions (Redis clock) / sandbox receipts",
            "limiter waits per send",
        ],
        rows2,
    )
    return t1 + "\n\n" + t2
