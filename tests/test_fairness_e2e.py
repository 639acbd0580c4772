"""Many accounts on one cluster with real worker processes, real Redis and the sandbox over HTTP.

The issue's scenario is a 20,000-recipient broadcast at 100/s (200 s of drain); these tests scale
it down to 2,000 recipients (20 s) to keep the suite's time sane: what is measured — how long
another account's message waits, how long the same account's urgent reply waits — does not grow
with the backlog under admission (one account never has more than its admission budget of lanes in
play), so the smaller broadcast shows the same bound.  bench/tenants.py measures 20,000 and
100,000.  Latency is enqueue (the producer's clock, before the call) to arrival at the sandbox
(the sandbox's clock; both on this machine).
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import ACCOUNT, ACCOUNT2, TOKEN, TOKEN2

from dmworker.outbox import Outbox
from dmworker.settings import AccountConfig, parse_rate
from dmworker.testing import Accounting, ProcessGroup, max_in_window, wait_until

#: The admission window these tests run with (the default); 0 runs them with admission off.
ADMIT_WINDOW_S = 1.0
BROADCAST = 2_000
RATE = 100
BURST = 5


def _group(s):
    """A process group whose workers run with ``s``' admission settings (the environment that
    ``settings_to_env`` writes does not carry them)."""
    return ProcessGroup(
        s,
        extra_env={
            "DMWORKER_ADMIT_WINDOW_S": str(s.admit_window_s),
            "DMWORKER_MAX_IN_FLIGHT": str(s.max_in_flight),
        },
    )


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def _pace(start: float, at_s: float) -> None:
    delay = start + at_s - time.time()
    if delay > 0:
        time.sleep(delay)


@pytest.mark.slow
def test_a_broadcast_delays_neither_another_account_nor_its_own_urgent_reply(settings, sandbox, rdb):
    # Given accounts A and B limited to 100/s (burst 5) and 2 worker processes x 8 threads
    s = settings.with_overrides(
        rates={**settings.rates, "text": parse_rate(f"{RATE}/s")},
        rate_burst=BURST,
        admit_window_s=ADMIT_WINDOW_S,
    )
    g = _group(s)
    try:
        g.start_worker("w1", concurrency=8)
        g.start_worker("w2", concurrency=8)
        broadcast = [str(910000 + i) for i in range(BROADCAST)]
        singles = [str(920000 + i) for i in range(40)]
        urgent = [str(930000 + i) for i in range(4)]
        sandbox.open_windows(ACCOUNT, broadcast + urgent)
        sandbox.open_windows(ACCOUNT2, singles)
        ob = Outbox(settings=s, client=rdb)
        ob.send_text(singles[0], "warm", account=ACCOUNT2)  # workers up and connected
        assert wait_until(lambda: len(sandbox.sends(ACCOUNT2)) == 1, 30, 0.1), g.log_tail("w1")
        # When A queues a 2,000-recipient broadcast (low priority, as `dmworker bulk` does) ...
        t0 = time.time()
        ob.send_many([{"kind": "text", "recipient": r, "text": f"{r}#0"} for r in broadcast], priority="low")
        # ... and, during its 20 s of drain, B sends 40 single messages (one every 0.45 s) and A
        # sends 4 high-priority replies (one every 4.5 s)
        enq_b: dict[str, float] = {}
        enq_a: dict[str, float] = {}
        for i, r in enumerate(singles[1:]):
            _pace(t0, 1.0 + i * 0.45)
            if i % 10 == 5:
                enq_a[urgent[i // 10]] = time.time()
                ob.send_text(urgent[i // 10], "your order", priority="high")
            enq_b[r] = time.time()
            ob.send_text(r, "hello", account=ACCOUNT2)
        assert wait_until(lambda: len(sandbox.sends(ACCOUNT)) >= BROADCAST + len(urgent), 60, 0.25), (
            g.log_tail("w1")
        )
        assert wait_until(lambda: len(sandbox.sends(ACCOUNT2)) >= len(singles), 10, 0.1)
        sends_a, sends_b = sandbox.sends(ACCOUNT), sandbox.sends(ACCOUNT2)
        drain_s = (sends_a[-1]["t_ms"] / 1000) - t0
        lat_b = [x["t_ms"] - enq_b[x["recipient"]] * 1000 for x in sends_b if x["recipient"] in enq_b]
        lat_a = {
            x["recipient"]: x["t_ms"] - enq_a[x["recipient"]] * 1000
            for x in sends_a
            if x["recipient"] in enq_a
        }
        worst = max_in_window([x["t_ms"] for x in sends_a], 1000.0)
        decided = [json.loads(v).get("sending_since_ms") for v in rdb.hvals(ob.store.acct(ACCOUNT).status)]
        worst_decided = max_in_window([float(d) for d in decided if d], 1000.0)
        print(
            f"admit window {ADMIT_WINDOW_S} s; A drained {BROADCAST} in {drain_s:.1f} s; "
            f"B latency p50 {_pct(lat_b, 0.5):.0f} ms p99 {_pct(lat_b, 0.99):.0f} ms max {max(lat_b):.0f} ms "
            f"(n={len(lat_b)}); A high-priority latencies {sorted(round(v) for v in lat_a.values())} ms; "
            f"A max per 1 s window {worst} as the sandbox received them, {worst_decided} as the "
            "limiter decided them (Redis clock)"
        )
        # Then B's messages were not held behind A's backlog: p99 <= 1 s
        assert len(lat_b) == len(singles) - 1
        assert _pct(lat_b, 0.99) <= 1000.0
        # ... A's urgent replies went out at A's next free slots, not after the broadcast: <= 1.5 s
        assert len(lat_a) == len(urgent) and max(lat_a.values()) <= 1500.0
        # ... the broadcast was still running when they did (the bounds were tested under load)
        assert drain_s >= BROADCAST / RATE - 1
        # ... the limiter never let A above its limit: rate x 1 s + burst - 1 decided in any second (one
        # slot is kept for the way to Meta; how requests bunch on it depends on the machine's load:
        # printed above, measured in bench/limiter.py)
        assert worst_decided <= RATE + BURST - 1
        # ... and the broadcast lost, duplicated and reordered nothing
        acc = Accounting(
            {r: [f"{r}#0"] for r in broadcast},
            [(x["recipient"], x["body"]["message"]["text"]) for x in sends_a if x["recipient"] not in enq_a],
        )
        assert acc.lost == acc.duplicated == acc.reordered == acc.unexpected == 0, str(acc)
    finally:
        g.stop_all()


EXTRA_ACCOUNTS = [(f"1784140000000001{i}", f"IGAAtest-token-secret-value-001{i}") for i in range(4)]


@pytest.mark.slow
def test_a_late_backlogged_account_gets_its_fair_share_among_five_busy_ones(settings, sandbox, rdb):
    # Given 6 accounts with high limits (1000/s) and workers as the bottleneck: one process with 4
    # threads, the sandbox answering each send after 20 ms
    thousand = {"text": parse_rate("1000/s")}
    accts = [(ACCOUNT, TOKEN), (ACCOUNT2, TOKEN2), *EXTRA_ACCOUNTS]
    for account, token in EXTRA_ACCOUNTS:
        sandbox.add_token(token, account)
    s = settings.with_overrides(
        accounts={a: AccountConfig(a, t, rates=thousand) for a, t in accts},
        rates={**settings.rates, "text": parse_rate("1000/s")},
        admit_window_s=ADMIT_WINDOW_S,
    )
    sandbox.set_latency(20)
    g = _group(s)
    per_account = 1_500
    try:
        g.start_worker("w1", concurrency=4)
        recipients = [str(940000 + i) for i in range(per_account)]
        for account, _ in accts:
            sandbox.open_windows(account, recipients)
        ob = Outbox(settings=s, client=rdb)
        ob.send_text(recipients[0], "warm")
        assert wait_until(lambda: len(sandbox.sends(ACCOUNT)) == 1, 30, 0.1), g.log_tail("w1")

        def backlog(account: str) -> None:
            ob.send_many(
                [
                    {"kind": "text", "recipient": r, "text": "sale", "account": account}
                    for r in recipients[1:]
                ],
                priority="low",
            )

        # When five accounts are backlogged, and 2 s later a sixth one queues its own backlog
        for account, _ in accts[:5]:
            backlog(account)
        time.sleep(2.0)
        late = accts[5][0]
        t_late = time.time()
        backlog(late)
        # Then over a 10 s window starting 3 s later, while every account still has work queued,
        # each account gets at least 0.7 of its fair share (1/6) of the sends
        start_ms, end_ms = (t_late + 3.0) * 1000, (t_late + 13.0) * 1000
        assert wait_until(lambda: time.time() * 1000 > end_ms + 500, 30, 0.2)
        sends = sandbox.sends()
        window = [x for x in sends if start_ms <= x["t_ms"] < end_ms]
        counts = {a: sum(1 for x in window if x["account"] == a) for a, _ in accts}
        first_late = min((x["t_ms"] for x in sends if x["account"] == late), default=float("nan"))
        share = {a: n / len(window) / (1 / len(accts)) for a, n in counts.items()}
        print(
            f"admit window {ADMIT_WINDOW_S} s; {len(window)} sends in the window "
            f"({len(window) / 10:.0f}/s); late account's first send {first_late - t_late * 1000:.0f} ms "
            f"after its enqueue; sends per account {list(counts.values())}; "
            f"fraction of fair share {[round(v, 2) for v in share.values()]}"
        )
        assert all(
            n < per_account - 1 for n in (sum(1 for x in sends if x["account"] == a) for a, _ in accts)
        )
        assert len(window) >= 200  # the workers were busy all along
        assert min(share.values()) >= 0.7, share
    finally:
        g.stop_all()
