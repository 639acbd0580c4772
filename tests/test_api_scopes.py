"""Scoped API tokens over the HTTP API (real Redis, the sandbox): what each role may do, and what a
producer or viewer of account A can never do to account B."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import ACCOUNT, ACCOUNT2

from dmworker.crypto import new_key
from dmworker.lanes import LaneStore
from dmworker.settings import ConfigError, Settings
from dmworker.web import create_app
from dmworker.worker import LaneWorker

ADMIN = "admin-token-0123456789abcdef"
PROD_A = "producer-a-token-0123456789ab"
PROD_B = "producer-b-token-0123456789ab"
VIEW_A = "viewer-a-token-0123456789abcd"
ENTRIES = (
    ADMIN,
    f"{PROD_A}:producer:{ACCOUNT}",
    f"{PROD_B}:producer:{ACCOUNT2}",
    f"{VIEW_A}:viewer:{ACCOUNT}",
)
USER_A, USER_B = "6660001", "6660002"
SECRETS = (ADMIN, PROD_A, PROD_B, VIEW_A)


class Api:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.responses: list[Any] = []

    def call(self, method: str, path: str, token: str | None, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body) if body is not None else None
        resp = self.client.open(path, method=method, headers=headers, data=data)
        self.responses.append(resp)
        return resp


@pytest.fixture
def ssettings(settings: Settings) -> Settings:
    return settings.with_overrides(api_tokens=ENTRIES, window_policy="trust", secret_keys=(new_key(),))


@pytest.fixture
def api(ssettings, rdb):
    client = Api(create_app(ssettings, redis_client=rdb, publish=lambda a, r: None).test_client())
    yield client
    for resp in client.responses:
        text = resp.get_data(as_text=True)
        assert not [s for s in SECRETS if s in text], resp.request.path


def _send(api: Api, token: str, account: str, user: str, text: str = "hi") -> Any:
    return api.call(
        "POST", "/v1/messages", token, {"kind": "text", "recipient": user, "text": text, "account": account}
    )


def _dead_letter(api: Api, settings: Settings, rdb, account: str, user: str) -> str:
    """A job of ``account`` dead-lettered by Meta's window refusal (the user never wrote)."""
    job = _send(api, ADMIN, account, user).json["jobs"][0]["id"]
    worker = LaneWorker(settings, LaneStore(settings, rdb))
    try:
        worker.run_lane(account, user)
    finally:
        worker.clients.close()
    assert api.call("GET", f"/v1/jobs/{job}", ADMIN).json["state"] == "failed"
    return job


def test_a_producer_of_a_can_do_nothing_to_b(api, ssettings, rdb, key_prefix):
    # Given a queued job, a follow-up and a dead letter of account B
    queued_b = _send(api, PROD_B, ACCOUNT2, USER_B).json["jobs"][0]["id"]
    follow = {
        "kind": "text",
        "recipient": USER_B,
        "text": "later",
        "account": ACCOUNT2,
        "delay": 3600,
        "key": "k1",
    }
    assert api.call("POST", "/v1/messages", PROD_B, follow).status_code == 202
    dead_b = _dead_letter(api, ssettings, rdb, ACCOUNT2, "6660009")
    # When A's producer tries each operation on B
    # Then jobs addressed by id answer 404 (as if they did not exist) ...
    assert api.call("GET", f"/v1/jobs/{queued_b}", PROD_A).status_code == 404
    assert api.call("DELETE", f"/v1/jobs/{queued_b}", PROD_A).status_code == 404
    assert api.call("GET", f"/v1/dlq/{dead_b}", PROD_A).status_code == 404
    assert api.call("POST", f"/v1/dlq/{dead_b}/replay", PROD_A).status_code == 404
    assert api.call("GET", f"/v1/accounts/{ACCOUNT2}", PROD_A).status_code == 404
    # ... and requests naming B answer 403, whether or not B exists
    for path in (
        f"/v1/dlq?account={ACCOUNT2}",
        f"/v1/windows/{USER_B}?account={ACCOUNT2}",
    ):
        assert api.call("GET", path, PROD_A).status_code == 403, path
    assert api.call("DELETE", f"/v1/dlq?account={ACCOUNT2}", PROD_A).status_code == 403
    assert api.call("DELETE", "/v1/dlq?all=true", PROD_A).status_code == 403
    assert api.call("DELETE", f"/v1/followups?key=k1&account={ACCOUNT2}", PROD_A).status_code == 403
    refused = _send(api, PROD_A, ACCOUNT2, USER_B, "not mine")
    assert refused.status_code == 403 and refused.json["error"] == "forbidden"
    batch = [
        {"kind": "text", "recipient": USER_A, "text": "ok"},
        {"kind": "text", "recipient": USER_B, "text": "no", "account": ACCOUNT2},
    ]
    assert api.call("POST", "/v1/messages", PROD_A, batch).status_code == 403
    assert _send(api, PROD_A, "17841400000000999", USER_B).status_code == 403  # unknown: same answer
    # And nothing of B changed: the job is queued, the follow-up pending, the dead letter kept
    assert api.call("GET", f"/v1/jobs/{queued_b}", ADMIN).json["state"] == "queued"
    assert [d["id"] for d in api.call("GET", f"/v1/dlq?account={ACCOUNT2}", ADMIN).json["dead_letters"]] == [
        dead_b
    ]
    assert LaneStore(ssettings, rdb).redis.hget(f"{key_prefix}:{{{ACCOUNT2}}}:fkey", "k1")
    # And A's producer sees only A in the account list, its own dead letters in the default list
    listed = [a["account"] for a in api.call("GET", "/v1/accounts", PROD_A).json["accounts"]]
    assert listed == [ACCOUNT]
    assert api.call("GET", "/v1/dlq", PROD_A).json["dead_letters"] == []
    # But it may do all of this to A
    own = _send(api, PROD_A, ACCOUNT, USER_A)
    assert own.status_code == 202
    own_id = own.json["jobs"][0]["id"]
    assert api.call("GET", f"/v1/jobs/{own_id}", PROD_A).status_code == 200
    assert api.call("DELETE", f"/v1/jobs/{own_id}", PROD_A).json["cancelled"] is True
    dead_a = _dead_letter(api, ssettings, rdb, ACCOUNT, "6660008")
    assert api.call("POST", f"/v1/dlq/{dead_a}/replay", PROD_A).status_code == 200
    assert api.call("DELETE", f"/v1/dlq?account={ACCOUNT}", PROD_A).status_code == 200


def test_a_viewer_reads_its_account_and_changes_nothing(api, ssettings, rdb):
    dead_a = _dead_letter(api, ssettings, rdb, ACCOUNT, "6660007")
    queued_a = _send(api, ADMIN, ACCOUNT, USER_A).json["jobs"][0]["id"]
    queued_b = _send(api, ADMIN, ACCOUNT2, USER_B).json["jobs"][0]["id"]
    assert api.call("GET", f"/v1/jobs/{queued_a}", VIEW_A).json["state"] == "queued"
    assert [d["id"] for d in api.call("GET", "/v1/dlq", VIEW_A).json["dead_letters"]] == [dead_a]
    assert api.call("GET", f"/v1/dlq/{dead_a}", VIEW_A).status_code == 200
    assert api.call("GET", f"/v1/accounts/{ACCOUNT}", VIEW_A).json["account"] == ACCOUNT
    for method, path in (
        ("DELETE", f"/v1/jobs/{queued_a}"),
        ("POST", f"/v1/dlq/{dead_a}/replay"),
        ("DELETE", f"/v1/dlq?account={ACCOUNT}"),
        ("DELETE", f"/v1/followups?key=x&account={ACCOUNT}"),
    ):
        assert api.call(method, path, VIEW_A).status_code == 403, path
    assert _send(api, VIEW_A, ACCOUNT, USER_A).status_code == 403
    assert api.call("GET", f"/v1/jobs/{queued_b}", VIEW_A).status_code == 404
    assert api.call("GET", f"/v1/jobs/{queued_a}", ADMIN).json["state"] == "queued"


def test_an_admin_purges_every_account_only_with_an_explicit_all(api, ssettings, rdb):
    _dead_letter(api, ssettings, rdb, ACCOUNT, "6660006")
    _dead_letter(api, ssettings, rdb, ACCOUNT2, "6660005")
    missing = api.call("DELETE", "/v1/dlq", ADMIN)
    assert missing.status_code == 422 and "all=true" in missing.get_data(as_text=True)
    assert len(api.call("GET", "/v1/dlq", ADMIN).json["dead_letters"]) == 2
    assert api.call("DELETE", "/v1/dlq?all=true", ADMIN).json == {"purged": 2}
    assert api.call("GET", "/v1/dlq", ADMIN).json["dead_letters"] == []


def test_accounts_over_http_are_admin_only_and_show_no_token(api, ssettings, rdb, key_prefix):
    token = "IGAAhttp-added-account-secret-01"
    new = "17841400000000555"
    body = {"access_token": token, "rates": {"text": "10/s"}, "token_expires_at": 2_000_000_000}
    assert api.call("PUT", f"/v1/accounts/{new}", PROD_A, body).status_code == 403
    created = api.call("PUT", f"/v1/accounts/{new}", ADMIN, body)
    assert created.status_code == 201 and token not in created.get_data(as_text=True)
    assert created.json["token_fingerprint"] and created.json["limits"]["text"] == "10/s"
    assert (
        api.call("PUT", f"/v1/accounts/{new}", ADMIN, {"disabled": True}).status_code == 422
    )  # a PUT is whole
    assert (
        api.call("PUT", f"/v1/accounts/{new}", ADMIN, {**body, "disabled": True}).json["state"] == "disabled"
    )
    assert api.call("PUT", f"/v1/accounts/{ACCOUNT}", ADMIN, body).status_code == 409  # static: read-only
    assert api.call("GET", f"/v1/accounts/{new}", ADMIN).json["state"] == "disabled"
    assert api.call("PUT", f"/v1/accounts/{new}", ADMIN, {"nope": 1}).status_code == 422
    assert api.call("DELETE", f"/v1/accounts/{new}", PROD_A).status_code == 403
    assert api.call("DELETE", f"/v1/accounts/{new}", ADMIN).status_code == 422  # jobs=... is required
    assert api.call("DELETE", f"/v1/accounts/{new}?jobs=keep", ADMIN).json["jobs"] == "keep"
    assert api.call("GET", f"/v1/accounts/{new}", ADMIN).status_code == 404
    from test_accounts import assert_no_token_in_redis

    assert_no_token_in_redis(rdb, key_prefix, [token])


def test_registry_api_tokens_are_scoped_stored_hashed_and_revocable(api, rdb, key_prefix):
    made = api.call(
        "POST", "/v1/api-tokens", ADMIN, {"name": "shop", "role": "producer", "accounts": [ACCOUNT]}
    )
    assert made.status_code == 201
    token = made.json["token"]
    assert api.call("POST", "/v1/api-tokens", PROD_A, {"name": "x", "role": "admin"}).status_code == 403
    assert _send(api, token, ACCOUNT, USER_A).status_code == 202
    assert _send(api, token, ACCOUNT2, USER_B).status_code == 403
    listed = api.call("GET", "/v1/api-tokens", ADMIN).json["api_tokens"]
    assert [(t["name"], t["role"], t["accounts"]) for t in listed] == [("shop", "producer", [ACCOUNT])]
    from test_accounts import assert_no_token_in_redis

    assert_no_token_in_redis(rdb, key_prefix, [token])
    assert api.call("DELETE", "/v1/api-tokens/shop", ADMIN).json == {"removed": "shop"}
    assert _send(api, token, ACCOUNT, USER_A).status_code == 401


def test_an_api_token_for_a_malformed_account_id_is_refused(api):
    # schemathesis found "DFbamhwmE*" accepted although the spec allows only account ids
    for bad in (["DFbamhwmE*"], ["ok", "a b"], [""], [17]):
        resp = api.call("POST", "/v1/api-tokens", ADMIN, {"name": "x", "role": "viewer", "accounts": bad})
        assert resp.status_code == 422, (bad, resp.json)
        assert "accounts" in resp.json["fields"]
    assert api.call("GET", "/v1/api-tokens", ADMIN).json["api_tokens"] == []


def test_api_token_entries_are_checked_at_start_without_showing_the_token():
    ok = Settings.from_env({"DMWORKER_API_TOKENS": f"t1,t2:producer:{ACCOUNT}|{ACCOUNT2},t3:viewer:*"})
    assert len(ok.api_tokens) == 3
    for bad in ("s3cr3t-x:owner", "s3cr3t-x:producer", "s3cr3t-x:admin:123"):
        with pytest.raises(ConfigError, match="DMWORKER_API_TOKENS: entry 1") as e:
            Settings.from_env({"DMWORKER_API_TOKENS": bad})
        assert "s3cr3t-x" not in str(e.value)


def test_the_account_list_comes_in_pages_by_account_id(api, ssettings, rdb):
    # Given 7 known accounts: the two configured ones and five with data
    others = [f"17841400000100{i:03d}" for i in range(5)]
    rdb.sadd(LaneStore(ssettings, rdb).keys.accounts, *others)
    every = sorted([ACCOUNT, ACCOUNT2, *others])
    # When an admin reads them 3 at a time, each page starting after the previous page's next
    seen, after, pages = [], None, 0
    while True:
        query = "?limit=3" + (f"&after={after}" if after else "")
        body = api.call("GET", f"/v1/accounts{query}", ADMIN).json
        seen += [a["account"] for a in body["accounts"]]
        pages += 1
        after = body["next"]
        if after is None:
            break
        assert after == seen[-1]
    # Then every account came once, in order, in 3 pages; without a limit, one page of them all
    assert seen == every and pages == 3
    assert [a["account"] for a in api.call("GET", "/v1/accounts", ADMIN).json["accounts"]] == every
    # And a page is of the caller's accounts only; a bad limit or after is refused
    own = api.call("GET", "/v1/accounts?limit=1", PROD_A).json
    assert [a["account"] for a in own["accounts"]] == [ACCOUNT] and own["next"] is None
    for query in ("limit=0", "limit=1001", "limit=x", "after=", "after=a%2Fb"):
        assert api.call("GET", f"/v1/accounts?{query}", ADMIN).status_code == 422, query
