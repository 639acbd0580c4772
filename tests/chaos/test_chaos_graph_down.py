"""Chaos 4: the Graph API goes away (the sandbox process is SIGKILLed and started again on the same
port 30 s later — 10 s in the default CI mode), then answers slower than the client's read timeout
for a few seconds, then recovers.  Retries resume, order holds, nothing is dead-lettered.

Settings as a user would choose them to ride out outages of a minute: backoff 0.5 s doubling up
to 5 s (full jitter), 40 attempts, maximum age 1 h.  With full jitter a lane's head waits on
average cap/2 = 2.5 s per retry once the cap is reached, so 40 attempts cover ~95 s of outage on
average (20 attempts would dead-letter 1-2.5 % of lane heads in a 30 s outage, by simulation:
see docs/reliability.md).

The sandbox forgets its record when killed, so the record is read just before the kill, after
0.5 s of HTTP 500 answers that stop new sends from being recorded (a 500 is refused before any
send is committed): the record of the dead sandbox is then complete.
"""

from __future__ import annotations

import threading
import time

import pytest
from chaos_helpers import Producer, account_run, all_final, dead_ids, make_publisher, merge, pending_summary
from conftest import ACCOUNT, TOKEN

from dmworker.admin import DeadLetters
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.sandbox import SandboxProcess
from dmworker.settings import parse_rate
from dmworker.testing import wait_until


@pytest.mark.slow
@pytest.mark.chaos
def test_graph_api_down_then_slow_retries_resume_in_order(settings, rdb, procs, chaos):
    # Given an own sandbox process (windows not enforced: a restarted sandbox forgets them), 2
    # workers with retry settings for minute-long outages, producers at ~30 jobs/s
    sb = SandboxProcess(tokens={TOKEN: ACCOUNT}, enforce_windows=False, latency_ms=10).start()
    try:
        s = settings.with_overrides(
            graph_url=sb.url + "/v25.0",
            max_attempts=40,
            max_age_s=3600.0,
            backoff_base_ms=500,
            backoff_cap_ms=5000,
            http_read_timeout_s=2.0,
            lease_ms=4000,
            rates={**settings.rates, "text": parse_rate("1000/s")},
        )
        g = procs(s)
        for name in ("w1", "w2"):
            g.start_worker(name, concurrency=8)
        recipients = [str(740000 + i) for i in range(60)]
        stop = threading.Event()
        publish = make_publisher(s)
        producers = [
            Producer(
                Outbox(settings=s, client=rdb, publish=publish),
                recipients[i::2],
                15.0,
                stop,
                name=f"producer{i}",
            )
            for i in range(2)
        ]
        for p in producers:
            p.start()
        time.sleep(3.0)
        # When the Graph API dies (SIGKILL) for `outage_s` ...
        outage_s = chaos.s(10.0, long=30.0)
        sb.control.set_faults(error_rate=1.0, kinds=["5xx"])
        time.sleep(0.5)
        before_kill = sb.control.sends(ACCOUNT)
        t_kill = time.time()
        sb.kill()
        time.sleep(outage_s)
        sb.start()  # same port; a fresh process: no faults, empty record
        t_up = time.time()
        time.sleep(2.0)
        # ... then answers 3 s late, beyond the client's 2 s read timeout, for a few seconds ...
        slow_s = chaos.s(4.0)
        t_slow = time.time()
        sb.control.set_slow(3000)
        time.sleep(slow_s)
        sb.control.set_slow(0)
        t_fast = time.time()
        # ... then is healthy again while producers go on
        time.sleep(chaos.s(3.0))
        stop.set()
        for p in producers:
            p.join(30)
        expected, ids, _ = merge(producers)
        job_ids = list(ids.values())
        done = wait_until(lambda: all_final(rdb, s, ACCOUNT, job_ids), chaos.s(60.0), 0.5)
        assert done, pending_summary(rdb, s, ACCOUNT, job_ids) + "\n" + g.log_tail("w1", 20)
        time.sleep(0.5)
        after = sb.control.sends(ACCOUNT)
        requests = sb.control.requests(ACCOUNT)
        # Then nothing was dead-lettered, lost, reordered or unexpected; duplicates are only
        # sends the sandbox recorded while it answered after the client's read timeout
        store = LaneStore(s, rdb)
        id_to_token = {v: k for k, v in ids.items()}
        dead = {id_to_token[i] for i in dead_ids(store, ACCOUNT) if i in id_to_token}
        late = [
            x for x in after if t_slow * 1000 - 50 <= x["t_ms"] <= t_fast * 1000 + 50
        ]  # answered 3 s late
        in_doubt = {x["body"]["message"]["text"] for x in late}
        stats = rdb.hgetall(store.acct(ACCOUNT).stats)
        rep = account_run(
            "graph_down",
            expected,
            before_kill + after,
            dead,
            in_doubt,
            in_doubt_sends=len(late),
            outage_s=outage_s,
            slow_s=slow_s,
            sent_before_kill=len(before_kill),
            sent_after_restart=len(after),
            retried=stats.get("retried", 0),
            sends_while_slow=len(late),
            accepted_during_outage=sum(1 for t in _acked(producers) if t_kill <= t <= t_up),
        )
        rep.check(dead_expected=0)
        assert DeadLetters(store).count(ACCOUNT) == 0
        assert int(stats.get("retried", 0)) > 0 and after, "no retries, or nothing sent after the restart"
        assert any(r["status"] == 200 and t_slow * 1000 <= r["t_ms"] <= t_fast * 1000 for r in requests), (
            "no request reached the slow sandbox"
        )
    finally:
        sb.stop()


def _acked(producers: list[Producer]) -> list[float]:
    return [t for p in producers for t in p.acked_at.values()]
