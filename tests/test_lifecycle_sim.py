"""The lifecycle over simulated days and weeks (tests/sim.py): expiry, units, retention of every end
state, dead-letter retention and cap, windows forgotten, and one account's 30 days end to end."""

from __future__ import annotations

import heapq
import itertools
import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from conftest import ACCOUNT, TOKEN
from sim import DAY_MS, Sim, prefix_memory

from dmworker.admin import DeadLetters
from dmworker.errors import IdempotencyConflictError, ValidationError
from dmworker.jobs import JobStatus
from dmworker.settings import AccountConfig

HOUR_MS = 3_600_000
NEW_TOKEN = "IGAAtest-token-secret-value-0001-renewed"


@pytest.fixture
def sim(settings, rdb, sandbox):
    # events are kept by age on the Redis server's clock, which simulated time cannot move: off here
    # (tests/test_events.py covers them)
    s = settings.with_overrides(
        window_policy="trust", retention_s=7 * 86400, dlq_retention_s=30 * 86400, events_retention_s=0
    )
    sandbox.set_enforce_windows(False)
    sm = Sim(s, rdb, rdb.time()[0] * 1000)
    yield sm
    sm.close()


def test_ttl_expires_a_job_that_could_not_go_out_in_time(sim):
    # Given a lane held by a 10 s typing pause, then a text that must go within 5 s
    sim.outbox.sequence("8001").typing(seconds=10).enqueue()
    late = sim.outbox.send_text("8001", "only if quick", ttl=5)
    sim.advance(60_000)
    # Then it expired, and was never handed to a worker
    st = sim.outbox.status(late.id)
    assert st.state == "expired" and st.last_error and st.last_error.kind == "expired"
    assert late.id not in {jid for _, jid in sim.handed_out}
    assert int(sim.rdb.hget(sim.store.acct(ACCOUNT).stats, "reason:expired")) == 1


def test_expiry_counts_from_the_due_time_and_expires_at_is_absolute(sim):
    at = datetime.fromtimestamp(sim.now / 1000, tz=timezone.utc)
    f = sim.outbox.send_text("8002", "in 3 days", delay=3 * 86400, ttl=3600)
    st = sim.outbox.status(f.id)
    assert st.expires_at_ms == st.due_ms + 3_600_000 == sim.now + 3 * DAY_MS + 3_600_000
    default = sim.outbox.send_text("8002", "now")
    assert sim.outbox.status(default.id).expires_at_ms == sim.now + DAY_MS  # DMWORKER_MAX_AGE_S
    with pytest.raises(ValidationError) as e:
        sim.outbox.send_text("8002", "x", delay=7200, expires_at=at + timedelta(hours=1))
    assert "expires_at" in str(e.value)
    with pytest.raises(ValidationError):
        sim.outbox.send_text("8002", "x", ttl=60, expires_at=at + timedelta(hours=1))
    with pytest.raises(ValidationError):
        sim.outbox.send_text("8002", "x", ttl=0)


def test_at_in_the_past_means_now(sim):
    job = sim.outbox.send_text("8003", "x", at=datetime.now(timezone.utc) - timedelta(days=2))
    st = sim.outbox.status(job.id)
    assert st.state == "queued" and job.due_ms == st.due_ms == sim.now


def test_an_idempotency_key_with_another_request_is_a_conflict(sim):
    first = sim.outbox.send_text("8004", "order shipped", idempotency_key="o-17")
    again = sim.outbox.send_text("8004", "order shipped", idempotency_key="o-17")
    assert again.duplicate and again.id == first.id
    with pytest.raises(IdempotencyConflictError) as e:
        sim.outbox.send_text("8005", "something else", idempotency_key="o-17")
    assert e.value.job_ids == (first.id,)
    with pytest.raises(ValidationError) as batch:  # in a batch too, before anything is written
        sim.outbox.send_many(
            [
                {"kind": "text", "recipient": "8006", "text": "fine"},
                {"kind": "text", "recipient": "8005", "text": "other", "idempotency_key": "o-17"},
            ]
        )
    assert "1.idempotency_key" in batch.value.messages
    assert sim.rdb.hget(sim.store.keys.refused, "idempotency_conflict") == "2"


def test_a_key_stays_bound_until_its_whole_sequence_ended(sim):
    seq = sim.outbox.sequence("8007").typing(seconds=20).text("b").enqueue(key="greet")
    sim.advance(1_000)  # the typing indicator went out; "b" waits for the pause
    assert sim.outbox.status(seq.ids[0]).state == "sent"
    with pytest.raises(ValidationError):
        sim.outbox.send_text("8007", "again", key="greet")
    sim.advance(60_000)
    assert sim.outbox.status(seq.ids[1]).state == "sent"
    assert not sim.outbox.send_text("8007", "again", key="greet").duplicate  # released


def test_every_end_state_is_forgotten_after_its_retention(sim, sandbox):
    # Given one job in each end state, and a dead letter
    sim.outbox.send_text("8101", "sent")
    cancelled = sim.outbox.send_text("8102", "cancelled", delay=3600)
    sim.outbox.cancel(cancelled.id)
    sim.outbox.sequence("8103").typing(seconds=20).enqueue()
    sim.outbox.send_text("8103", "expired", ttl=1)
    sim.advance(60_000)
    sandbox.set_enforce_windows(True)  # "8104" never wrote: Meta refuses, a dead letter
    dead = sim.outbox.send_text("8104", "dead")
    sim.advance(1_000)
    sandbox.set_enforce_windows(False)
    k = sim.store.acct(ACCOUNT)
    states = Counter(json.loads(v)["state"] for v in sim.rdb.hvals(k.status))
    assert states == {"sent": 2, "cancelled": 1, "expired": 1, "failed": 1}
    # When the retention (7 days) passes: all but the dead letter are gone
    sim.advance(7 * DAY_MS + HOUR_MS)
    assert list(sim.rdb.hkeys(k.status)) == [dead.id]
    assert sim.rdb.zcard(k.done) == 0
    # When the dead-letter retention (30 days) passes: it is gone too
    sim.advance(23 * DAY_MS + HOUR_MS)
    assert sim.rdb.hlen(k.status) == 0 and sim.rdb.hlen(k.jobs) == 0 and sim.rdb.zcard(k.dlq) == 0


def test_dead_letters_are_capped_per_account_oldest_first(sim, sandbox):
    sandbox.set_enforce_windows(True)
    s = sim.settings.with_overrides(dlq_max=5)
    sim.store.settings = s
    sim.worker.settings = s
    ids = [sim.outbox.send_text(f"{8200 + i}", f"dead {i}").id for i in range(8)]
    sim.advance(10_000)
    k = sim.store.acct(ACCOUNT)
    kept = set(sim.rdb.zrange(k.dlq, 0, -1))
    assert len(kept) == 5 and kept == set(ids[3:])
    assert sim.rdb.hlen(k.status) == 5  # the dropped ones are forgotten
    assert sim.rdb.hget(k.stats, "dead_letters_dropped") == "3"


def test_windows_and_comments_are_forgotten_after_seven_days(sim):
    k = sim.store.acct(ACCOUNT)
    sim.store.inbound(ACCOUNT, "8301", "message:m1", sim.now, opens_window=True, cancels=True, now_ms=sim.now)
    sim.rdb.hset(k.windows, "8302", sim.now - 8 * DAY_MS)  # written by an older version (no time index)
    sim.rdb.zadd(sim.store.keys.housekeep, {ACCOUNT: sim.now})
    sim.advance(6 * DAY_MS)
    assert sim.rdb.hexists(k.windows, "8301") and not sim.rdb.hexists(k.windows, "8302")
    sim.advance(DAY_MS + HOUR_MS)
    assert not sim.rdb.exists(k.windows) and not sim.rdb.exists(k.window_times)


def test_the_usage_slowdown_fades_when_meta_stops_reporting_it(sim):
    k = sim.store.acct(ACCOUNT)
    sim.rdb.hset(k.limiter, mapping={"slow": "4", "slow_at": sim.now})
    # at 100/s the interval is 10 ms; x4 right after the report, x1 once it has faded (5 min)
    assert sim.store.limit(ACCOUNT, "text", now_ms=sim.now)[0]
    waits = [sim.store.limit(ACCOUNT, "text", now_ms=sim.now)[1] for _ in range(6)]
    later = sim.now + 301_000
    assert sim.store.limit(ACCOUNT, "text", now_ms=later)[0]
    waits_later = [sim.store.limit(ACCOUNT, "text", now_ms=later)[1] for _ in range(6)]
    assert max(w for w in waits if w) > 3 * max(w for w in waits_later if w)


@pytest.mark.slow
def test_thirty_days_of_one_account(sim, sandbox, rdb):
    """Follow-ups days ahead, replies, cancels, permanent failures and replays, a token Meta
    refuses on day 10 and its replacement: nothing lost, nothing sent twice or late, and memory
    back to its baseline once the retention has passed."""
    ob, store = sim.outbox, sim.store
    t0 = sim.now
    _base_keys, base_bytes = prefix_memory(rdb, sim.settings.key_prefix)
    accepted: dict[str, str] = {}  # job id -> what it is
    plan: list[tuple[int, int, object]] = []
    order = itertools.count()

    def at(t: int, action) -> None:
        heapq.heappush(plan, (t, next(order), action))

    def day_of(d: int) -> None:
        for i in range(8):
            user = f"7{d:02d}{i:02d}"
            store.inbound(ACCOUNT, user, f"message:m.{user}", sim.now, opens_window=True, cancels=True,
                          now_ms=sim.now)  # fmt: skip
            reply = ob.sequence(user).typing(seconds=1).text(f"reply {user}").enqueue()
            accepted.update({reply.ids[0]: "typing", reply.ids[1]: f"reply {user}"})
            nudge = ob.send_text(
                user, f"nudge {user}", delay=3 * 86400, key=f"n-{user}", cancel_on_reply=True
            )
            accepted[nudge.id] = f"nudge {user}"
            if i % 3 == 0:  # the user answers a day later: the nudge is cancelled by the reply
                at(
                    sim.now + DAY_MS,
                    lambda u=user: store.inbound(
                        ACCOUNT, u, f"message:r.{u}", sim.now, opens_window=True, cancels=True, now_ms=sim.now
                    ),
                )
            elif i % 3 == 1:  # the producer calls the nudge off two days later
                at(sim.now + 2 * DAY_MS, lambda u=user: ob.cancel(key=f"n-{u}"))

    def refused(d: int) -> None:  # Meta refuses these (no window on its side): dead letters
        sandbox.set_enforce_windows(True)
        bad = ob.send_text(f"6{d:02d}00", f"refused {d}")
        accepted[bad.id] = f"refused {d}"
        sim.advance(1_000)
        sandbox.set_enforce_windows(False)
        assert ob.status(bad.id).dead_lettered
        if d < 20:  # replayed three days later (and then Meta takes it)
            at(sim.now + 3 * DAY_MS, lambda: DeadLetters(store, sim._publish, sim.clock).replay(bad.id))

    for d in range(30):
        at(t0 + d * DAY_MS + 9 * HOUR_MS, lambda d=d: day_of(d))
        if d % 5 == 2:
            at(t0 + d * DAY_MS + 15 * HOUR_MS, lambda d=d: refused(d))
    # the token is refused on day 10 at noon, and replaced the next morning (day 11, 10:00)
    at(t0 + 10 * DAY_MS + 12 * HOUR_MS, lambda: sandbox.revoke_token(TOKEN))

    def new_token() -> None:
        sandbox.add_token(NEW_TOKEN, ACCOUNT)
        sim.use_settings(sim.settings.with_overrides(
            accounts={**sim.settings.accounts, ACCOUNT: AccountConfig(ACCOUNT, NEW_TOKEN)}))  # fmt: skip

    at(t0 + 11 * DAY_MS + 10 * HOUR_MS, new_token)
    held_seen = []
    at(
        t0 + 11 * DAY_MS + 9 * HOUR_MS + 1_800_000,
        lambda: held_seen.append(rdb.hget(store.acct(ACCOUNT).pause, "reason")),
    )

    statuses: dict[str, JobStatus] = {}  # the last status seen of every job (retention forgets them)
    peak_bytes = 0

    def snapshot() -> None:
        nonlocal peak_bytes
        ids = list(accepted)
        if not ids:
            return
        for jid, raw in zip(ids, rdb.hmget(store.acct(ACCOUNT).status, ids), strict=True):
            if raw:
                statuses[jid] = JobStatus.from_redis(jid, ACCOUNT, raw, None)
        peak_bytes = max(peak_bytes, prefix_memory(rdb, sim.settings.key_prefix)[1])

    while plan:
        t, _, action = heapq.heappop(plan)
        sim.advance(max(0, t - sim.now))
        snapshot()
        action()  # type: ignore[operator]
    for _ in range(8):  # the last nudges come due
        sim.advance(DAY_MS // 2)
        snapshot()

    # Every job ended, in the state its story says
    assert set(statuses) == set(accepted)
    assert all(s.state in ("sent", "failed", "cancelled", "expired") for s in statuses.values())
    assert held_seen == ["token_invalid"]  # the refused token held the account until replaced
    for j, what in accepted.items():
        st = statuses[j]
        if what.startswith("nudge"):
            user = what.split()[1]
            expect = {0: "cancelled", 1: "cancelled", 2: "sent"}[int(user[-2:]) % 3]
            assert st.state == expect, (what, st)
        elif what.startswith("refused"):
            d = int(what.split()[1])
            assert st.state == ("sent" if d < 20 else "failed"), (what, st)
        else:
            assert st.state == "sent", (what, st)
    # Nothing sent twice, nothing sent early or late, order kept per recipient
    texts = [t for m in sandbox.sends(ACCOUNT) if (t := (m["body"].get("message") or {}).get("text"))]
    dupes = [t for t, n in Counter(texts).items() if n > 1]
    assert dupes == []
    sent_texts = {accepted[j] for j, s in statuses.items() if s.state == "sent" and accepted[j] != "typing"}
    assert set(texts) == sent_texts
    handout = {}
    for t, jid in sim.handed_out:
        handout[jid] = t  # the last hand-out of a job is the one that went out
    for j, st in statuses.items():
        if st.state == "sent":
            assert st.due_ms <= handout[j] <= st.expires_at_ms, (accepted[j], st)
    for i in range(8):
        user = f"70{0:01d}{i:02d}"
        mine = [t for t in texts if t.endswith(user)]
        assert mine[0] == f"reply {user}"
    # When the dead-letter retention has passed as well
    sim.advance(31 * DAY_MS)
    k = store.acct(ACCOUNT)
    for key in (k.status, k.jobs, k.done, k.dlq, k.sched, k.cancel_on_reply, k.windows, k.window_times,
                k.followup_keys, k.ready, k.hold, k.index):  # fmt: skip
        assert not rdb.exists(key), key
    # Then only the account's fixed bookkeeping is left (counters, limiter, schedules)
    # (webhook de-duplication keys expire on Redis' own clock, 48 h after they were written, and the
    # per-minute send counts 2 h after the last send: the simulated clock cannot move them, so they
    # are checked for their TTL and left out)
    left = {
        k: (int(rdb.memory_usage(k, samples=0) or 0), rdb.ttl(k))
        for k in rdb.scan_iter(match=f"{sim.settings.key_prefix}:*")
    }
    expiring = {k: v for k, v in left.items() if v[1] > 0}
    assert all(
        (":evt:" in k and ttl <= 48 * 3600) or (k.endswith(":hist") and ttl <= 2 * 3600)
        for k, (_, ttl) in expiring.items()
    ), expiring
    end_bytes = sum(b for b, ttl in left.values() if ttl < 0)
    end_keys = sum(1 for _, ttl in left.values() if ttl < 0)
    assert end_bytes - base_bytes < 0.02 * (peak_bytes - base_bytes), (
        base_bytes,
        peak_bytes,
        end_bytes,
        left,
    )
    assert end_keys <= 8, sorted(rdb.scan_iter(match=f"{sim.settings.key_prefix}:*"))
