"""``/metrics`` reads the cluster-wide counters from Redis: real sends through the sandbox, then a scrape."""

from __future__ import annotations

import pytest
from conftest import ACCOUNT, ACCOUNT2, TOKEN2
from prometheus_client.parser import text_string_to_metric_families

from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.web import create_app
from dmworker.worker import LaneWorker

U1, U2, U3, U4 = "3330001", "3330002", "3330003", "3330004"


def scrape(client) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape."""
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


@pytest.fixture
def msettings(settings):
    return settings.with_overrides(rate_burst=50)


def test_metrics_count_what_the_workers_did(msettings, rdb, sandbox):
    # Given sends through the sandbox: 3 texts and a typing sent, one follow-up pending, one
    # cancelled, one job dead-lettered on a revoked token, and one lane still waiting
    ob = Outbox(settings=msettings, client=rdb, publish=lambda a, r: None)
    client = create_app(msettings, redis_client=rdb, publish=lambda a, r: None).test_client()
    empty = scrape(client)
    assert value(empty, "dmworker_jobs_accepted_total", account=ACCOUNT) == 0
    assert value(empty, "dmworker_account_paused", account=ACCOUNT, reason="none") == 0
    sandbox.open_windows(ACCOUNT, [U1, U2])
    sandbox.open_windows(ACCOUNT2, [U1])
    sandbox.revoke_token(TOKEN2)
    ob.send_text(U1, "one")
    ob.send_typing_indicator(U1)
    ob.send_text(U1, "two")
    ob.send_text(U2, "three")
    ob.send_text(U2, "later", delay=3600)
    ob.cancel(ob.send_text(U2, "never", delay=3600).id)
    ob.send_text(U1, "refused", account=ACCOUNT2)
    worker = LaneWorker(msettings, LaneStore(msettings, rdb))
    try:
        runs = [worker.run_lane(ACCOUNT, U1), worker.run_lane(ACCOUNT, U2), worker.run_lane(ACCOUNT2, U1)]
    finally:
        worker.clients.close()
    assert [r.sent for r in runs] == [3, 1, 0]
    ob.send_text(U3, "waiting")
    ob.send_text(U4, "waiting too")

    # When Prometheus scrapes
    m = scrape(client)

    # Then every series is there with the cluster's numbers
    assert value(m, "dmworker_jobs_accepted_total", account=ACCOUNT) == 8
    assert value(m, "dmworker_jobs_accepted_total", account=ACCOUNT2) == 1
    assert value(m, "dmworker_jobs_sent_total", account=ACCOUNT, kind="text") == 3
    assert value(m, "dmworker_jobs_sent_total", account=ACCOUNT, kind="typing") == 1
    assert value(m, "dmworker_jobs_failed_total", account=ACCOUNT2, kind="text") == 1
    assert value(m, "dmworker_jobs_cancelled_total", account=ACCOUNT) == 1
    for name in ("dmworker_retries_total", "dmworker_throttle_pauses_total", "dmworker_limiter_waits_total"):
        assert value(m, name, account=ACCOUNT) == 0
    assert value(m, "dmworker_send_latency_seconds_count", account=ACCOUNT) == 4
    assert value(m, "dmworker_send_latency_seconds_bucket", account=ACCOUNT, le="+Inf") == 4
    assert 0 < value(m, "dmworker_send_latency_seconds_sum", account=ACCOUNT) < 40
    buckets = sorted(
        (float(dict(k)["le"]), v)
        for k, v in m["dmworker_send_latency_seconds_bucket"].items()
        if dict(k)["account"] == ACCOUNT
    )
    assert [b for b, _ in buckets][:3] == [0.01, 0.025, 0.05] and len(buckets) == 11
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    assert value(m, "dmworker_send_latency_seconds_count", account=ACCOUNT2) == 0
    assert value(m, "dmworker_lane_backlog", account=ACCOUNT) == 2
    assert value(m, "dmworker_followups_scheduled", account=ACCOUNT) == 1
    assert value(m, "dmworker_dead_letters", account=ACCOUNT2) == 1
    assert value(m, "dmworker_dead_letters", account=ACCOUNT) == 0
    assert value(m, "dmworker_account_paused", account=ACCOUNT2, reason="token_invalid") == 1
    assert value(m, "dmworker_account_paused", account=ACCOUNT, reason="none") == 0


def test_a_second_web_process_sees_the_same_numbers(msettings, rdb):
    ob = Outbox(settings=msettings, client=rdb, publish=lambda a, r: None)
    ob.send_text(U1, "x", account=ACCOUNT2)
    a = create_app(msettings, redis_client=rdb, publish=lambda a, r: None).test_client()
    b = create_app(msettings, redis_client=rdb, publish=lambda a, r: None).test_client()
    assert scrape(a)["dmworker_jobs_accepted_total"] == scrape(b)["dmworker_jobs_accepted_total"]
    assert value(scrape(b), "dmworker_jobs_accepted_total", account=ACCOUNT2) == 1
