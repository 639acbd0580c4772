"""The lane scripts on a real Redis, with an injected clock (no sleeping, no Celery)."""

from __future__ import annotations

import json

import pytest

from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import AccountConfig, Settings, parse_rate, token_fingerprint

A, B = "17841400000000001", "17841400000000002"
T0 = 1_800_000_000_000  # an injected "now" in ms


@pytest.fixture
def lsettings(redis_url: str, key_prefix: str) -> Settings:
    return Settings.from_env({}).with_overrides(
        redis_url=redis_url,
        key_prefix=key_prefix,
        default_account=A,
        accounts={A: AccountConfig(A, "tok-a"), B: AccountConfig(B, "tok-b")},
        lease_ms=1000,
        rates={
            "text": parse_rate("10/s"),
            "media": parse_rate("10/s"),
            "private_reply": parse_rate("750/h"),
            "conversations": parse_rate("2/s"),
        },
        rate_burst=3,  # the limiter decides with burst - 1 = 2
    )


@pytest.fixture
def store(lsettings: Settings, rdb) -> LaneStore:
    return LaneStore(lsettings, rdb)


@pytest.fixture
def outbox(lsettings: Settings, rdb) -> tuple[Outbox, list]:
    published: list = []
    ob = Outbox(
        settings=lsettings, client=rdb, publish=lambda a, r: published.append((a, r)), clock=lambda: T0
    )
    return ob, published


def sent(mid: str = "m1") -> dict:
    return {"o": "sent", "mid": mid, "kind": "text"}


def test_jobs_come_out_in_order_and_the_first_enqueue_publishes(outbox, store):
    # Given three texts for one recipient
    ob, published = outbox
    jobs = [ob.send_text("111", f"hello {i}") for i in range(3)]
    # Then only the first enqueue asked for a publish
    assert published == [(A, "111")]
    # When a worker walks the lane
    got, prev, t = [], None, T0
    st = store.step(A, "111", "w1", acquire=True, now_ms=t)
    while st.action == "job":
        got.append(st.job_id)
        t += 1000  # one send a second: well inside the 10/s limit
        st = store.step(A, "111", "w1", acquire=False, prev_id=st.job_id, outcome=sent(), now_ms=t)
        prev = st
    # Then it saw them in order and the lane is gone
    assert got == [j.id for j in jobs]
    assert prev is not None and prev.action == "empty"
    assert ob.status(jobs[0].id).state == "sent"
    assert store.redis.zscore(store.acct(A).ready, "111") is None


def test_a_second_holder_is_refused_until_the_lease_expires_then_takes_over_in_doubt(outbox, store):
    ob, _ = outbox
    job = ob.send_text("222", "hi")
    first = store.step(A, "222", "w1", acquire=True, now_ms=T0)
    assert first.action == "job" and first.state_before == "queued"
    assert store.step(A, "222", "w2", acquire=True, now_ms=T0 + 500).action == "busy"
    # w1 dies; after the lease w2 gets the same job, marked as in doubt
    again = store.step(A, "222", "w2", acquire=True, now_ms=T0 + 1001)
    assert again.action == "job" and again.job_id == job.id
    assert again.state_before == "sending" and again.attempts == 2
    # w1's late outcome is fenced off: it no longer holds the job
    late = store.step(A, "222", "w1", acquire=False, prev_id=job.id, outcome=sent(), now_ms=T0 + 1002)
    assert late.action == "lost"
    assert ob.status(job.id).state == "sending"


def test_retry_holds_the_lane_and_keeps_the_job_first(outbox, store):
    ob, _ = outbox
    j1, j2 = ob.send_text("333", "one"), ob.send_text("333", "two")
    st = store.step(A, "333", "w", acquire=True, now_ms=T0)
    st = store.step(
        A,
        "333",
        "w",
        acquire=False,
        prev_id=j1.id,
        now_ms=T0,
        outcome={"o": "retry", "delay_ms": 300, "err": {"kind": "temporary", "message": "x"}},
    )
    assert st.action == "wait" and st.until_ms == T0 + 300 and st.why == "hold"
    assert ob.status(j1.id).state == "waiting"
    assert store.step(A, "333", "w", acquire=True, now_ms=T0 + 299).action == "wait"
    st = store.step(A, "333", "w", acquire=True, now_ms=T0 + 300)
    assert st.job_id == j1.id and st.attempts == 2
    st = store.step(A, "333", "w", acquire=False, prev_id=j1.id, outcome=sent(), now_ms=T0 + 300)
    assert st.job_id == j2.id


def test_a_throttle_pauses_the_whole_account_then_one_probe_goes(outbox, store):
    ob, _ = outbox
    a1, a2 = ob.send_text("401", "x"), ob.send_text("402", "y")
    other = ob.send_text("403", "z", account=B)
    st = store.step(A, "401", "w", acquire=True, now_ms=T0)
    st = store.step(
        A,
        "401",
        "w",
        acquire=False,
        prev_id=a1.id,
        now_ms=T0,
        outcome={"o": "throttled", "pause_ms": 3000, "err": {"kind": "throttled", "message": "t"}},
    )
    assert st.action == "wait" and st.why.startswith("paused") and st.until_ms == T0 + 3000
    assert ob.status(a1.id).attempts == 0  # the throttled attempt was refunded
    assert store.step(A, "402", "v", acquire=True, now_ms=T0 + 10).action == "wait"
    assert store.step(B, "403", "u", acquire=True, now_ms=T0 + 10).job_id == other.id
    # pause over: the first lane to ask becomes the probe, the other waits for it
    probe = store.step(A, "402", "v", acquire=True, now_ms=T0 + 3000)
    assert probe.action == "job" and probe.job_id == a2.id
    blocked = store.step(A, "401", "w", acquire=True, now_ms=T0 + 3001)
    assert blocked.action == "wait" and blocked.why == "probe"
    store.step(A, "402", "v", acquire=False, prev_id=a2.id, outcome=sent(), now_ms=T0 + 3002)
    assert store.step(A, "401", "w", acquire=True, now_ms=T0 + 3003).job_id == a1.id


def test_a_refused_token_holds_the_account_until_a_different_token(outbox, store):
    ob, _ = outbox
    j1, j2 = ob.send_text("501", "x"), ob.send_text("501", "y")
    store.step(A, "501", "w", acquire=True, now_ms=T0, token="old")
    st = store.step(
        A,
        "501",
        "w",
        acquire=False,
        prev_id=j1.id,
        token="old",
        now_ms=T0,
        outcome={
            "o": "reauth",
            "fp": token_fingerprint("old"),
            "err": {"kind": "token_invalid", "message": "bad token", "code": 190},
        },
    )
    assert st.action == "wait" and st.why == "paused:token_invalid"
    s1 = ob.status(j1.id)
    # the job in flight waits with its attempt refunded; nothing is dead-lettered
    assert s1.state == "waiting" and s1.attempts == 0 and not s1.dead_lettered
    assert store.redis.zcard(store.acct(A).dlq) == 0
    assert ob.status(j2.id).state == "queued"
    # the old token, and a process with no token, never lift the hold
    assert store.step(A, "501", "w", acquire=True, token="old", now_ms=T0 + 86_400_000).action == "wait"
    assert store.step(A, "501", "w", acquire=True, token="", now_ms=T0 + 2).action == "wait"
    # a different token goes on, in order
    assert store.step(A, "501", "w", acquire=True, token="new", now_ms=T0 + 3).job_id == j1.id


def test_cancelled_jobs_are_skipped(outbox, store):
    ob, _ = outbox
    j1, j2 = ob.send_text("601", "x"), ob.send_text("601", "y")
    assert ob.cancel(j1.id) is True
    assert ob.cancel(j1.id) is False
    assert store.step(A, "601", "w", acquire=True, now_ms=T0).job_id == j2.id


def test_followups_enter_the_lane_when_due_behind_what_is_there(outbox, store):
    ob, _ = outbox
    now = T0
    f = ob.send_text("701", "follow-up", delay=60)
    assert ob.status(f.id).state == "scheduled"
    q = ob.send_text("701", "now")
    assert store.due_followups(A, now_ms=now + 59_000) == []
    due = store.due_followups(A, now_ms=now + 61_000)
    assert due == [f.id]
    n, lanes = store.promote(A, [(f.id, "701")], now_ms=now + 61_000)
    assert n == 1 and lanes == []  # the lane was already ready
    assert store.promote(A, [(f.id, "701")], now_ms=now + 61_000) == (0, [])  # exactly once
    ids = store.redis.lrange(store.acct(A).lane("701"), 0, -1)
    assert ids == [q.id, f.id]


def test_idempotency_key_returns_the_same_job(outbox, store):
    ob, _published = outbox
    a = ob.send_text("801", "x", idempotency_key="order-1")
    b = ob.send_text("801", "x", idempotency_key="order-1")
    assert b.id == a.id and b.duplicate and not a.duplicate
    assert store.redis.llen(store.acct(A).lane("801")) == 1


def test_followup_key_cancel_and_replace(outbox):
    ob, _ = outbox
    f1 = ob.send_text("901", "reminder", delay=3600, key="remind-901")
    from dmworker.errors import ValidationError

    with pytest.raises(ValidationError) as e:
        ob.send_text("901", "reminder 2", delay=3600, key="remind-901")
    assert "key" in e.value.messages
    f2 = ob.send_text("901", "reminder 2", delay=3600, key="remind-901", replace=True)
    assert ob.status(f1.id).state == "cancelled"
    assert ob.cancel(key="remind-901") is True
    assert ob.status(f2.id).state == "cancelled"


def test_sequence_is_atomic_and_typing_holds_the_next_step(outbox, store):
    ob, _ = outbox
    job = ob.sequence("1001").typing(seconds=2).text("answer").enqueue()
    assert len(job.ids) == 2
    st = store.step(A, "1001", "w", acquire=True, now_ms=T0)
    assert st.job_id == job.ids[0] and json.loads(st.job_json or "{}")["kind"] == "typing"
    st = store.step(
        A,
        "1001",
        "w",
        acquire=False,
        prev_id=st.job_id,
        now_ms=T0,
        outcome={"o": "sent", "kind": "typing", "hold_ms": 2000},
    )
    assert st.action == "wait" and st.until_ms == T0 + 2000
    assert store.step(A, "1001", "w", acquire=True, now_ms=T0 + 2000).job_id == job.ids[1]


def test_invalid_input_queues_nothing(outbox, store):
    ob, published = outbox
    from dmworker.errors import ValidationError

    with pytest.raises(ValidationError) as e:
        ob.send_many(
            [
                {"kind": "text", "recipient": "1101", "text": "ok"},
                {
                    "kind": "quick_replies",
                    "recipient": "1101",
                    "text": "q",
                    "replies": [{"content_type": "text", "title": "t" * 30, "payload": "p"}],
                },
            ]
        )
    assert "1.replies.0.title" in e.value.messages
    assert store.redis.exists(store.acct(A).lane("1101")) == 0
    assert published == []


def test_rate_limit_makes_lanes_wait_for_distinct_slots(outbox, store):
    ob, _ = outbox
    for r in ("1201", "1202", "1203", "1204"):
        ob.send_text(r, "x")
    got = [store.step(A, r, "w" + r, acquire=True, now_ms=T0) for r in ("1201", "1202", "1203", "1204")]
    # 10/s, burst 3 (decides with 2): two go now, the other two get distinct wake-up slots 100 ms apart
    assert [g.action for g in got] == ["job", "job", "wait", "wait"]
    assert got[2].until_ms == T0 + 100 and got[3].until_ms == T0 + 200


def test_an_outcome_in_flight_never_replaces_an_operators_hold(outbox, store):
    ob, _ = outbox
    j1, j2 = ob.send_text("1101", "x"), ob.send_text("1102", "y")
    assert store.step(A, "1101", "w1", acquire=True, now_ms=T0).job_id == j1.id
    assert store.step(A, "1102", "w2", acquire=True, now_ms=T0 + 200).job_id == j2.id
    # the operator disables the account while both sends are in flight
    k = store.acct(A)
    store.redis.hset(k.pause, mapping={"until": T0 + 10 * 365 * 86_400_000, "reason": "disabled"})
    throttled = {"o": "throttled", "reason": "throttled", "pause_base_ms": 1000, "pause_cap_ms": 60_000}
    refused = {
        "o": "reauth",
        "fp": token_fingerprint("tok-a"),
        "err": {"kind": "token_invalid", "message": "x"},
    }
    store.step(A, "1101", "w1", acquire=False, prev_id=j1.id, outcome=throttled, now_ms=T0 + 300)
    store.step(A, "1102", "w2", acquire=False, prev_id=j2.id, outcome=refused, now_ms=T0 + 301)
    assert store.redis.hget(k.pause, "reason") == "disabled"
    assert [ob.status(j).state for j in (j1.id, j2.id)] == ["waiting", "waiting"]
