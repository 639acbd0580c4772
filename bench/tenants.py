"""Many accounts on one cluster: tenant isolation, idle cost, memory per queued job, broadcast throughput.

    .venv/bin/python bench/tenants.py [--only isolation,idle,memory,throughput] [--backlogs 20000,100000]
        [--window-s 30] [--idle-accounts 1000,10000,100000] [--memory-jobs 1000000]

Each figure beside its baseline from the same run:

* **isolation** — account A (100/s) queues a backlog of one-message lanes; 2 s later account B
  (100/s) sends one message every 0.5 s for ``--window-s``; B's latency is enqueue (before the
  call) to arrival at the sandbox.  2 worker processes x 16 threads.  Baseline: the same run with
  admission off (``DMWORKER_ADMIT_WINDOW_S=0``).  A message of B not arrived 10 s after B's last
  enqueue counts as "> that wait"; the run then stops (A's backlog is not drained).
* **idle** — Redis CPU (``used_cpu_sys + used_cpu_user``) and commands/s over 20 s with 2 idle
  worker processes (default settings: embedded dispatchers) and N accounts that each sent a job
  long ago (``P:accounts``, a stats hash, a limiter record, a retention entry: the state once the
  job is trimmed, written with pipelines).  Measured after the once-per-deployment backfill of
  ``P:due`` has been visited.  Baseline: the same 2 workers with no account.
* **memory** — Redis ``used_memory`` growth per job while ``Outbox.send_many`` queues
  ``--memory-jobs`` text jobs over a tenth as many recipients (10 each) of one account, no worker
  running (lane messages are not published).  Baseline: one Celery message per job (the naive
  sender's ``naive.send`` with the same text) left in a queue no worker reads.
* **throughput** — sends/s of one worker process x 100 threads on a released backlog (bench/
  throughput.py's machinery): one message for each of 3,000 recipients, and 10 for each of 400,
  beside bench/naive.py's one Celery task per message.

Redis: ``DMWB_REDIS_URL`` (default redis://127.0.0.1:6379/14), own key prefixes, deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import common as c
import naive
import throughput
from workers import Group, prepare_sandbox

from dmworker.keys import Keys
from dmworker.outbox import Outbox
from dmworker.testing import max_in_window

B_ACCOUNT = str(17841400000001001)  # the second bench account (common.accounts)


def _admission_env(window_s: float) -> dict[str, str]:
    return {"DMWORKER_ADMIT_WINDOW_S": str(window_s)}


# ---------------------------------------------------------------------------------- isolation
def isolation(sandbox: Any, backlog: int, window_s: float, admit_window_s: float) -> dict[str, Any]:
    g = Group(
        "dmworker",
        2,
        16,
        sandbox,
        n_accounts=2,
        rate="100/s",
        extra_env=_admission_env(admit_window_s),
        admit_window_s=admit_window_s,
    ).start()
    try:
        ctl = sandbox.control
        a_rcpts = [str(500000000 + i) for i in range(backlog)]
        b_rcpts = [str(600000000 + i) for i in range(int(window_s * 2) + 1)]
        prepare_sandbox(sandbox, 0, [(c.ACCOUNT, r, "") for r in a_rcpts])
        ctl.open_windows(B_ACCOUNT, b_rcpts)
        ob = Outbox(settings=g.settings, client=g.r)
        t_enq = time.time()
        for start in range(0, backlog, 5000):
            ob.send_many(
                [{"kind": "text", "recipient": r, "text": "sale"} for r in a_rcpts[start : start + 5000]],
                priority="low",
            )
        enqueue_s = time.time() - t_enq
        t_b = time.time() + 2.0
        enq: dict[str, float] = {}
        for i, r in enumerate(b_rcpts[: int(window_s * 2)]):
            delay = t_b + i * 0.5 - time.time()
            if delay > 0:
                time.sleep(delay)
            enq[r] = time.time()
            ob.send_text(r, "hello", account=B_ACCOUNT)
        deadline = time.time() + 10.0
        c.wait_for(lambda: len(ctl.sends(B_ACCOUNT)) >= len(enq), max(0.0, deadline - time.time()), 0.1)
        got = {x["recipient"]: x["t_ms"] for x in ctl.sends(B_ACCOUNT)}
        # a message not arrived: at least (deadline - its enqueue); ranked after every arrived one
        waited = {r: (deadline - t) * 1000 for r, t in enq.items() if r not in got}
        lat = [(got[r] - t * 1000) if r in got else math.inf for r, t in enq.items()]
        a_times = [x["t_ms"] for x in ctl.sends(c.ACCOUNT)]
        in_win = [t for t in a_times if t_b * 1000 <= t < (t_b + window_s) * 1000]
        decided = [
            float(json.loads(v)["sending_since_ms"])
            for v in g.r.hvals(ob.store.acct(c.ACCOUNT).status)
            if '"sending_since_ms"' in v
        ]
        out = {
            "backlog": backlog,
            "admit_window_s": admit_window_s,
            "enqueue_s": enqueue_s,
            "n": len(lat),
            "missing": sum(1 for v in lat if v == math.inf),
            "p50": c.pct(lat, 0.5),
            "p99": c.pct(lat, 0.99),
            "wait_s": deadline - max(enq.values()),
            "missing_min_s": min(waited.values(), default=0.0) / 1000,
            "a_rate": len(in_win) / window_s,
            "a_max_1s": max_in_window(a_times, 1000.0) if a_times else 0,
            "a_max_1s_decided": max_in_window(decided, 1000.0) if decided else 0,
            "load": c.loadavg(),
        }
        c.say(
            f"  isolation backlog={backlog} admit_window={admit_window_s}: B p50 {_ms(out['p50'], out)} "
            f"p99 {_ms(out['p99'], out)} ({out['missing']}/{out['n']} not arrived); A {out['a_rate']:.0f}/s, "
            f"max {out['a_max_1s']} in 1 s received ({out['a_max_1s_decided']} decided); "
            f"enqueue {enqueue_s:.1f} s; load {out['load']}"
        )
        return out
    finally:
        g.stop()


def _ms(v: float, row: dict[str, Any]) -> str:
    """A latency, or for a message that had not arrived, the least it waited (and the p50, when
    that is more, since a percentile is at least the ones below it)."""
    if v != math.inf:
        return f"{v:,.0f} ms"
    arrived = row["p50"] if row["p50"] != math.inf else 0.0
    return f"> {max(row['missing_min_s'] * 1000, arrived) / 1000:.1f} s"


# ---------------------------------------------------------------------------------- idle cost
def _register(r: Any, keys: Keys, n: int, now_ms: int, retention_ms: int) -> None:
    """``n`` accounts in the state one sent, trimmed job leaves behind."""
    for start in range(0, n, 2000):
        with r.pipeline(transaction=False) as p:
            chunk = [f"1784160{i:010d}" for i in range(start, min(n, start + 2000))]
            p.sadd(keys.accounts, *chunk)
            for a in chunk:
                k = keys.account(a)
                p.hset(k.stats, mapping={"sent": 1, "e2e_count": 1})
                p.hset(k.limiter, "text:tat", (now_ms - 3_600_000) * 1000)
            p.zadd(keys.housekeep, dict.fromkeys(chunk, now_ms + retention_ms))
            p.execute()


def _redis_cpu(r: Any) -> tuple[float, int]:
    info = r.info()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"]), int(info["total_commands_processed"])


def idle(sandbox: Any, n_accounts: int, seconds: float = 20.0) -> dict[str, Any]:
    g = Group("dmworker", 2, 8, sandbox)
    keys = Keys(g.prefix)
    t0 = time.monotonic()
    sec, usec = g.r.time()
    _register(g.r, keys, n_accounts, int(sec) * 1000 + int(usec) // 1000, g.settings.retention_s * 1000)
    written_s = time.monotonic() - t0
    g.start()
    try:
        # the first dispatcher puts every known account in P:due once (backfill): let it be visited
        t1 = time.monotonic()
        c.wait_for(lambda: g.r.exists(f"{keys.due}:backfilled"), 30, 0.1)
        c.wait_for(lambda: g.r.zcard(keys.due) == 0, 120, 0.2)
        settle_s = time.monotonic() - t1
        time.sleep(2.0)
        cpu0, cmd0 = _redis_cpu(g.r)
        w0 = time.monotonic()
        time.sleep(seconds)
        cpu1, cmd1 = _redis_cpu(g.r)
        wall = time.monotonic() - w0
        out = {
            "accounts": n_accounts,
            "cpu_pct": (cpu1 - cpu0) / wall * 100,
            "cmds_s": (cmd1 - cmd0) / wall,
            "due_left": g.r.zcard(keys.due),
            "settle_s": settle_s,
            "written_s": written_s,
            "load": c.loadavg(),
        }
        c.say(
            f"  idle accounts={n_accounts}: Redis {out['cpu_pct']:.2f} % of a core, {out['cmds_s']:.0f} "
            f"commands/s (backfill visited in {settle_s:.1f} s, {out['due_left']} due left); "
            f"load {out['load']}"
        )
        return out
    finally:
        g.stop()


# ---------------------------------------------------------------------------------- memory
def _used_memory(r: Any) -> int:
    """``used_memory`` once Redis has finished freeing what earlier runs deleted (UNLINK frees in
    the background, which would otherwise count against what is measured now)."""
    c.wait_for(lambda: int(r.info("memory").get("lazyfree_pending_objects", 0)) == 0, 60, 0.1)
    time.sleep(0.5)
    return int(r.info("memory")["used_memory"])


def memory(sandbox: Any, n_jobs: int) -> dict[str, Any]:
    r = c.rdb()
    prefix = c.new_prefix("mem")
    s = c.make_settings(prefix, sandbox)
    per = 10
    n_rcpt = n_jobs // per
    text = "Our spring sale starts today: 20% off everything"
    try:
        ob = Outbox(settings=s, client=r, publish=lambda _a, _lane: None)
        ob.send_text("400000000", "first")  # scripts loaded, account registered
        before = _used_memory(r)
        t0 = time.monotonic()
        chunk = 10_000
        for n in range(per):
            for start in range(0, n_rcpt, chunk):
                ob.send_many(
                    [
                        {"kind": "text", "recipient": str(500000000 + i), "text": text}
                        for i in range(start, min(n_rcpt, start + chunk))
                    ],
                    priority="low",
                )
            c.say(f"  memory: {(n + 1) * n_rcpt:,} of {n_jobs:,} queued ({time.monotonic() - t0:.0f} s)")
        enq_s = time.monotonic() - t0
        after = _used_memory(r)
        dm = (after - before) / n_jobs
    finally:
        c.cleanup(r, prefix)
    # the baseline: one Celery message per job, the naive sender's
    nprefix = c.new_prefix("memn")
    app = c.producer_app(nprefix)
    n_naive = min(n_jobs, 100_000)
    try:
        before = _used_memory(r)
        c.publish_all(
            app,
            naive.TASK,
            ((str(500000000 + i % n_rcpt), text) for i in range(n_naive)),
            naive.queue_name(nprefix),
        )
        after = _used_memory(r)
        nv = (after - before) / n_naive
    finally:
        c.cleanup(r, nprefix)
    out = {
        "jobs": n_jobs,
        "recipients": n_rcpt,
        "dm_bytes": dm,
        "enqueue_s": enq_s,
        "naive_bytes": nv,
        "naive_jobs": n_naive,
        "load": c.loadavg(),
    }
    c.say(
        f"  memory: dmworker {dm:.0f} B/job ({n_jobs:,} jobs in {enq_s:.0f} s), Celery message "
        f"{nv:.0f} B/job ({n_naive:,}); load {out['load']}"
    )
    return out


# ---------------------------------------------------------------------------------- throughput
def broadcast_throughput(sandbox: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for system in ("naive", "dmworker"):
        g = Group(system, 1, throughput.CONCURRENCY, sandbox).start()
        try:
            res[f"{system}/single"] = throughput.measure(g, 0, False, single=True)
            res[f"{system}/ten"] = throughput.measure(g, 0, False)
        finally:
            g.stop()
    res["load"] = c.loadavg()
    return res


# ---------------------------------------------------------------------------------- report
def report(res: dict[str, Any]) -> str:
    out = []
    if "isolation" in res:
        rows = []
        for backlog in sorted({x["backlog"] for x in res["isolation"]}):
            on = next(x for x in res["isolation"] if x["backlog"] == backlog and x["admit_window_s"] > 0)
            off = next(x for x in res["isolation"] if x["backlog"] == backlog and x["admit_window_s"] == 0)
            rows.append(
                [
                    f"{backlog:,}",
                    _ms(on["p50"], on),
                    _ms(off["p50"], off),
                    _ms(on["p99"], on),
                    _ms(off["p99"], off),
                    f"{on['missing']} / {off['missing']} of {on['n']}",
                    f"{on['a_rate']:.0f} / {off['a_rate']:.0f}",
                    f"{on['a_max_1s']} ({on['a_max_1s_decided']}) / "
                    f"{off['a_max_1s']} ({off['a_max_1s_decided']})",
                    f"{on['load']} / {off['load']}",
                ]
            )
        out.append(
            c.table(
                [
                    "A's backlog (one-message lanes)",
                    "B p50 (admission)",
                    "B p50 (baseline: window 0)",
                    "B p99 (admission)",
                    "B p99 (baseline)",
                    "B not arrived (admission / baseline)",
                    "A sends/s during B's window",
                    "A max in any 1 s, received (decided)",
                    "load average after",
                ],
                rows,
            )
        )
    if "idle" in res:
        base = next(x for x in res["idle"] if x["accounts"] == 0)
        rows = [
            [
                f"{x['accounts']:,}",
                f"{x['cpu_pct']:.2f} %",
                f"{base['cpu_pct']:.2f} %",
                f"{x['cmds_s']:.0f}",
                f"{base['cmds_s']:.0f}",
                f"{x['settle_s']:.1f} s",
                x["load"],
            ]
            for x in res["idle"]
            if x["accounts"]
        ]
        out.append(
            c.table(
                [
                    "registered accounts",
                    "Redis CPU (% of a core)",
                    "baseline: no account",
                    "Redis commands/s",
                    "baseline commands/s",
                    "backfill visited in",
                    "load average after",
                ],
                rows,
            )
        )
    if "memory" in res:
        m = res["memory"]
        out.append(
            c.table(
                [
                    "queued",
                    "dmworker bytes/job",
                    "baseline: Celery message/job",
                    "ratio",
                    "enqueue time",
                    "load average after",
                ],
                [
                    [
                        f"{m['jobs']:,} jobs over {m['recipients']:,} recipients",
                        f"{m['dm_bytes']:.0f}",
                        f"{m['naive_bytes']:.0f} ({m['naive_jobs']:,} messages)",
                        c.ratio(m["dm_bytes"], m["naive_bytes"]),
                        f"{m['enqueue_s']:.0f} s ({m['jobs'] / m['enqueue_s']:,.0f} jobs/s)",
                        m["load"],
                    ]
                ],
            )
        )
    if "throughput" in res:
        t = res["throughput"]
        rows = []
        for what, label in (("single", "3,000 x 1"), ("ten", "400 x 10")):
            d, n = t[f"dmworker/{what}"], t[f"naive/{what}"]
            rows.append(
                [
                    label,
                    c.f0(d.rate),
                    c.f0(n.rate),
                    c.ratio(d.rate, n.rate),
                    f"{d.accounting['reordered']} / {n.accounting['reordered']}",
                    f"{d.util('other'):.2f} / {n.util('other'):.2f}",
                ]
            )
        out.append(
            c.table(
                [
                    "recipients x jobs",
                    "dmworker sends/s",
                    "baseline sends/s",
                    "ratio",
                    "reordered (dmworker / baseline)",
                    "others' cores during the run",
                ],
                rows,
            )
            + f"\n\nload average after: {t['load']}"
        )
    return "\n\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="isolation,idle,memory,throughput")
    p.add_argument("--backlogs", default="20000,100000")
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--idle-accounts", default="1000,10000,100000")
    p.add_argument("--memory-jobs", type=int, default=1_000_000)
    args = p.parse_args()
    only = set(args.only.split(","))
    c.say(f"tenants bench ({args.only}), load average {c.loadavg()}")
    sandbox = c.start_sandbox(n_accounts=2)
    res: dict[str, Any] = {}
    try:
        if "isolation" in only:
            res["isolation"] = [
                isolation(sandbox, int(b), args.window_s, w)
                for b in args.backlogs.split(",")
                for w in (1.0, 0.0)
            ]
        if "idle" in only:
            res["idle"] = [idle(sandbox, n) for n in [0, *map(int, args.idle_accounts.split(","))]]
        if "memory" in only:
            res["memory"] = memory(sandbox, args.memory_jobs)
        if "throughput" in only:
            res["throughput"] = broadcast_throughput(sandbox)
    finally:
        sandbox.stop()
    print("\n" + report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
