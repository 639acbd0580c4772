"""The producer HTTP API over a real Redis (and the Graph sandbox for dead letters)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import redis
from conftest import ACCOUNT, ACCOUNT2, TOKEN, TOKEN2
from redis.backoff import NoBackoff
from redis.retry import Retry

from dmworker.keys import Keys
from dmworker.lanes import LaneStore
from dmworker.schemas import KINDS
from dmworker.web import create_app
from dmworker.worker import LaneWorker

TOKENS = ("api-token-one-0123456789abcdef", "api-token-two-fedcba9876543210")
WRONG = "api-token-wrong-000000000000000"
USER, USER2 = "4440001", "4440002"
SECRETS = (*TOKENS, WRONG, TOKEN, TOKEN2, "app-secret-http-tests")


class Api:
    """A test client that sends the bearer token and keeps every response (checked for secrets)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.responses: list[Any] = []

    def call(
        self, method: str, path: str, token: str | None = TOKENS[0], headers: dict | None = None, **kw: Any
    ) -> Any:
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        resp = self.client.open(path, method=method, headers=h, **kw)
        self.responses.append(resp)
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        if body is not None:
            kw["data"] = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.call("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)


@pytest.fixture
def asettings(settings):
    return settings.with_overrides(api_tokens=TOKENS, app_secret=SECRETS[-1], window_policy="trust")


@pytest.fixture
def published() -> list:
    return []


def make_api(s, rdb, published) -> Any:
    return Api(create_app(s, redis_client=rdb, publish=lambda a, r: published.append((a, r))).test_client())


@pytest.fixture
def api(asettings, rdb, published):
    client = make_api(asettings, rdb, published)
    yield client
    for resp in client.responses:  # every answer is JSON-or-text without any secret in it
        text = resp.get_data(as_text=True) + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
        assert not [s for s in SECRETS if s in text], resp.request.path
        assert "<html" not in text.lower()


def queued_keys(rdb, prefix: str) -> list[str]:
    return [k for k in rdb.scan_iter(f"{prefix}:*") if ":lane:" in k or k.endswith((":sched", ":jobs"))]


# ------------------------------------------------------------------------------------------ auth
def test_bearer_auth_none_wrong_and_both_right_tokens(api):
    for resp in (
        api.get("/v1/accounts", token=None),
        api.get("/v1/accounts", token=WRONG),
        api.get("/v1/accounts", token=None, headers={"Authorization": f"Basic {TOKENS[0]}"}),
    ):
        assert resp.status_code == 401 and resp.is_json
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for token in TOKENS:
        assert api.get("/v1/accounts", token=token).status_code == 200


def test_without_configured_tokens_everything_is_401_and_logged_once(settings, rdb, caplog):
    api = make_api(settings.with_overrides(api_tokens=()), rdb, [])
    with caplog.at_level(logging.WARNING, logger="dmworker.web.auth"):
        assert api.get("/v1/accounts", token="anything").status_code == 401
        assert api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "x"}).status_code == 401
    assert sum("DMWORKER_API_TOKENS" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------ messages
def test_validation_errors_name_the_fields_and_queue_nothing(api, rdb, key_prefix, published):
    replies = [{"title": f"r{i}", "payload": "p"} for i in range(3)] + [{"title": "x" * 30, "payload": "p"}]
    one = api.post(
        "/v1/messages", {"kind": "quick_replies", "recipient": USER, "text": "pick", "replies": replies}
    )
    assert one.status_code == 422 and one.json["error"] == "validation"
    assert "replies.3.title" in one.json["fields"]
    batch = api.post(
        "/v1/messages",
        [
            {"kind": "text", "recipient": USER, "text": ""},
            {"kind": "text", "recipient": USER, "text": "fine"},
            {"kind": "nope", "recipient": USER},
        ],
    )
    assert batch.status_code == 422
    paths = set(batch.json["fields"])
    assert {"0.text", "2.kind"} <= paths and not any(p.startswith("1.") for p in paths)
    missing = api.post("/v1/messages", {"text": "no kind"})
    assert missing.status_code == 422 and {"kind", "recipient"} <= set(missing.json["fields"])
    assert api.post("/v1/messages", []).status_code == 422
    assert queued_keys(rdb, key_prefix) == [] and published == []


def test_a_batch_is_accepted_in_order(api, published):
    resp = api.post(
        "/v1/messages",
        [
            {"kind": "typing", "recipient": USER, "seconds": 1},
            {"kind": "text", "recipient": USER, "text": "Hi!"},
            {
                "kind": "sequence",
                "recipient": USER2,
                "steps": [{"kind": "typing"}, {"kind": "text", "text": "yo"}],
            },
            {"kind": "text", "recipient": USER2, "text": "later", "delay": 600, "key": "remind"},
        ],
    )
    assert resp.status_code == 202
    jobs = resp.json["jobs"]
    assert [j["recipient"] for j in jobs] == [USER, USER, USER2, USER2]
    assert len(jobs[2]["ids"]) == 2 and jobs[3]["due_ms"] is not None
    states = [api.get(f"/v1/jobs/{j['id']}").json["state"] for j in jobs]
    assert states == ["queued", "queued", "queued", "scheduled"]
    assert sorted(published) == [(ACCOUNT, USER), (ACCOUNT, USER2)]


def test_idempotency_key_header_returns_the_same_job(api):
    body = {"kind": "text", "recipient": USER, "text": "order shipped"}
    a = api.post("/v1/messages", body, headers={"Idempotency-Key": "order-42"})
    b = api.post("/v1/messages", body, headers={"Idempotency-Key": "order-42"})
    assert a.status_code == b.status_code == 202
    assert a.json["jobs"][0]["id"] == b.json["jobs"][0]["id"]
    assert (a.json["jobs"][0]["duplicate"], b.json["jobs"][0]["duplicate"]) == (False, True)
    items = [body, {**body, "text": "second"}]
    first = api.post("/v1/messages", items, headers={"Idempotency-Key": "batch-7"}).json["jobs"]
    again = api.post("/v1/messages", items, headers={"Idempotency-Key": "batch-7"}).json["jobs"]
    assert [j["id"] for j in first] == [j["id"] for j in again] and len({j["id"] for j in first}) == 2
    assert all(j["duplicate"] for j in again)


def test_malformed_oversized_and_odd_bodies(asettings, rdb, api):
    assert api.post("/v1/messages", b'{"kind": "text",').status_code == 400
    odd = api.post("/v1/messages", b"42")
    assert odd.status_code == 400 and odd.is_json
    small = make_api(asettings.with_overrides(max_body_bytes=1024), rdb, [])
    big = small.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "x" * 2000})
    assert big.status_code == 413 and big.is_json and big.json["error"] == "request_entity_too_large"
    api.responses += small.responses


def test_a_closed_window_is_422_with_when_it_closes(asettings, rdb):
    api = make_api(asettings.with_overrides(window_policy="enforce"), rdb, [])
    resp = api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "hi"})
    assert resp.status_code == 422 and "window" in resp.json["fields"] and resp.json["closes_at_ms"] is None
    LaneStore(asettings, rdb).inbound(
        ACCOUNT, USER, "m:1", int(time.time() * 1000), opens_window=True, cancels=True
    )
    late = api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "hi", "delay": 2 * 86400})
    assert late.status_code == 422 and isinstance(late.json["closes_at_ms"], int)


# ------------------------------------------------------------------------------------------ jobs
def test_cancel_a_job_and_a_followup_key(api):
    job = api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "x"}).json["jobs"][0]["id"]
    assert api.delete(f"/v1/jobs/{job}").json == {"cancelled": True, "id": job}
    again = api.delete(f"/v1/jobs/{job}")
    assert again.status_code == 409 and again.json["state"] == "cancelled"
    api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "y", "delay": 3600, "key": "k-1"})
    assert api.delete("/v1/followups?key=k-1").json["cancelled"] is True
    assert api.delete(f"/v1/followups?key=k-1&account={ACCOUNT}").status_code == 404
    assert api.delete("/v1/followups").status_code == 422


def test_unknown_things_are_404_json(api):
    for method, path in (
        ("GET", "/v1/jobs/not-a-job-id"),
        ("GET", f"/v1/jobs/{ACCOUNT}.0000dead"),
        ("DELETE", f"/v1/jobs/{ACCOUNT}.0000dead"),
        ("GET", f"/v1/dlq/{ACCOUNT}.0000dead"),
        ("POST", f"/v1/dlq/{ACCOUNT}.0000dead/replay"),
        ("GET", "/v1/nothing-here"),
    ):
        resp = api.call(method, path)
        assert resp.status_code == 404 and resp.is_json, (method, path)
    assert api.call("PUT", "/v1/messages").status_code == 405


def test_dead_letters_list_show_replay_and_purge(api, asettings, rdb, sandbox, published):
    # Given two jobs dead-lettered because Meta refused them (no messaging window open)
    a = api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "a"}).json["jobs"][0]["id"]
    b = api.post("/v1/messages", {"kind": "text", "recipient": USER2, "text": "b", "account": ACCOUNT2})
    b = b.json["jobs"][0]["id"]
    worker = LaneWorker(asettings, LaneStore(asettings, rdb))
    try:
        worker.run_lane(ACCOUNT, USER)
        worker.run_lane(ACCOUNT2, USER2)
    finally:
        worker.clients.close()
    # Then they are listed, per account too
    listed = api.get("/v1/dlq").json["dead_letters"]
    assert {d["id"] for d in listed} == {a, b}
    assert all(d["last_error"]["kind"] == "outside_window" for d in listed)
    assert [d["id"] for d in api.get(f"/v1/dlq?account={ACCOUNT2}&limit=5").json["dead_letters"]] == [b]
    assert api.get("/v1/dlq?limit=0").status_code == 422
    shown = api.get(f"/v1/dlq/{a}").json
    assert shown["status"]["dead_lettered"] and shown["job"]["args"]["text"] == "a"
    # When one is replayed and the other account's are purged
    published.clear()
    assert api.post(f"/v1/dlq/{a}/replay").json == {"replayed": True, "id": a}
    assert published == [(ACCOUNT, USER)]
    replayed = api.get(f"/v1/jobs/{a}").json
    assert replayed["state"] == "queued" and replayed["dead_lettered"] is False
    # a second replay: the job exists but is no longer a dead letter -> 409 with its state
    again = api.post(f"/v1/dlq/{a}/replay")
    assert again.status_code == 409 and again.json["state"] == "queued"
    assert api.delete(f"/v1/dlq?account={ACCOUNT2}").json == {"purged": 1}
    # Then nothing is left
    assert api.get("/v1/dlq").json == {"dead_letters": []}
    states = {acc["account"]: acc for acc in api.get("/v1/accounts").json["accounts"]}
    assert states[ACCOUNT]["configured"] and states[ACCOUNT2]["dead_letters"] == 0


def test_windows_endpoint(api, asettings, rdb):
    assert api.get(f"/v1/windows/{USER}").json["open"] is False
    ts = int(time.time() * 1000) - 1000
    LaneStore(asettings, rdb).inbound(ACCOUNT, USER, "m:w", ts, opens_window=True, cancels=True)
    win = api.get(f"/v1/windows/{USER}?account={ACCOUNT}").json
    assert win["open"] and win["last_user_message_ms"] == ts and win["closes_at_ms"] == ts + 86_400_000
    assert api.get(f"/v1/windows/{USER}?account={ACCOUNT2}").json["open"] is False
    assert api.get("/v1/windows/not-digits").status_code == 422


# ------------------------------------------------------------------------------------------ ops
def test_openapi_lists_every_path_and_every_kind(api):
    doc = api.get("/openapi.json", token=None).json
    assert doc["openapi"].startswith("3.") and json.loads(json.dumps(doc)) == doc
    assert {
        "/v1/messages",
        "/v1/jobs/{job_id}",
        "/v1/followups",
        "/v1/dlq",
        "/v1/dlq/{job_id}",
        "/v1/dlq/{job_id}/replay",
        "/v1/windows/{igsid}",
        "/v1/accounts",
    } <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    camel = ["".join(p.capitalize() for p in k.split("_")) for k in KINDS]
    assert all(f"{c}Args" in schemas and f"{c}Job" in schemas for c in camel)
    assert set(schemas["JobRequest"]["discriminator"]["mapping"]) == {*KINDS, "sequence"}
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.update(v for k, v in node.items() if k == "$ref")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs and all(r.rsplit("/", 1)[1] in schemas for r in refs)


def test_healthz_needs_a_fresh_heartbeat(api, rdb, key_prefix):
    resp = api.get("/healthz", token=None)
    assert resp.status_code == 503 and resp.json["redis"] == "ok" and resp.json["workers"] == 0
    sec, usec = rdb.time()
    now = int(sec) * 1000 + usec // 1000
    rdb.zadd(Keys(key_prefix).workers, {"old@host": now - 60_000})
    assert api.get("/healthz", token=None).status_code == 503
    rdb.zadd(Keys(key_prefix).workers, {"w1@host": now})
    assert api.get("/healthz", token=None).json == {"redis": "ok", "workers": 1}


def test_redis_unreachable_is_503(asettings):
    dead = redis.Redis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=0.2,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    api = make_api(asettings, dead, [])
    resp = api.post("/v1/messages", {"kind": "text", "recipient": USER, "text": "x"})
    assert resp.status_code == 503 and "Redis is unreachable" in resp.json["message"]
    assert api.get("/v1/dlq").status_code == 503
    assert api.get("/healthz", token=None).status_code == 503
