"""Chaos 1: a SIGKILL storm — 3 workers under steady load, one killed every ~3 s and restarted."""

from __future__ import annotations

import random
import threading
import time

import pytest
from chaos_helpers import (
    Producer,
    account_run,
    all_final,
    dead_ids,
    grep_logs,
    make_publisher,
    merge,
    pending_summary,
    sending_ids,
    tokens_of,
)
from conftest import ACCOUNT

from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import parse_rate
from dmworker.testing import wait_until


@pytest.mark.slow
@pytest.mark.chaos
def test_sigkill_storm_loses_nothing_and_keeps_order(settings, sandbox, rdb, procs, chaos):
    # Given 3 worker processes, a Graph API answering in ~50 ms (so kills land mid-send) and failing
    # 3 % of sends (5xx / transient), 120 recipients
    s = settings.with_overrides(max_attempts=20, rates={**settings.rates, "text": parse_rate("1000/s")})
    g = procs(s)
    workers = ["w1", "w2", "w3"]
    for name in workers:
        g.start_worker(name, concurrency=8)
    recipients = [str(710000 + i) for i in range(120)]
    sandbox.open_windows(ACCOUNT, recipients)
    sandbox.set_faults(error_rate=0.03, kinds=["5xx", "transient"], seed=11)
    sandbox.set_latency(50)
    publish = make_publisher(s)
    store = LaneStore(s, rdb)
    duration = chaos.s(20.0)
    stop = threading.Event()
    producers = [
        Producer(
            Outbox(settings=s, client=rdb, publish=publish), recipients[i::2], 30.0, stop, name=f"producer{i}"
        )
        for i in range(2)
    ]
    # When producers enqueue ~60 jobs/s for `duration` while a worker is SIGKILLed every ~3 s
    for p in producers:
        p.start()
    rng = random.Random(5)
    kills, in_doubt_ids = 0, set()
    in_flight_per_kill = []
    t_end = time.monotonic() + duration
    while time.monotonic() < t_end - 1.5:
        time.sleep(rng.uniform(2.5, 3.5))
        victim = rng.choice(workers)
        g.kill(victim)
        ids = sending_ids(rdb, s, ACCOUNT)  # sends in flight right after the kill
        in_flight_per_kill.append(len(ids))
        in_doubt_ids |= ids
        kills += 1
        g.start_worker(victim, concurrency=8)
    time.sleep(max(0.0, t_end - time.monotonic()))
    stop.set()
    for p in producers:
        p.join(30)
    expected, ids, _ = merge(producers)
    job_ids = list(ids.values())
    # Then every accepted job reaches a final state without any further help
    done = wait_until(lambda: all_final(rdb, s, ACCOUNT, job_ids), chaos.s(90.0), 0.5)
    assert done, pending_summary(rdb, s, ACCOUNT, job_ids) + "\n" + g.log_tail("w1")
    time.sleep(0.5)
    id_to_token = {v: k for k, v in ids.items()}
    sends = sandbox.sends(ACCOUNT)
    rep = account_run(
        "sigkill_storm",
        expected,
        sends,
        tokens_of(dead_ids(store, ACCOUNT), id_to_token),
        tokens_of(in_doubt_ids, id_to_token),
        in_doubt_sends=sum(in_flight_per_kill),
        kills=kills,
        in_flight_per_kill=in_flight_per_kill,
        lease_lost=len(grep_logs(g.dir, "lane lease lost")),
        duration_s=duration,
    )
    # ... nothing lost, reordered or unexpected; duplicates only among the sends in flight at a kill
    rep.check(dead_expected=0)
    assert kills >= int(duration / 3.5), kills
    assert any(x.get("fault") for x in sandbox.requests(ACCOUNT)), "the sandbox injected no faults"
