"""A job's life over days: each failure the lifecycle work fixed, reproduced with an injected clock on a
real Redis (and the Graph API sandbox over real HTTP where a send is made).

These tests use only calls that existed before the lifecycle module, so each can be run against
the earlier code to watch it fail.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from conftest import ACCOUNT, TOKEN

from dmworker.errors import ValidationError
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.worker import LaneWorker

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def _states(ob: Outbox, ids) -> list[str]:
    return [ob.status(i).state for i in ids]


def _send_one(store: LaneStore, worker: LaneWorker, lane: str, now_ms: int, token: str = TOKEN):
    """Take the lane's next job at ``now_ms``, send it for real, record the outcome."""
    step = store.step(ACCOUNT, lane, "w", acquire=True, token=token, now_ms=now_ms)
    assert step.action == "job", step
    outcome = worker.execute(ACCOUNT, lane, step)
    store.step(
        ACCOUNT, lane, "w", acquire=False, prev_id=step.job_id, outcome=outcome, token=token, now_ms=now_ms
    )
    return step.job_id, outcome


def test_a_followup_two_days_ahead_is_sent_when_due_not_expired(outbox, store, worker, sandbox):
    # Given a follow-up two days ahead (the default maximum age is one day)
    sandbox.open_window(ACCOUNT, "9101")
    now = store._redis_now_ms()
    job = outbox.send_text("9101", "still interested?", delay=2 * 86400)
    # When it comes due, two days later, and a worker takes it
    n, _ = store.promote(ACCOUNT, [(job.id, "9101")], now_ms=now + 2 * DAY_MS + 1000)
    assert n == 1
    _jid, outcome = _send_one(store, worker, "9101", now + 2 * DAY_MS + 2000)
    # Then it is sent: the age counts from when it became due
    assert outcome["o"] == "sent", outcome
    assert outbox.status(job.id).state == "sent"


def test_cancelling_a_sequence_by_key_cancels_every_step(outbox):
    seq = outbox.sequence("9102").text("a").text("b").text("c").enqueue(delay=3, key="k")
    assert outbox.cancel(key="k") is True
    assert _states(outbox, seq.ids) == ["cancelled"] * 3


def test_cancelling_a_sequence_by_its_id_cancels_every_step(outbox):
    seq = outbox.sequence("9103").text("a").text("b").enqueue()
    assert outbox.cancel(seq.id) is True
    assert _states(outbox, seq.ids) == ["cancelled", "cancelled"]


def test_replace_cancels_the_whole_earlier_sequence(outbox):
    first = outbox.sequence("9104").text("a").text("b").enqueue(delay=60, key="nudge")
    second = outbox.send_text("9104", "new", delay=60, key="nudge", replace=True)
    assert _states(outbox, first.ids) == ["cancelled", "cancelled"]
    assert outbox.status(second.id).state == "scheduled"


def test_a_late_webhook_event_does_not_cancel_a_newer_followup(outbox, store):
    # Given a cancel-on-reply follow-up created now
    now = store._redis_now_ms()
    follow = outbox.send_text("9105", "nudge", delay=3600, cancel_on_reply=True)
    # When Meta delivers (late) a message the user wrote a minute BEFORE it was created
    new, cancelled = store.inbound(
        ACCOUNT, "9105", "message:mid.late", now - 60_000, opens_window=True, cancels=True
    )
    # Then the follow-up stands
    assert new and cancelled == []
    assert outbox.status(follow.id).state == "scheduled"
    # And a reply written after it was created cancels it
    _new, cancelled = store.inbound(
        ACCOUNT, "9105", "message:mid.after", now + 5_000, opens_window=True, cancels=True
    )
    assert cancelled == [follow.id] and outbox.status(follow.id).state == "cancelled"


def test_an_event_older_than_the_dedupe_window_cancels_nothing(outbox, store):
    now = store._redis_now_ms()
    follow = outbox.send_text("9106", "nudge", delay=3600, cancel_on_reply=True)
    new, cancelled = store.inbound(
        ACCOUNT, "9106", "message:mid.replayed", now + 1000, opens_window=True, cancels=True,
        dedupe_ttl_s=60, now_ms=now + 3 * DAY_MS,
    )  # fmt: skip
    assert not new and cancelled == []
    assert outbox.status(follow.id).state == "scheduled"


def test_cancelled_followups_are_forgotten_after_the_retention(lsettings, rdb):
    # Given a retention of 3 s and 3,000 follow-ups scheduled then cancelled
    s = lsettings.with_overrides(retention_s=3, events_retention_s=0)  # events: their own retention
    store, ob = LaneStore(s, rdb), Outbox(settings=s, client=rdb, publish=lambda a, r: None)
    k = store.acct(ACCOUNT)
    ob.send_text("9107", "warm-up")  # the account's bookkeeping keys exist before we measure
    before = _memory(rdb, s.key_prefix)
    jobs = ob.send_many(
        [{"kind": "text", "recipient": f"{9200000 + i}", "text": f"n{i}", "delay": 3600} for i in range(3000)]
    )
    peak = _memory(rdb, s.key_prefix)
    for j in jobs:
        assert ob.cancel(j.id) is True
    # When 90 s pass and the account is trimmed
    now = store._redis_now_ms()
    for _ in range(5):
        store.trim(ACCOUNT, now_ms=now + 90_000)
    # Then their records are gone and the memory they took is back
    assert rdb.hlen(k.status) <= 1 and rdb.hlen(k.jobs) <= 1
    after = _memory(rdb, s.key_prefix)
    assert after - before < 0.05 * (peak - before), (before, peak, after)


def _memory(rdb: redis.Redis, prefix: str) -> int:
    return sum(
        int(rdb.memory_usage(k, samples=0) or 0) for k in rdb.scan_iter(match=f"{prefix}:*", count=1000)
    )


def test_a_refused_token_dead_letters_nothing_and_the_old_token_never_resumes(outbox, store, worker, sandbox):
    # Given two sends in flight on two lanes when Meta starts refusing the token
    sandbox.open_windows(ACCOUNT, ["9108", "9109", "9110"])
    a, b, c = outbox.send_text("9108", "a"), outbox.send_text("9109", "b"), outbox.send_text("9110", "c")
    now = store._redis_now_ms()
    s1 = store.step(ACCOUNT, "9108", "w1", acquire=True, token=TOKEN, now_ms=now)
    s2 = store.step(ACCOUNT, "9109", "w2", acquire=True, token=TOKEN, now_ms=now)
    sandbox.revoke_token(TOKEN)
    o1, o2 = worker.execute(ACCOUNT, "9108", s1), worker.execute(ACCOUNT, "9109", s2)
    store.step(ACCOUNT, "9108", "w1", acquire=False, prev_id=a.id, outcome=o1, token=TOKEN, now_ms=now + 1)
    store.step(ACCOUNT, "9109", "w2", acquire=False, prev_id=b.id, outcome=o2, token=TOKEN, now_ms=now + 2)
    # Then nothing is dead-lettered: both wait
    assert store.redis.zcard(store.acct(ACCOUNT).dlq) == 0
    assert _states(outbox, [a.id, b.id, c.id]) == ["waiting", "waiting", "queued"]
    # And neither a process with the old token nor one without a token lifts the hold
    for token in (TOKEN, ""):
        got = store.step(ACCOUNT, "9110", "w3", acquire=True, token=token, now_ms=now + 10_000)
        assert got.action == "wait", (token, got)
    assert store.redis.zcard(store.acct(ACCOUNT).dlq) == 0


def test_throttles_at_the_same_moment_set_one_pause_and_only_a_failed_probe_escalates(outbox, store):
    # Given seven sends in flight on seven lanes (throttle pause 60 s, doubling up to 3,600 s)
    lanes = [f"{9300 + i}" for i in range(7)]
    jobs = [outbox.send_text(r, "x") for r in lanes]
    t = store._redis_now_ms()
    steps = [store.step(ACCOUNT, r, f"w{r}", acquire=True, now_ms=t + 20 * i) for i, r in enumerate(lanes)]
    assert all(s.action == "job" for s in steps)
    throttled = {"o": "throttled", "reason": "throttled", "pause_base_ms": 60_000, "pause_cap_ms": 3_600_000}
    # When all seven come back throttled
    for i, (r, j) in enumerate(zip(lanes, jobs, strict=True)):
        store.step(ACCOUNT, r, f"w{r}", acquire=False, prev_id=j.id, outcome=throttled, now_ms=t + 200 + i)
    # Then the account is paused once, for the base pause
    until = int(store.redis.hget(store.acct(ACCOUNT).pause, "until"))
    assert until - (t + 200) <= 60_000 + 10, until - t
    # And when the probe after the pause is throttled too, the pause doubles
    probe = store.step(ACCOUNT, lanes[0], "p", acquire=True, now_ms=until + 1)
    assert probe.action == "job"
    store.step(
        ACCOUNT, lanes[0], "p", acquire=False, prev_id=probe.job_id, outcome=throttled, now_ms=until + 2
    )
    again = int(store.redis.hget(store.acct(ACCOUNT).pause, "until"))
    assert again - (until + 2) == 120_000


def test_a_batch_refused_in_a_later_chunk_queues_nothing(outbox, store):
    # Given a pending follow-up with key "taken"
    outbox.send_text("9400", "x", delay=3600, key="taken")
    before = store.redis.hlen(store.acct(ACCOUNT).status)
    # When a batch of 600 reuses that key in item 550 (past the first chunk of 500)
    items = [{"kind": "text", "recipient": f"{9500 + i}", "text": "hi"} for i in range(600)]
    items[550] = {**items[550], "delay": 60, "key": "taken"}
    with pytest.raises(ValidationError) as e:
        outbox.send_many(items)
    # Then it names the item and nothing was queued
    assert "550.key" in e.value.messages
    assert store.redis.hlen(store.acct(ACCOUNT).status) == before


def test_an_outbox_publishes_with_its_own_settings(lsettings, rdb):
    # Given an Outbox with its own Redis/prefix (no publish override: the real Celery publish)
    s = lsettings.with_overrides(broker_url=None)
    ob = Outbox(settings=s, client=rdb)
    # When it queues a job for a new lane
    ob.send_text("9601", "hi")
    # Then the lane message is in ITS broker's queue (the Redis of its settings, its prefix)
    queue = f"{s.key_prefix}:celery:{s.key_prefix}.lanes"
    assert rdb.llen(queue) == 1
    body = json.loads(rdb.lrange(queue, 0, 0)[0])
    assert body["headers"]["task"] == "dmworker.process_lane"


def test_an_outcome_is_recorded_through_a_redis_stall_and_never_sent_twice(lsettings, redis_url, sandbox):
    # Given a worker whose Redis client gives up after 0.5 s, and a send that takes 0.6 s
    rdb = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=0.5)
    admin = redis.Redis.from_url(redis_url)
    store = LaneStore(lsettings, rdb)
    ob = Outbox(settings=lsettings, client=rdb, publish=lambda a, r: None)
    w = LaneWorker(lsettings, store)
    sandbox.open_window(ACCOUNT, "9700")
    sandbox.set_latency(600)
    job = ob.send_text("9700", "once")
    # When Redis stalls for 1.5 s while the message is on its way to Meta
    pauser = threading.Timer(0.2, lambda: admin.execute_command("CLIENT", "PAUSE", 1500, "ALL"))
    pauser.start()
    try:
        run = w.run_lane(ACCOUNT, "9700")
    finally:
        pauser.join()
        w.clients.close()
    # Then the outcome was recorded (after retries) and the message went out once
    assert run.sent == 1
    assert ob.status(job.id).state == "sent"
    assert len(sandbox.sends(ACCOUNT)) == 1
    time.sleep(0)  # nothing else runs: no second visit could send it again
