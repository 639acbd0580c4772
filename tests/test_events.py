"""Events: written by the same script call as the change, read through consumer groups; seen
receipts; a job's timeline; finding a job by Meta's message id."""

from __future__ import annotations

import pytest
from conftest import ACCOUNT, ACCOUNT2, TOKEN

from dmworker.events import EventConsumer, read
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import parse_rate
from dmworker.worker import LaneWorker


@pytest.fixture
def env(settings, rdb, sandbox):
    fast = {**settings.rates, "text": parse_rate("100000/s")}  # one lane visit sends them all
    s = settings.with_overrides(window_policy="trust", rates=fast)
    store = LaneStore(s, rdb)
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None)
    w = LaneWorker(s, store)
    yield s, store, ob, w
    w.clients.close()


def _types(events) -> list[str]:
    return [e.type for e in events]


def test_every_end_state_is_an_event_with_its_details(env, sandbox):
    _s, store, ob, w = env
    sandbox.open_window(ACCOUNT, "4001")
    sent = ob.send_text("4001", "hello")
    refused = ob.send_text("4002", "no window")  # Meta refuses: failed
    cancelled = ob.send_text("4001", "later", delay=600, key="k")
    ob.cancel(key="k")
    w.run_lane(ACCOUNT, "4001")
    w.run_lane(ACCOUNT, "4002")
    events = {e.data["job_id"]: e for e in read(store, ACCOUNT)}
    e = events[sent.id].data
    assert e["type"] == "job.sent" and e["state"] == "sent" and e["kind"] == "text"
    assert e["message_id"] == ob.status(sent.id).message_id and e["attempts"] == 1 and e["error"] is None
    assert e["account"] == ACCOUNT and e["recipient"] == "4001" and e["id"].startswith(f"{ACCOUNT}/")
    f = events[refused.id].data
    assert f["type"] == "job.failed" and f["error"]["kind"] == "outside_window" and f["error"]["code"] == 10
    c = events[cancelled.id].data
    assert c["type"] == "job.cancelled" and c["why"] == "cancelled"
    assert TOKEN not in str([x.data for x in events.values()])


def test_a_refused_token_and_its_replacement_are_account_events(env, sandbox):
    _s, store, ob, w = env
    sandbox.open_window(ACCOUNT, "4101")
    sandbox.revoke_token(TOKEN)
    ob.send_text("4101", "x")
    w.run_lane(ACCOUNT, "4101")
    store.resume(ACCOUNT, mode="token", token="IGAAa-new-token")
    types = _types(read(store, ACCOUNT))
    assert types == ["account.reauth_required", "account.resumed"]


def test_a_group_sees_each_event_once_and_an_unacknowledged_one_is_claimed(env, sandbox):
    _s, store, ob, w = env
    sandbox.open_windows(ACCOUNT, ["4201", "4202"])
    sandbox.open_window(ACCOUNT2, "4203")
    jobs = [ob.send_text("4201", "a"), ob.send_text("4202", "b"), ob.send_text("4203", "c", account=ACCOUNT2)]
    for acct, r in ((ACCOUNT, "4201"), (ACCOUNT, "4202"), (ACCOUNT2, "4203")):
        w.run_lane(acct, r)
    one = EventConsumer("hooks", "one", store=store, claim_idle_ms=100)
    two = EventConsumer("hooks", "two", store=store, claim_idle_ms=100)
    other = EventConsumer("analytics", "x", store=store)
    got = one.poll()
    assert sorted(e.data["job_id"] for e in got) == sorted(j.id for j in jobs)
    assert two.poll() == []  # the group's events went to "one"
    assert len(other.poll()) == 3  # every group sees every event
    one.ack(got[:2])
    import time

    time.sleep(0.15)  # the claim idle time (real: a pending entry's idle time is Redis' own clock)
    claimed = two.claim()
    assert [e.id for e in claimed] == [got[2].id]
    assert two.ack(claimed) == 1 and two.claim() == []


def test_seen_marks_every_message_up_to_the_one_seen(env, sandbox):
    _s, store, ob, w = env
    sandbox.open_window(ACCOUNT, "4301")
    jobs = [ob.send_text("4301", f"m{i}") for i in range(10)]
    w.run_lane(ACCOUNT, "4301")
    mids = [ob.status(j.id).message_id for j in jobs]
    assert all(mids)
    seen = store.seen(ACCOUNT, "4301", message_id=mids[4])
    assert seen == [j.id for j in jobs[:5]]
    assert [ob.status(j.id).state for j in jobs] == ["seen"] * 5 + ["sent"] * 5
    assert _types(read(store, ACCOUNT)).count("job.seen") == 5
    assert store.seen(ACCOUNT, "4301", message_id=mids[2]) == []  # already seen: nothing new
    assert store.seen(ACCOUNT, "4301", message_id="m_not_ours") == []


def test_the_timeline_and_finding_a_job_by_message_id(env, sandbox):
    _s, store, ob, w = env
    sandbox.open_window(ACCOUNT, "4401")
    sandbox.set_faults(ACCOUNT, next_n=1, kinds=["5xx"])
    job = ob.send_text("4401", "hello")
    w.run_lane(ACCOUNT, "4401")
    w.store.redis.hdel(store.acct(ACCOUNT).hold, "4401")  # skip the backoff
    w.run_lane(ACCOUNT, "4401")
    st = ob.status(job.id)
    assert st.state == "sent"
    assert store.find(ACCOUNT, st.message_id) == job.id
    assert store.observe(ACCOUNT, st.message_id, "echo") == job.id
    what = [entry[1] for entry in ob.timeline(job.id)]
    assert what == ["accepted", "attempt", "retry", "waiting", "attempt", "sent", "echo"]
    assert ob.timeline(job.id)[2][2] == "1"  # the retry names Meta's error code (1: unknown error)
    assert ob.timeline(job.id)[3][2] == "hold"  # it waited out the backoff
    assert ob.find(message_id=st.message_id).id == job.id


def test_a_refreshed_token_is_an_account_event(settings, rdb, sandbox):
    import time

    from dmworker.accounts import Accounts
    from dmworker.crypto import new_key
    from dmworker.refresh import Refresher
    from dmworker.runtime import live_settings

    s = live_settings(settings.with_overrides(secret_keys=(new_key(),), accounts_refresh_s=0.01), rdb)
    acct, tok = "17841400000000771", "IGAAevents-refresh-secret-0771"
    t0 = time.time()
    sandbox.add_token(tok, acct, issued_s=t0, expires_s=t0 + 60 * 86400)
    Accounts(s, rdb).add(acct, tok, token_expires_at=t0 + 60 * 86400, token_issued_at=t0)
    now = t0 + 54 * 86400  # inside the 7-day refresh horizon
    sandbox.set_clock(now - time.time())
    r = Refresher(s, rdb)
    try:
        r.run_once(now_s=now)
    finally:
        r.close()
    events = read(LaneStore(s, rdb), acct)
    assert [e.type for e in events] == ["account.token_refreshed"]
    assert events[0].data["token_expires_at_ms"] > now * 1000 and tok not in str(events[0].data)


def test_the_http_api_finds_a_job_by_message_id_and_shows_its_timeline(env, sandbox, rdb):
    from test_http_api import TOKENS, make_api

    s, _store, ob, w = env
    sandbox.open_window(ACCOUNT, "4501")
    job = ob.send_text("4501", "hi")
    w.run_lane(ACCOUNT, "4501")
    mid = ob.status(job.id).message_id
    api = make_api(s.with_overrides(api_tokens=TOKENS), rdb, [])
    found = api.get(f"/v1/jobs?message_id={mid}")
    assert found.status_code == 200 and found.json["id"] == job.id
    assert [t[1] for t in found.json["timeline"]] == ["accepted", "attempt", "sent"]
    assert api.get("/v1/jobs?message_id=m_unknown").status_code == 404
    assert api.get("/v1/jobs").status_code == 422


def test_the_webhook_records_seen_receipts_echoes_and_reactions_on_the_jobs(env, sandbox, rdb):
    from test_webhook import APP_SECRET, envelope, event, post, reaction

    from dmworker.web import create_app

    s, _store, ob, w = env
    sandbox.open_window(ACCOUNT, "4601")
    jobs = [ob.send_text("4601", f"n{i}") for i in range(4)]
    w.run_lane(ACCOUNT, "4601")
    mids = [ob.status(j.id).message_id for j in jobs]
    client = create_app(s.with_overrides(app_secret=APP_SECRET), redis_client=rdb, publish=lambda a, r: None)
    c = client.test_client()
    # Instagram's messaging_seen names the last message seen: the first two become seen
    assert post(c, envelope(event("4601", read={"mid": mids[1]}))).status_code == 200
    assert [ob.status(j.id).state for j in jobs] == ["seen", "seen", "sent", "sent"]
    # an echo of our third message, and the user's reaction to it, land on its timeline
    echo = {"sender": {"id": ACCOUNT}, "recipient": {"id": "4601"}, "timestamp": 1,
            "message": {"mid": mids[2], "is_echo": True, "text": "n2"}}  # fmt: skip
    post(c, envelope(echo, reaction("4601", mids[2])))
    what = [t[1] for t in ob.timeline(jobs[2].id)]
    assert what[-2:] == ["echo", "reaction"] and ob.status(jobs[2].id).state == "sent"
    # a Messenger-style watermark (ms) marks everything sent up to then
    post(c, envelope(event("4601", read={"watermark": 9_999_999_999_999})))
    assert [ob.status(j.id).state for j in jobs] == ["seen"] * 4


def test_callbacks_must_not_outlive_the_events_they_deliver():
    from dmworker.settings import ConfigError, Settings

    env = {"DMWORKER_CALLBACK_URL": "https://hooks.example.com/dm", "DMWORKER_CALLBACK_SECRET": "s3cret"}
    assert Settings.from_env(env).callback_max_age_s == 86_400
    with pytest.raises(ConfigError) as e:
        Settings.from_env({**env, "DMWORKER_EVENTS_RETENTION_S": "3600"})
    assert "DMWORKER_CALLBACK_MAX_AGE_S" in str(e.value) and "s3cret" not in str(e.value)


def test_a_throttle_pause_and_its_successful_probe_are_account_events(env):
    _s, store, ob, _w = env
    j1, j2 = ob.send_text("4701", "a"), ob.send_text("4702", "b")
    t = store._redis_now_ms()
    assert store.step(ACCOUNT, "4701", "w1", acquire=True, now_ms=t).job_id == j1.id
    throttled = {"o": "throttled", "reason": "throttled", "pause_ms": 1000}
    store.step(ACCOUNT, "4701", "w1", acquire=False, prev_id=j1.id, outcome=throttled, now_ms=t + 1)
    probe = store.step(ACCOUNT, "4702", "w2", acquire=True, now_ms=t + 1500)
    assert probe.job_id == j2.id
    store.step(
        ACCOUNT,
        "4702",
        "w2",
        acquire=False,
        prev_id=j2.id,
        outcome={"o": "sent", "mid": "m1"},
        now_ms=t + 1600,
    )
    events = [e for e in read(store, ACCOUNT) if e.type.startswith("account.")]
    assert [(e.type, e.data["reason"]) for e in events] == [
        ("account.paused", "throttled"),
        ("account.resumed", "throttled"),
    ]
    assert events[0].data["until_ms"] == t + 1 + 1000


def test_a_job_that_expires_when_its_lane_is_taken_marks_the_account_for_consumers(env, rdb):
    s, store, ob, _w = env
    job = ob.send_text("4501", "too late", ttl=60)
    # a consumer has read everything: the account is no longer marked as having new events
    rdb.zrem(store.keys.events_active, ACCOUNT)
    # When a worker takes the lane two minutes later (no outcome to record: an acquire step)
    later = int(ob.status(job.id).created_ms) + 120_000
    w = LaneWorker(s, store, clock=lambda: later)
    run = w.run_lane(ACCOUNT, "4501")
    w.clients.close()
    # Then the job expired, its event is written and the account is marked for consumers
    assert run.ended == "empty" and ob.status(job.id).state == "expired"
    assert "job.expired" in _types(read(store, ACCOUNT))
    assert rdb.zscore(store.keys.events_active, ACCOUNT) is not None
