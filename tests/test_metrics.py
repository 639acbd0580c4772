"""``/metrics``: the cluster-wide counters read from Redis (real sends through the sandbox, and the
fields the Lua scripts write, written here directly: that is the contract), this process's own
counters, and label values that stay within fixed sets whatever the input."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import shutil
import string
import subprocess
import time

import pytest
from conftest import ACCOUNT, ACCOUNT2, TOKEN2
from prometheus_client.parser import text_string_to_metric_families

from dmworker.keys import Keys
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.schemas import KINDS
from dmworker.web import create_app
from dmworker.web.metrics import FAILURE_REASONS, OTHER, PAUSE_REASONS, REFUSAL_REASONS
from dmworker.web.telemetry import METHODS, UNMATCHED, WEBHOOK_EVENT_RESULTS, WEBHOOK_RESULTS
from dmworker.worker import LaneWorker

U1, U2, U3, U4 = "3330001", "3330002", "3330003", "3330004"
API_TOKEN = "metrics-api-token-0123456789"
APP_SECRET = "metrics-app-secret-abcdef"


def scrape_text(client) -> str:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    return resp.get_data(as_text=True)


def scrape(client) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(scrape_text(client)):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def labels_of(samples: dict, name: str) -> list[dict[str, str]]:
    return [dict(k) for k in samples.get(name, {})]


@pytest.fixture
def msettings(settings):
    return settings.with_overrides(
        rate_burst=50, api_tokens=(API_TOKEN,), app_secret=APP_SECRET, window_policy="trust"
    )


def app(s, rdb):
    return create_app(s, redis_client=rdb, publish=lambda a, r: None).test_client()


def test_metrics_count_what_the_workers_did(msettings, rdb, sandbox, key_prefix):
    # Given sends through the sandbox: 3 texts and a typing sent, one follow-up pending, one
    # cancelled, one job refused by a revoked token, and two lanes (three jobs) still waiting
    ob = Outbox(settings=msettings, client=rdb, publish=lambda a, r: None)
    client = app(msettings, rdb)
    empty = scrape(client)
    assert value(empty, "dmworker_jobs_accepted_total", account=ACCOUNT) == 0
    for reason in PAUSE_REASONS:
        assert value(empty, "dmworker_account_paused", account=ACCOUNT, reason=reason) == 0
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
    ob.send_text(U3, "waiting, second")
    ob.send_text(U4, "waiting too")
    rdb.zadd(Keys(key_prefix).account(ACCOUNT).dlq, {f"{ACCOUNT}.deadletter": 1})

    # When Prometheus scrapes
    m = scrape(client)

    # Then every series is there with the cluster's numbers
    assert value(m, "dmworker_jobs_accepted_total", account=ACCOUNT) == 9
    assert value(m, "dmworker_jobs_accepted_total", account=ACCOUNT2) == 1
    assert value(m, "dmworker_jobs_sent_total", account=ACCOUNT, kind="text") == 3
    assert value(m, "dmworker_jobs_sent_total", account=ACCOUNT, kind="typing") == 1
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
    # lanes and jobs are counted apart: 2 lanes hold 3 jobs
    assert value(m, "dmworker_lanes_backlog", account=ACCOUNT) == 2
    assert value(m, "dmworker_lane_backlog", account=ACCOUNT) == 2  # deprecated name, one release
    assert value(m, "dmworker_jobs_queued", account=ACCOUNT) == 3
    assert value(m, "dmworker_followups_scheduled", account=ACCOUNT) == 1
    assert value(m, "dmworker_dead_letters", account=ACCOUNT) == 1
    assert value(m, "dmworker_dead_letters", account=ACCOUNT2) == 0
    # one 0/1 series per fixed reason: the series set does not change when a pause starts
    assert value(m, "dmworker_account_paused", account=ACCOUNT2, reason="token_invalid") == 1
    assert sum(value(m, "dmworker_account_paused", account=ACCOUNT2, reason=r) for r in PAUSE_REASONS) == 1
    assert {d["reason"] for d in labels_of(m, "dmworker_account_paused")} == set(PAUSE_REASONS)
    assert sum(value(m, "dmworker_account_paused", account=ACCOUNT, reason=r) for r in PAUSE_REASONS) == 0
    assert 0 <= value(m, "dmworker_oldest_due_job_age_seconds", account=ACCOUNT) < 30


def test_oldest_due_job_age_grows_while_it_waits(msettings, rdb):
    ob = Outbox(settings=msettings, client=rdb, publish=lambda a, r: None)
    client = app(msettings, rdb)
    assert value(scrape(client), "dmworker_oldest_due_job_age_seconds", account=ACCOUNT) == 0
    ob.send_text(U1, "first")
    time.sleep(1.2)
    ob.send_text(U2, "second, younger")
    age = value(scrape(client), "dmworker_oldest_due_job_age_seconds", account=ACCOUNT)
    assert 1.1 <= age < 30, age


def test_failure_reasons_latency_and_refusals_from_the_stats_fields(msettings, rdb, key_prefix):
    """The fields the scripts write (the contract): read whether or not they exist yet."""
    client = app(msettings, rdb)
    m = scrape(client)  # nothing written yet: every fixed series is there, at 0
    for reason in FAILURE_REASONS:
        assert value(m, "dmworker_job_failures_total", account=ACCOUNT, reason=reason) == 0
    for reason in REFUSAL_REASONS:
        assert value(m, "dmworker_enqueue_refusals_total", reason=reason) == 0
    assert value(m, "dmworker_enqueue_to_send_seconds_count", account=ACCOUNT) == 0
    assert value(m, "dmworker_jobs_expired_total", account=ACCOUNT) == 0

    # Given the fields a cluster writes
    keys = Keys(key_prefix)
    rdb.hset(
        keys.account(ACCOUNT).stats,
        mapping={
            "reason:outside_window": 3,
            "reason:token_invalid": 2,
            "reason:expired": 4,
            "reason:attempts_exhausted": 1,
            "reason:some_future_kind": 5,
            "reason:another_one": 1,
            "expired": 4,
            "e2e:0.5": 2,
            "e2e:10": 1,
            "e2e:3600": 1,
            "e2e:+Inf": 1,
            "e2e_sum_s": 4000.5,
            "e2e_count": 5,
            "sent:text": 7,
            "sent:not_a_kind": 2,
        },
    )
    rdb.hset(keys.refused, mapping={"validation": 5, "window": 2, "backlog": 1, "brand_new": 3})

    # When Prometheus scrapes
    m = scrape(client)

    # Then the reasons are a fixed set, unknown ones summed as "other"
    failures = {
        d["reason"]: value(m, "dmworker_job_failures_total", **d)
        for d in labels_of(m, "dmworker_job_failures_total")
        if d["account"] == ACCOUNT
    }
    assert set(failures) == set(FAILURE_REASONS)
    assert failures["outside_window"] == 3 and failures["token"] == 2 and failures["expired"] == 4
    assert failures["attempts_exhausted"] == 1 and failures[OTHER] == 6
    assert value(m, "dmworker_jobs_expired_total", account=ACCOUNT) == 4
    assert value(m, "dmworker_jobs_sent_total", account=ACCOUNT, kind="text") == 7
    assert value(m, "dmworker_jobs_sent_total", account=ACCOUNT, kind=OTHER) == 2
    refusals = {
        d["reason"]: value(m, "dmworker_enqueue_refusals_total", **d)
        for d in labels_of(m, "dmworker_enqueue_refusals_total")
    }
    assert refusals == {
        "validation": 5,
        "window": 2,
        "key_exists": 0,
        "idempotency_conflict": 0,
        "backlog": 1,
        OTHER: 3,
    }
    # enqueue-to-send: a histogram up to an hour, cumulative, count = +Inf
    e2e = {
        float(d["le"]): value(m, "dmworker_enqueue_to_send_seconds_bucket", **d)
        for d in labels_of(m, "dmworker_enqueue_to_send_seconds_bucket")
        if d["account"] == ACCOUNT
    }
    assert e2e[0.25] == 0 and e2e[0.5] == 2 and e2e[10.0] == 3 and e2e[3600.0] == 4 and e2e[float("inf")] == 5
    assert value(m, "dmworker_enqueue_to_send_seconds_count", account=ACCOUNT) == 5
    assert value(m, "dmworker_enqueue_to_send_seconds_sum", account=ACCOUNT) == 4000.5
    # the other account has the same buckets (a stable series set), all 0
    other = [d for d in labels_of(m, "dmworker_enqueue_to_send_seconds_bucket") if d["account"] == ACCOUNT2]
    assert {float(d["le"]) for d in other} == set(e2e)


def test_webhook_and_http_counters(msettings, rdb):
    client = app(msettings, rdb)
    sec, _ = rdb.time()
    body = json.dumps(
        {
            "object": "instagram",
            "entry": [
                {
                    "id": ACCOUNT,
                    "time": 1,
                    "messaging": [
                        {
                            "sender": {"id": U1},
                            "recipient": {"id": ACCOUNT},
                            "timestamp": int(sec) * 1000,
                            "message": {"mid": "m-1", "text": "hi"},
                        }
                    ],
                }
            ],
        }
    ).encode()
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    answers = [
        client.post("/webhooks/instagram", data=body, headers={"X-Hub-Signature-256": sig}).json
        for _ in range(2)
    ]  # the second delivery is a redelivery
    assert answers == [{"received": 1, "new": 1}, {"received": 1, "new": 0}]
    assert (
        client.post(
            "/webhooks/instagram", data=body, headers={"X-Hub-Signature-256": "sha256=00"}
        ).status_code
        == 403
    )
    assert (
        client.post(
            "/webhooks/instagram",
            data=b"{",
            headers={
                "X-Hub-Signature-256": "sha256="
                + hmac.new(APP_SECRET.encode(), b"{", hashlib.sha256).hexdigest()
            },
        ).status_code
        == 400
    )
    client.get("/v1/jobs/nope.nope", headers={"Authorization": f"Bearer {API_TOKEN}"})
    client.get("/v1/jobs/x.y")
    client.get("/no/such/path")

    m = scrape(client)
    assert value(m, "dmworker_webhook_requests_total", result="ok") == 2
    assert value(m, "dmworker_webhook_requests_total", result="bad_signature") == 1
    assert value(m, "dmworker_webhook_requests_total", result="bad_request") == 1
    assert value(m, "dmworker_webhook_events_total", result="received") == 2
    assert value(m, "dmworker_webhook_events_total", result="new") == 1
    assert value(m, "dmworker_webhook_events_total", result="not_new") == 1
    req = "dmworker_http_requests_total"
    assert value(m, req, route="/v1/jobs/<job_id>", method="GET", status="404") == 1
    assert value(m, req, route="/v1/jobs/<job_id>", method="GET", status="401") == 1
    assert value(m, req, route=UNMATCHED, method="GET", status="404") == 1
    assert value(m, req, route="/webhooks/instagram", method="POST", status="403") == 1
    assert (
        value(m, "dmworker_http_request_duration_seconds_count", route="/webhooks/instagram", method="POST")
        == 4
    )
    assert "process_cpu_seconds_total" in m and "python_info" in m


# ------------------------------------------------------------------------------ cardinality
def _rand(rng: random.Random, n: int = 12) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + "_-.") for _ in range(n))


def fuzz(client, rdb, key_prefix: str, rng: random.Random, rounds: int = 40) -> set[str]:
    """Random accounts, routes, methods, bodies and signatures; every string it sent."""
    sent: set[str] = set()
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    for _ in range(rounds):
        acct = str(rng.randrange(10**15, 10**17))
        junk = _rand(rng)
        sent |= {acct, junk}
        job = {
            "kind": rng.choice([*KINDS, junk]),
            "recipient": str(rng.randrange(10**6, 10**9)),
            "text": junk,
            "account": rng.choice([acct, junk]),
        }
        client.post("/v1/messages", data=json.dumps(job), headers=auth)
        client.post("/v1/messages", data=json.dumps({**job, "kind": "text"}), headers=auth)
        client.get(f"/v1/{junk}/{acct}", headers=auth)
        client.get(f"/{junk}")
        client.open(
            f"/v1/jobs/{acct}.{junk}", method=rng.choice(["GET", "DELETE", "PATCH", "PUT"]), headers=auth
        )
        client.open(f"/v1/dlq?account={acct}&limit={rng.randrange(-5, 5000)}", method="GET", headers=auth)
        client.open("/metrics", method=junk.upper()[:8] or "X")
        body = json.dumps(
            {
                "object": "instagram",
                "entry": [
                    {
                        "id": acct,
                        "time": 1,
                        "messaging": [
                            {"sender": {"id": junk}, "timestamp": 1, "message": {"mid": junk, "text": junk}}
                        ],
                    }
                ],
            }
        ).encode()
        good = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
        client.post(
            "/webhooks/instagram",
            data=body,
            headers={"X-Hub-Signature-256": rng.choice([good, "sha256=" + junk, junk, ""])},
        )
        rdb.sadd(Keys(key_prefix).accounts, acct)  # an account someone made up, as the registry holds it
    return sent


def series(text: str) -> set[tuple[str, tuple]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_label_values_stay_bounded_under_fuzzed_input(msettings, rdb, key_prefix):
    # Given a web app that answered every route once
    flask_app = create_app(msettings, redis_client=rdb, publish=lambda a, r: None)
    client = flask_app.test_client()
    rules = {r.rule for r in flask_app.url_map.iter_rules()}
    rng = random.Random(1234)
    scrape_text(client)  # the scrape itself is a request: counted from the next scrape on

    # When it gets random accounts, routes, methods, bodies and signatures, twice
    sent = fuzz(client, rdb, key_prefix, rng)
    first = scrape_text(client)
    sent |= fuzz(client, rdb, key_prefix, rng)
    second = scrape_text(client)

    # Then every label value is from a fixed set, none is something a request carried
    allowed = {
        "account": {ACCOUNT, ACCOUNT2},
        "kind": {*KINDS, OTHER},
        "route": rules | {UNMATCHED},
        "method": {*METHODS, OTHER},
        "result": {*WEBHOOK_RESULTS, *WEBHOOK_EVENT_RESULTS},
        "reason": {*FAILURE_REASONS, *REFUSAL_REASONS, *PAUSE_REASONS},
    }
    for name, labels in series(second):
        for label, val in labels:
            assert val not in sent, f"{name}{{{label}={val!r}}}: a label value from a request"
            if label == "status":
                assert 100 <= int(val) <= 599
            elif label in allowed:
                assert val in allowed[label], f"{name}{{{label}={val!r}}}"
    # the second round of new random input added no series
    assert series(second) == series(first)
    m = scrape(client)
    assert value(m, "dmworker_accounts_unconfigured") >= 80
    assert value(m, "dmworker_webhook_requests_total", result="bad_signature") > 0


def test_promtool_accepts_a_scrape(msettings, rdb, key_prefix):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    client = app(msettings, rdb)
    fuzz(client, rdb, key_prefix, random.Random(7), rounds=5)
    text = scrape_text(client)
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # promtool exits 1 on a format error, 3 on lint problems only; print both
    assert res.returncode == 0, res.stdout + res.stderr
