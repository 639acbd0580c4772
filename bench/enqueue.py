"""Figure 3: enqueue cost. Per-call latency of ``Outbox.send_text`` (a new lane: one Redis round
trip + one Celery publish; an existing lane: the round trip only) beside Celery's own
``apply_async`` of a trivial task on the same broker, and bulk ``send_many`` beside ``apply_async``
in a loop. Nothing consumes the queue; every key is deleted afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import common as c
from hotpath import Monitor
from workers import LANE_TASK

from dmworker.outbox import Outbox


def _lat(fn: Callable[[int], Any], lo: int, hi: int) -> list[float]:
    out = []
    for i in range(lo, hi):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def run(sandbox: Any, quick: bool) -> dict[str, Any]:
    n = 500 if quick else 3000
    bulk = 5_000 if quick else 20_000
    prefix = c.new_prefix("e")
    r = c.rdb()
    s = c.make_settings(prefix, sandbox)
    app = c.producer_app(prefix, s)
    hold = f"{prefix}.hold"

    @app.task(name="bench.noop", ignore_result=True)
    def noop(account: str, recipient: str) -> None:
        return None

    out: dict[str, Any] = {"n": n, "bulk": bulk}
    try:
        with app.producer_or_acquire() as producer:
            ob = Outbox(
                settings=s,
                client=r,
                publish=lambda a, rr: app.send_task(LANE_TASK, (a, rr), queue=hold, producer=producer),
            )
            for i in range(200):  # warm: connections, script load, account registration
                ob.send_text(str(800000000 + i), "warm")
                noop.apply_async((c.ACCOUNT, "1"), queue=hold)
            rec = [str(810000000 + i) for i in range(n)]
            out.update(apply_async=[], new_lane=[], existing_lane=[])
            for lo in range(0, n, n // 5):  # interleaved rounds: background load hits all three alike
                hi = min(n, lo + n // 5)
                out["new_lane"] += _lat(lambda i: ob.send_text(rec[i], "Hello! Thanks."), lo, hi)
                out["existing_lane"] += _lat(lambda i: ob.send_text(rec[i], "We will follow up."), lo, hi)
                out["apply_async"] += _lat(
                    lambda i: noop.apply_async((c.ACCOUNT, rec[i]), queue=hold), lo, hi
                )
            for name, base in (("trips_new", 850000000), ("trips_existing", 850000000)):
                with Monitor() as mon:
                    for i in range(50):
                        ob.send_text(str(base + i), "counted")
                out[name] = (mon.trips / 50, {k: v / 50 for k, v in mon.client.items()})
            with Monitor() as mon:
                for _ in range(50):
                    noop.apply_async((c.ACCOUNT, "1"), queue=hold)
            out["trips_apply"] = (mon.trips / 50, {k: v / 50 for k, v in mon.client.items()})
            items = [
                {"kind": "text", "recipient": str(820000000 + i % (bulk // 10)), "text": f"bulk {i}"}
                for i in range(bulk)
            ]
            t = time.perf_counter()
            ob.send_many(items)
            out["send_many_10"] = bulk / (time.perf_counter() - t)
            items = [
                {"kind": "text", "recipient": str(830000000 + i), "text": f"bulk {i}"} for i in range(bulk)
            ]
            t = time.perf_counter()
            ob.send_many(items)
            out["send_many_1"] = bulk / (time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(bulk):
                noop.apply_async((c.ACCOUNT, str(840000000 + i)), queue=hold)
            out["apply_async_loop"] = bulk / (time.perf_counter() - t)
        for k in ("new_lane", "existing_lane", "apply_async"):
            c.say(f"  {k}: p50 {c.pct(out[k], 0.5):.0f} us, p99 {c.pct(out[k], 0.99):.0f} us")
        c.say(
            f"  send_many {out['send_many_10']:,.0f}/s (10 per recipient), {out['send_many_1']:,.0f}/s "
            f"(1 per recipient); apply_async loop {out['apply_async_loop']:,.0f}/s"
        )
    finally:
        c.cleanup(r, prefix)
    return out


def section(res: dict[str, Any]) -> str:
    a = res["apply_async"]
    rows = []
    for name, k in (
        ("`send_text`, new lane (publishes a lane message)", "new_lane"),
        ("`send_text`, existing lane (no publish)", "existing_lane"),
    ):
        v = res[k]
        rows.append(
            [
                name,
                f"{c.pct(v, 0.5):.0f}",
                f"{c.pct(v, 0.99):.0f}",
                f"{c.pct(a, 0.5):.0f}",
                f"{c.pct(a, 0.99):.0f}",
                c.ratio(c.pct(v, 0.5), c.pct(a, 0.5)),
            ]
        )
    t1 = c.table(["call", "p50 us", "p99 us", "apply_async p50 us", "apply_async p99 us", "p50 ratio"], rows)
    trips = [
        [label, f"{res[k][0]:.2f}", ", ".join(f"`{n}` {v:.2f}" for n, v in sorted(res[k][1].items()))]
        for label, k in (
            ("`send_text`, new lane", "trips_new"),
            ("`send_text`, existing lane", "trips_existing"),
            ("`apply_async`", "trips_apply"),
        )
    ]
    t1 += "\n\n" + c.table(["call", "Redis round trips per call (MONITOR)", "commands per call"], trips)
    ap = res["apply_async_loop"]
    rows2 = [
        [
            f"`send_many`, {res['bulk']:,} items, 10 per recipient",
            c.f0(res["send_many_10"]),
            c.f0(ap),
            c.ratio(res["send_many_10"], ap),
        ],
        [
            f"`send_many`, {res['bulk']:,} items, 1 per recipient",
            c.f0(res["send_many_1"]),
            c.f0(ap),
            c.ratio(res["send_many_1"], ap),
        ],
    ]
    t2 = c.table(["bulk", "enqueues/s", "apply_async loop /s", "ratio"], rows2)
    return t1 + "\n\n" + t2
