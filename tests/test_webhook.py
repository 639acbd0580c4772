"""The Instagram webhook over a real Redis: signatures, windows, de-duplication, cancel on reply."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from conftest import ACCOUNT, ACCOUNT2

from dmworker.errors import WindowClosedError
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.web import create_app
from dmworker.worker import LaneWorker

APP_SECRET = "app-secret-for-webhook-tests-0123"
VERIFY = "verify-token-for-webhook-tests"
USER, USER2 = "5550001", "5550002"
HOUR_MS = 3_600_000

CALLBACK_EVENTS: list[dict[str, Any]] = []


def collect_event(event: dict[str, Any]) -> None:
    CALLBACK_EVENTS.append(event)


def failing_callback(event: dict[str, Any]) -> None:
    raise RuntimeError("the user's code is broken")


# ------------------------------------------------------------------------------------------ helpers
def now_ms() -> int:
    return int(time.time() * 1000)


def sign(raw: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def envelope(*events: dict[str, Any], account: str = ACCOUNT) -> dict[str, Any]:
    return {"object": "instagram", "entry": [{"id": account, "time": now_ms(), "messaging": list(events)}]}


def event(user: str, ts: int | None = None, account: str = ACCOUNT, **body: Any) -> dict[str, Any]:
    return {"sender": {"id": user}, "recipient": {"id": account}, "timestamp": ts or now_ms(), **body}


def message(user: str, mid: str, ts: int | None = None, **extra: Any) -> dict[str, Any]:
    return event(user, ts, message={"mid": mid, "text": "hello", **extra})


def postback(user: str, mid: str) -> dict[str, Any]:
    return event(user, postback={"mid": mid, "title": "Start", "payload": "START"})


def reaction(user: str, mid: str, action: str = "react") -> dict[str, Any]:
    return event(user, reaction={"mid": mid, "action": action, "reaction": "love", "emoji": "❤"})


def post(
    client: Any,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    signature: str | None = None,
    secret: str = APP_SECRET,
) -> Any:
    body = raw if raw is not None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    sig = sign(body, secret) if signature is None else signature
    if sig:
        headers["X-Hub-Signature-256"] = sig
    return client.post("/webhooks/instagram", data=body, headers=headers)


@pytest.fixture
def wsettings(settings):
    return settings.with_overrides(app_secret=APP_SECRET, verify_token=VERIFY)


@pytest.fixture
def published() -> list:
    return []


@pytest.fixture
def client(wsettings, rdb, published):
    app = create_app(wsettings, redis_client=rdb, publish=lambda a, r: published.append((a, r)))
    return app.test_client()


@pytest.fixture
def outbox(wsettings, rdb, published) -> Outbox:
    return Outbox(settings=wsettings, client=rdb, publish=lambda a, r: published.append((a, r)))


# ------------------------------------------------------------------------------------------ tests
def test_handshake_answers_the_challenge_only_for_the_right_token(client):
    ok = client.get(f"/webhooks/instagram?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=12345")
    assert ok.status_code == 200 and ok.mimetype == "text/plain" and ok.data == b"12345"
    for query in (
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
        f"hub.mode=unsubscribe&hub.verify_token={VERIFY}&hub.challenge=1",
        "hub.challenge=1",
    ):
        bad = client.get(f"/webhooks/instagram?{query}")
        assert bad.status_code == 403 and bad.is_json and bad.json["error"] == "forbidden"


def test_a_signed_message_opens_the_window_and_a_redelivery_counts_once(client, outbox):
    ts = now_ms() - 5_000
    payload = envelope(message(USER, "mid.abc1", ts))
    first = post(client, payload)
    assert first.status_code == 200 and first.json == {"received": 1, "new": 1}
    win = outbox.window(USER)
    assert win.open and win.last_user_message_ms == ts and win.closes_at_ms == ts + 24 * HOUR_MS
    # Meta retries the delivery: recorded once, not passed on again
    assert post(client, payload).json == {"received": 1, "new": 0}


@pytest.mark.parametrize(
    "case", ["forged", "missing", "sha1", "not-hex", "short", "no-prefix", "tampered", "wrong-secret"]
)
def test_bad_signatures_are_refused_and_record_nothing(client, outbox, rdb, caplog, case):
    raw = json.dumps(envelope(message(USER, "mid.forged"))).encode()
    good = sign(raw)
    signature = {
        "forged": "sha256=" + "0" * 64,
        "missing": "",
        "sha1": "sha1=" + good[7:47],
        "not-hex": "sha256=" + "z" * 64,
        "short": good[:-2],
        "no-prefix": good[7:],
        "tampered": good,
        "wrong-secret": sign(raw, "another-secret"),
    }[case]
    body = raw.replace(b"hello", b"HELLO") if case == "tampered" else raw
    resp = post(client, raw=body, signature=signature)
    assert resp.status_code == 403 and resp.is_json
    k = outbox.store.acct(ACCOUNT)
    assert rdb.exists(k.windows) == 0 and not outbox.window(USER).open
    assert rdb.exists(k.event("message:mid.forged")) == 0
    assert APP_SECRET not in caplog.text and good[7:] not in caplog.text


def test_without_an_app_secret_every_post_is_refused(settings, rdb):
    client = create_app(settings, redis_client=rdb, publish=lambda a, r: None).test_client()
    resp = post(client, envelope(message(USER, "mid.nosecret")), secret="")
    assert resp.status_code == 403


def test_message_postback_and_reaction_open_windows_read_echo_and_unreact_do_not(client, outbox):
    users = {
        "message": "6001",
        "quick_reply": "6002",
        "postback": "6003",
        "reaction": "6004",
        "read": "6005",
        "echo": "6006",
        "unreact": "6007",
        "referral": "6008",
        "own": ACCOUNT,
    }
    events = [
        message(users["message"], "mid.m"),
        message(users["quick_reply"], "mid.q", quick_reply={"payload": "YES"}),
        postback(users["postback"], "mid.p"),
        reaction(users["reaction"], "mid.r"),
        event(users["read"], read={"mid": "mid.x"}),
        message(users["echo"], "mid.e", is_echo=True),
        reaction(users["unreact"], "mid.u", action="unreact"),
        message(ACCOUNT, "mid.own"),  # the account's own message, seen as sender
        event(users["referral"], referral={"ref": "summer", "source": "ADS"}),
    ]
    resp = post(client, envelope(*events))
    # new: message, quick reply, postback, react, unreact, referral
    assert resp.json == {"received": 9, "new": 6}
    opened = {name for name, user in users.items() if outbox.window(user).open}
    assert opened == {"message", "quick_reply", "postback", "reaction", "referral"}
    assert post(client, envelope(*events)).json == {"received": 9, "new": 0}


@pytest.mark.parametrize("reply", ["message", "quick_reply", "postback"])
def test_a_reply_cancels_cancel_on_reply_followups_but_a_reaction_does_not(client, outbox, reply):
    # Given a user who wrote, and a follow-up due in an hour unless they answer
    assert post(client, envelope(message(USER, "mid.first"), message(USER2, "mid.u2"))).json["new"] == 2
    follow = outbox.send_text(USER, "Still interested?", delay=3600, cancel_on_reply=True)
    other = outbox.send_text(USER2, "not this user", delay=3600, cancel_on_reply=True, account=ACCOUNT)
    assert outbox.status(follow.id).state == "scheduled"
    # When they react: nothing is cancelled
    post(client, envelope(reaction(USER, "mid.first")))
    assert outbox.status(follow.id).state == "scheduled"
    # When they reply
    answer = {
        "message": message(USER, "mid.2"),
        "postback": postback(USER, "mid.pb"),
        "quick_reply": message(USER, "mid.qr", quick_reply={"payload": "YES"}),
    }[reply]
    post(client, envelope(answer))
    # Then the follow-up is cancelled, and only theirs
    st = outbox.status(follow.id)
    assert st.state == "cancelled" and st.last_error is not None and "replied" in st.last_error.message
    assert outbox.status(other.id).state == "scheduled"


def test_a_batch_of_entries_for_several_accounts(client, outbox, rdb):
    payload = {
        "object": "instagram",
        "entry": [
            {
                "id": ACCOUNT,
                "time": now_ms(),
                "messaging": [message("7001", "mid.b1"), postback("7002", "mid.b2")],
            },
            {"id": ACCOUNT2, "time": now_ms(), "messaging": [message("7003", "mid.b3")]},
            {
                "id": "17849999999999999",
                "time": now_ms(),
                "messaging": [message("7004", "mid.b4")],
            },  # an account this deployment does not serve: ignored, never filed under another one
        ],
    }
    assert post(client, payload).json == {"received": 4, "new": 3}
    assert outbox.window("7001").open and outbox.window("7002").open
    assert not outbox.window("7004").open and not outbox.window("7004", account=ACCOUNT2).open
    assert outbox.window("7003", account=ACCOUNT2).open and not outbox.window("7003").open


def test_malformed_json_is_400_and_unknown_events_are_ignored(client, rdb, outbox):
    assert post(client, raw=b'{"object": "instagram", "entry": [').status_code == 400
    assert post(client, raw=b"[1, 2]").status_code == 400
    unknown = post(client, envelope(event(USER, standby={"x": 1}), event(USER, delivery={"mids": []})))
    assert unknown.status_code == 200 and unknown.json == {"received": 2, "new": 0}
    other = post(client, {"object": "page", "entry": [{"id": ACCOUNT, "messaging": [message(USER, "m.p")]}]})
    assert other.status_code == 200 and other.json["new"] == 0
    assert rdb.exists(outbox.store.acct(ACCOUNT).windows) == 0


def test_new_events_reach_the_callback_and_a_failing_callback_does_not_fail_the_webhook(wsettings, rdb):
    CALLBACK_EVENTS.clear()
    s = wsettings.with_overrides(event_callback=f"{__name__}:collect_event")
    client = create_app(s, redis_client=rdb, publish=lambda a, r: None).test_client()
    ev = message(USER, "mid.cb")
    post(client, envelope(ev))
    post(client, envelope(ev))  # redelivered: not passed on again
    expected = {
        "account": ACCOUNT,
        "user": USER,
        "kind": "message",
        "timestamp_ms": ev["timestamp"],
        "event": ev,
    }
    assert [expected] == CALLBACK_EVENTS
    broken = create_app(
        wsettings.with_overrides(event_callback=f"{__name__}:failing_callback"),
        redis_client=rdb,
        publish=lambda a, r: None,
    ).test_client()
    assert post(broken, envelope(message(USER, "mid.cb2"))).json == {"received": 1, "new": 1}


def test_a_comment_is_recorded_for_the_private_reply_window(client, rdb, outbox):
    t = now_ms() - 60_000
    change = {
        "field": "comments",
        "value": {
            "id": "17900000000000001",
            "from": {"id": USER, "username": "u"},
            "text": "price?",
            "media": {"id": "17800000000000001"},
        },
    }
    payload = {"object": "instagram", "entry": [{"id": ACCOUNT, "time": t, "changes": [change]}]}
    assert post(client, payload).json == {"received": 1, "new": 1}
    later = {"object": "instagram", "entry": [{"id": ACCOUNT, "time": t + 5_000, "changes": [change]}]}
    assert post(client, later).json == {"received": 1, "new": 0}
    assert rdb.hget(outbox.store.acct(ACCOUNT).comments, "17900000000000001") == str(t)


def test_enforced_windows_refuse_at_enqueue_and_fail_at_the_worker_without_a_call(settings, rdb, sandbox):
    s = settings.with_overrides(app_secret=APP_SECRET, verify_token=VERIFY, window_policy="enforce")
    client = create_app(s, redis_client=rdb, publish=lambda a, r: None).test_client()
    outbox = Outbox(settings=s, client=rdb, publish=lambda a, r: None)
    # Given a user who never wrote: refused at the door
    with pytest.raises(WindowClosedError):
        outbox.send_text(USER, "hi")
    # Given a user who wrote 23 h 59 min ago: accepted
    post(client, envelope(message(USER, "mid.old", now_ms() - 24 * HOUR_MS + 60_000)))
    job = outbox.send_text(USER, "just in time?")
    # When the window has closed by the time a worker takes the job
    rdb.hset(outbox.store.acct(ACCOUNT).windows, USER, now_ms() - 25 * HOUR_MS)
    worker = LaneWorker(s, LaneStore(s, rdb))
    try:
        run = worker.run_lane(ACCOUNT, USER)
    finally:
        worker.clients.close()
    # Then it failed without calling the API
    assert run.outcomes == ["failed"]
    assert sandbox.requests(ACCOUNT) == []
    st = outbox.status(job.id)
    assert st.state == "failed" and st.last_error is not None and st.last_error.kind == "outside_window"
