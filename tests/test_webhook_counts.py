"""Webhook events counted by outcome: new, duplicate, ignored, unserved (real POSTs, real Redis,
the scrape read with the Prometheus text parser)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import ACCOUNT
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dmworker.web import create_app
from dmworker.web.telemetry import WEBHOOK_EVENT_RESULTS

APP_SECRET = "app-secret-for-webhook-count-tests"
UNSERVED = "17849999999999999"
EVENTS = "dmworker_webhook_events_total"


def post(client: Any, payload: Any) -> Any:
    raw = json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return client.post(
        "/webhooks/instagram",
        data=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig},
    )


def event_counts(client: Any) -> dict[str, float]:
    """``dmworker_webhook_events_total`` by ``result``, from one scrape."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            if s.name == EVENTS:
                out[s.labels["result"]] = s.value
    return out


def msg(user: str, mid: str, **extra: Any) -> dict[str, Any]:
    return {
        "sender": {"id": user},
        "recipient": {"id": ACCOUNT},
        "timestamp": int(time.time() * 1000),
        "message": {"mid": mid, "text": "hello", **extra},
    }


def comment(comment_id: str, author: str) -> dict[str, Any]:
    return {"field": "comments", "value": {"id": comment_id, "from": {"id": author}, "text": "price?"}}


def entry(account: str, messaging: Sequence[Any] = (), changes: Sequence[Any] = ()) -> dict[str, Any]:
    return {
        "id": account,
        "time": int(time.time() * 1000),
        "messaging": list(messaging),
        "changes": list(changes),
    }


@pytest.fixture
def client(settings, rdb):
    s = settings.with_overrides(app_secret=APP_SECRET)
    return create_app(s, redis_client=rdb, publish=lambda a, r: None).test_client()


def test_every_event_is_counted_as_new_duplicate_ignored_or_unserved(client):
    # Given a fresh web process: every outcome series exists at 0
    before = event_counts(client)
    assert before == dict.fromkeys(WEBHOOK_EVENT_RESULTS, 0.0)
    # When one POST carries a new message, the same message again, an echo, a read, the account's
    # own message, a new comment, a comment by the account, a change that is not a comment, and
    # two events for an account this deployment does not serve
    first = {
        "object": "instagram",
        "entry": [
            entry(
                ACCOUNT,
                messaging=[
                    msg("6001", "mid.c1"),
                    msg("6001", "mid.c1"),
                    msg("6001", "mid.echo", is_echo=True),
                    {"sender": {"id": "6001"}, "recipient": {"id": ACCOUNT}, "read": {"mid": "mid.c1"}},
                    msg(ACCOUNT, "mid.own"),
                ],
                changes=[comment("17900000000000011", "6002"), comment("17900000000000012", ACCOUNT)],
            ),
            entry(ACCOUNT, changes=[{"field": "mentions", "value": {"id": "1"}}]),
            entry(UNSERVED, messaging=[msg("6003", "mid.u1"), msg("6003", "mid.u2")]),
        ],
    }
    assert post(client, first).json == {"received": 10, "new": 2}
    # And Meta redelivers the message and the comment in a second POST
    again = {
        "object": "instagram",
        "entry": [
            entry(ACCOUNT, messaging=[msg("6001", "mid.c1")], changes=[comment("17900000000000011", "6002")])
        ],
    }
    assert post(client, again).json == {"received": 2, "new": 0}
    # Then each event is counted once under its outcome, and the outcomes add up to what was received
    got = event_counts(client)
    assert got == {
        "received": 12.0,
        "new": 2.0,
        "duplicate": 3.0,  # the message twice more, the comment once more
        "ignored": 5.0,  # echo, read, own message, own comment, a mentions change
        "unserved": 2.0,
        "not_new": 10.0,
    }


def test_a_post_for_another_object_counts_no_event(client):
    page = {"object": "page", "entry": [entry(ACCOUNT, messaging=[msg("6001", "mid.p")])]}
    assert post(client, page).json == {"received": 0, "new": 0}
    assert set(event_counts(client).values()) == {0.0}


#: keys a webhook body uses, so fuzzed bodies reach every branch of the event parser
_KEYS = ["id", "sender", "recipient", "message", "mid", "is_echo", "field", "value", "from", "read"]
_KEYS += ["reaction", "action", "postback", "referral", "timestamp", "text"]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**15)
    | st.sampled_from(["", "comments", ACCOUNT, "6009", "x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
    max_leaves=12,
)
_entries = st.lists(
    st.fixed_dictionaries(
        {"id": st.sampled_from([ACCOUNT, UNSERVED, ""])},
        optional={"messaging": st.lists(_json, max_size=3), "changes": st.lists(_json, max_size=3)},
    ),
    max_size=3,
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_entries)
def test_fuzzed_posts_keep_the_label_set_fixed_and_the_outcomes_adding_up(client, entries):
    answer = post(client, {"object": "instagram", "entry": entries})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    got = event_counts(client)
    assert set(got) == set(WEBHOOK_EVENT_RESULTS)
    assert got["received"] == got["new"] + got["duplicate"] + got["ignored"] + got["unserved"]
    assert got["not_new"] == got["received"] - got["new"]
