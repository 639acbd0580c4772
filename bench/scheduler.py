"""Figure 6: follow-ups. Redis memory per scheduled follow-up (``INFO memory`` used_memory before
and after scheduling N through pipelined ``Outbox.send_many(delay=...)``) beside the memory of a
Celery countdown message on the same broker, promotions per second (``Dispatcher.tick`` with an
injected clock, ``publish`` a no-op) beside a plain Redis move (ZPOPMIN + one RPUSH per item), and
the follow-up lag (sandbox receive time - due time) of N follow-ups due over S seconds, delivered by
one dmworker worker process (its embedded dispatcher), beside the same sends as Celery countdown
tasks of the baseline (``bench/naive.py``) on one worker process; the load average during each run
is reported with it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from datetime import datetime, timezone
from typing import Any

import common as c
import naive
from workers import Group

from dmworker.dispatcher import Dispatcher
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox

RECIPIENTS = 10_000
CHUNK = 10_000


def _schedule(args: tuple[Any, int, int]) -> int:
    settings, start, stop = args
    ob = Outbox(settings=settings, client=c.rdb(), publish=lambda a, r: None)
    for lo in range(start, stop, CHUNK):
        ob.send_many(
            [
                {
                    "kind": "text",
                    "recipient": str(700000000 + i % RECIPIENTS),
                    "text": f"Still there? Reply to keep the conversation going ({i})",
                    "delay": 3600 + i % 600,
                }
                for i in range(lo, min(stop, lo + CHUNK))
            ]
        )
    return stop - start


def _used(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


LAG_RECIPIENTS = 1_000


def lag(sandbox: Any, quick: bool) -> dict[str, Any]:
    """Follow-up lag: ``n`` follow-ups due evenly over ``span_s`` seconds (starting ``lead_s`` ahead), for
    dmworker and for the baseline (Celery ``countdown``), one worker process x 16 threads each."""
    n, span_s, lead_s = (2_000, 10.0, 5.0) if quick else (10_000, 30.0, 20.0)
    out: dict[str, Any] = {"lag_n": n, "lag_span_s": span_s}
    for system in ("dmworker", "naive"):
        g = Group(system, 1, 16, sandbox).start()
        try:
            out[f"lag_{system}"] = _lag_run(g, n, span_s, lead_s)
        finally:
            g.stop()
    return out


def _lag_run(g: Group, n: int, span_s: float, lead_s: float) -> dict[str, Any]:
    recipients = [str(710000000 + i) for i in range(LAG_RECIPIENTS)]
    ctl = g.sandbox.control
    ctl.reset()
    ctl.open_windows(c.ACCOUNT, recipients)
    start = time.time() + lead_s
    due = {f"lag#{i}": start + span_s * i / n for i in range(n)}
    with g.app.producer_or_acquire() as producer:
        if g.system == "dmworker":
            ob = Outbox(
                settings=g.settings,
                client=g.r,
                publish=lambda a, r: g.app.send_task(
                    "dmworker.process_lane", (a, r), queue=g.queue, producer=producer
                ),
            )
            items = [
                {
                    "kind": "text",
                    "recipient": recipients[i % LAG_RECIPIENTS],
                    "text": t,
                    "delay": d - time.time(),
                }
                for i, (t, d) in enumerate(due.items())
            ]
            jobs = ob.send_many(items)
        else:
            for i, (t, d) in enumerate(due.items()):
                g.app.send_task(
                    naive.TASK,
                    (recipients[i % LAG_RECIPIENTS], t),
                    queue=g.queue,
                    producer=producer,
                    eta=datetime.fromtimestamp(d, tz=timezone.utc),
                )
    if time.time() > start:
        raise RuntimeError(f"{g.system}: scheduling took longer than the {lead_s:g} s lead")
    load0 = c.loadavg()
    if not c.wait_for(lambda: c.sends_count(g.sandbox) >= n, span_s + 120, 0.25):
        raise RuntimeError(f"{g.system}: follow-ups missing ({c.sends_count(g.sandbox)} of {n})")
    if g.system == "dmworker":  # the due time dmworker recorded (its delay ran from the enqueue)
        due = {t: (ob.status(j.id).due_ms or 0) / 1000 for t, j in zip(due, jobs, strict=True)}
    first: dict[str, float] = {}
    for x in ctl.sends():
        t = x["body"]["message"]["text"]
        first[t] = min(first.get(t, x["t_ms"]), x["t_ms"])
    lags = [first[t] - due[t] * 1000 for t in due]
    res = {
        "p50": c.pct(lags, 0.5),
        "p99": c.pct(lags, 0.99),
        "max": max(lags),
        "early": sum(1 for v in lags if v < 0),
        "load": f"{load0} / {c.loadavg()}",
    }
    c.say(
        f"  {g.system:8} follow-up lag: p50 {res['p50']:.0f} ms, p99 {res['p99']:.0f} ms, "
        f"max {res['max']:.0f} ms, "
        f"early {res['early']} (load average {res['load']})"
    )
    return res


def run(sandbox: Any, quick: bool, producers: int = 2) -> dict[str, Any]:
    n = 100_000 if quick else 1_000_000
    n_celery = 5_000 if quick else 50_000
    n_promote = 50_000 if quick else 200_000
    prefix = c.new_prefix("s")
    r = c.rdb()
    s = c.make_settings(prefix, sandbox)
    out: dict[str, Any] = {"n": n, "n_celery": n_celery}
    try:
        # Celery's countdown messages (the baseline): what the same broker holds per message
        app = c.producer_app(prefix, s)
        m0 = _used(r)
        t = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(n_celery):
                app.send_task(
                    "bench.followup",
                    (
                        c.ACCOUNT,
                        str(700000000 + i % RECIPIENTS),
                        f"Still there? Reply to keep the conversation going ({i})",
                    ),
                    countdown=3600 + i % 600,
                    queue=f"{prefix}.eta",
                    producer=producer,
                )
        out["celery_s"] = time.perf_counter() - t
        out["celery_bytes"] = (_used(r) - m0) / n_celery
        out["celery_key_bytes"] = (r.memory_usage(c.queue_key(prefix, f"{prefix}.eta")) or 0) / n_celery
        r.unlink(c.queue_key(prefix, f"{prefix}.eta"))
        c.say(f"  Celery countdown message: {out['celery_bytes']:.0f} bytes each ({n_celery:,})")
        # dmworker follow-ups
        Outbox(settings=s, client=r, publish=lambda a, rr: None).send_text("1", "register", delay=3600)
        m0 = _used(r)
        step = -(-n // producers)
        parts = [(s, lo, min(n, lo + step)) for lo in range(0, n, step)]
        t = time.perf_counter()
        with mp.get_context("fork").Pool(len(parts)) as pool:
            done = sum(pool.map(_schedule, parts))
        out["schedule_s"] = time.perf_counter() - t
        out["bytes"] = (_used(r) - m0) / done
        k = LaneStore(s, r).acct(c.ACCOUNT)
        out["key_bytes"] = sum(r.memory_usage(key) or 0 for key in (k.jobs, k.status, k.sched)) / done
        c.say(
            f"  {done:,} follow-ups scheduled in {out['schedule_s']:.1f} s ({producers} producers): "
            f"{out['bytes']:.0f} bytes each"
        )
        # promotions: a backlog all due (the clock is injected 30 days ahead)
        store = LaneStore(s, r)
        disp = Dispatcher(store, lambda a, rr: None)
        future = int(time.time() * 1000) + 30 * 86_400_000
        promoted, t = 0, time.perf_counter()
        while promoted < n_promote:
            got = disp.tick(now_ms=future).promoted
            if not got:
                break
            promoted += got
        out["promote_rate"] = promoted / (time.perf_counter() - t)
        c.say(f"  promoted {promoted:,} at {out['promote_rate']:,.0f}/s (Dispatcher.tick)")
        sched = store.acct(c.ACCOUNT).sched
        moved, t = 0, time.perf_counter()
        while moved < n_promote:
            ids = [m for m, _ in r.zpopmin(sched, 1000)]
            if not ids:
                break
            pipe = r.pipeline(transaction=False)
            for jid in ids:
                pipe.rpush(f"{prefix}:raw:lane:{hash(jid) % RECIPIENTS}", jid)
            pipe.execute()
            moved += len(ids)
        out["raw_rate"] = moved / (time.perf_counter() - t)
        c.say(f"  plain Redis move: {out['raw_rate']:,.0f}/s")
    finally:
        c.cleanup(r, prefix)
    out.update(lag(sandbox, quick))
    return out


def section(res: dict[str, Any]) -> str:
    rows = [
        [
            f"Redis memory per scheduled follow-up ({res['n']:,} scheduled), used_memory delta",
            f"{res['bytes']:.0f} B",
            f"{res['celery_bytes']:.0f} B (Celery countdown message, {res['n_celery']:,})",
            c.ratio(res["bytes"], res["celery_bytes"]),
        ],
        [
            "the same from `MEMORY USAGE` of the keys (sampled)",
            f"{res['key_bytes']:.0f} B",
            f"{res['celery_key_bytes']:.0f} B (the queue list)",
            c.ratio(res["key_bytes"], res["celery_key_bytes"]),
        ],
        [
            "promotions/s (Dispatcher.tick, 1000 per tick)",
            c.f0(res["promote_rate"]),
            f"{c.f0(res['raw_rate'])} (ZPOPMIN + RPUSH, not atomic, no status)",
            c.ratio(res["promote_rate"], res["raw_rate"]),
        ],
        [
            "scheduling rate (send_many, 2 producer processes)",
            f"{c.f0(res['n'] / res['schedule_s'])}/s",
            f"{c.f0(res['n_celery'] / res['celery_s'])}/s (apply_async countdown, 1 process)",
            "",
        ],
    ]
    if "lag_dmworker" in res:
        d, b = res["lag_dmworker"], res["lag_naive"]
        rows.append(
            [
                f"follow-up lag p50 / p99 / max, ms ({res['lag_n']:,} due over {res['lag_span_s']:.0f} s, "
                f"1 worker process x 16 threads; load average during the run {d['load']}, baseline's "
                f"{b['load']})",
                f"{d['p50']:.0f} / {d['p99']:.0f} / {d['max']:.0f} (early: {d['early']})",
                f"{b['p50']:.0f} / {b['p99']:.0f} / {b['max']:.0f} (Celery countdown, early: {b['early']})",
                c.ratio(d["p99"], b["p99"]),
            ]
        )
    return c.table(["figure", "dmworker", "baseline", "ratio"], rows)
