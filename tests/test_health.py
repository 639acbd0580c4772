"""The web tier's probes: /livez (process), /readyz (Redis, fast), /healthz (cluster, unchanged);
worker liveness is a metric, and a worker outage fails neither probe."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from dmworker.keys import Keys
from dmworker.web import create_app
from dmworker.web.health import READY_TIMEOUT_S


def app_client(settings, client: redis.Redis):
    return create_app(settings, redis_client=client, publish=lambda a, r: None).test_client()


def gauges(client) -> dict[str, float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            if not s.labels:
                out[s.name] = s.value
    return out


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_no_worker_fails_neither_probe_but_shows_in_metrics(settings, rdb, key_prefix):
    # Given a web app and no worker heartbeat at all
    client = app_client(settings, rdb)

    # Then the web tier is alive and ready; only /healthz (the cluster's health) says 503
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["redis"] == "ok"
    assert client.get("/healthz").status_code == 503
    m = gauges(client)
    assert m["dmworker_workers_alive"] == 0
    assert "dmworker_worker_heartbeat_age_seconds" not in m  # no beat yet: no sample

    # When a worker beat 40 s ago (stale) and another just now
    sec, usec = rdb.time()
    now = int(sec) * 1000 + usec // 1000
    rdb.zadd(Keys(key_prefix).workers, {"stale@host": now - 40_000})
    m = gauges(client)
    assert m["dmworker_workers_alive"] == 0
    assert 39 <= m["dmworker_worker_heartbeat_age_seconds"] <= 60
    rdb.zadd(Keys(key_prefix).workers, {"w1@host": now})

    # Then the metric says one is alive, with a fresh newest heartbeat
    m = gauges(client)
    assert m["dmworker_workers_alive"] == 1
    assert 0 <= m["dmworker_worker_heartbeat_age_seconds"] < 10
    assert client.get("/healthz").json == {"redis": "ok", "workers": 1}


def test_redis_down_fails_readiness_not_liveness(settings):
    dead = redis.Redis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=0.2,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    client = app_client(settings, dead)
    live = client.get("/livez")
    assert live.status_code == 200 and live.json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["error"] == "not_ready" and ready.json["redis"] == "down"
    assert client.get("/healthz").status_code == 503


def test_readyz_gives_up_quickly_on_a_hung_redis(settings, silent_server):
    # Given the app's own client waits up to 30 s for an answer (as redisconn.client does)
    hung = redis.Redis(host="127.0.0.1", port=silent_server, socket_timeout=30, socket_connect_timeout=5)
    client = app_client(settings, hung)

    # When the readiness probe runs (Kubernetes gives it a few seconds)
    t0 = time.monotonic()
    ready = client.get("/readyz")
    took = time.monotonic() - t0

    # Then it answers 503 after its own short timeout, not the client's 30 s
    assert ready.status_code == 503 and ready.json["redis"] == "down"
    assert took < READY_TIMEOUT_S + 2, took
    t0 = time.monotonic()
    assert client.get("/livez").status_code == 200
    assert time.monotonic() - t0 < 0.5


def test_probes_need_no_token_and_are_in_the_openapi_document(settings, rdb):
    client = app_client(settings.with_overrides(api_tokens=("tok-0123456789abcdef",)), rdb)
    paths = client.get("/openapi.json").json["paths"]
    for path in ("/livez", "/readyz", "/healthz"):
        assert client.get(path).status_code in (200, 503), path
        assert paths[path]["get"]["security"] == [], path
    assert "not a probe" in paths["/healthz"]["get"]["description"].lower()
