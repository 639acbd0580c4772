"""Each failure class end to end (in-process lane worker, real Redis, real sandbox over HTTP)."""

from __future__ import annotations

import time

from conftest import ACCOUNT, TOKEN

from dmworker.admin import DeadLetters, account_states
from dmworker.dispatcher import check_reauth
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import AccountConfig
from dmworker.worker import LaneWorker


def _drive(worker: LaneWorker, recipient: str, until, timeout_s: float = 10.0) -> list[str]:
    """Visit the lane like the dispatcher would (again after each wait) until ``until()``."""
    ended = []
    deadline = time.monotonic() + timeout_s
    while not until() and time.monotonic() < deadline:
        run = worker.run_lane(ACCOUNT, recipient)
        ended.append(run.ended)
        if run.ended == "wait" and run.wait_until_ms:
            time.sleep(max(0.0, min(1.0, run.wait_until_ms / 1000 - time.time())) + 0.01)
    return ended


def _setup(settings, rdb, **over):
    s = settings.with_overrides(window_policy="trust", **over)
    store = LaneStore(s, rdb)
    return s, Outbox(settings=s, client=rdb, publish=lambda a, r: None), LaneWorker(s, store)


def test_temporary_failures_retry_with_backoff_and_keep_the_lane_order(settings, sandbox, rdb):
    s, ob, w = _setup(settings, rdb)
    sandbox.open_window(ACCOUNT, "3001")
    sandbox.set_faults(next_n=2, kinds=["5xx", "transient"])
    j1, j2 = ob.send_text("3001", "first"), ob.send_text("3001", "second")
    _drive(w, "3001", lambda: ob.status(j2.id).state == "sent")
    st = ob.status(j1.id)
    assert st.state == "sent" and st.attempts == 3 and st.last_error and st.last_error.code in (1, 2)
    assert [x["body"]["message"]["text"] for x in sandbox.sends(ACCOUNT)] == ["first", "second"]
    assert rdb.hget(f"{s.key_prefix}:{{{ACCOUNT}}}:stats", "retried") == "2"


def test_throttled_waits_without_burning_an_attempt(settings, sandbox, rdb):
    _s, ob, w = _setup(settings, rdb)
    sandbox.open_window(ACCOUNT, "3002")
    sandbox.throttle(ACCOUNT, 0.6, code=613, retry_after_s=0.7)
    j = ob.send_text("3002", "hi")
    first = w.run_lane(ACCOUNT, "3002")
    assert first.outcomes == ["throttled"] and first.ended == "wait"
    state = next(a for a in account_states(w.store) if a.account == ACCOUNT)
    assert state.pause_reason == "throttled" and state.paused_until_ms is not None
    assert ob.status(j.id).attempts == 0 and ob.status(j.id).last_error.code == 613  # type: ignore[union-attr]
    _drive(w, "3002", lambda: ob.status(j.id).state == "sent")
    assert ob.status(j.id).attempts == 1


def test_permanent_failure_fails_at_once_and_the_next_job_proceeds(settings, sandbox, rdb):
    _s, ob, w = _setup(settings, rdb)
    j1 = ob.send_text("3003", "no window yet")  # Meta refuses: outside the window (code 10 / 2534022)
    w.run_lane(ACCOUNT, "3003")
    st = ob.status(j1.id)
    assert st.state == "failed" and st.attempts == 1 and st.dead_lettered
    assert (st.last_error.code, st.last_error.subcode, st.last_error.kind) == (10, 2534022, "outside_window")  # type: ignore[union-attr]
    assert [d.id for d in DeadLetters(w.store).list(ACCOUNT)] == [j1.id]
    sandbox.open_window(ACCOUNT, "3003")
    j2 = ob.send_text("3003", "now it works")
    w.run_lane(ACCOUNT, "3003")
    assert ob.status(j2.id).state == "sent"


def test_a_refused_token_holds_the_account_without_dead_lettering_anything(settings, sandbox, rdb):
    s, ob, w = _setup(settings, rdb)
    sandbox.open_windows(ACCOUNT, ["3004", "3005"])
    sandbox.revoke_token(TOKEN)
    j1, j2 = ob.send_text("3004", "a"), ob.send_text("3004", "b")
    j3 = ob.send_text("3005", "c")
    run = w.run_lane(ACCOUNT, "3004")
    assert run.outcomes == ["reauth"] and run.ended == "wait"
    s1 = ob.status(j1.id)
    assert s1.state == "waiting" and s1.attempts == 0 and not s1.dead_lettered
    assert s1.last_error and s1.last_error.code == 190
    assert w.run_lane(ACCOUNT, "3005").outcomes == []  # the whole account is held
    assert ob.status(j2.id).state == "queued" and ob.status(j3.id).state == "queued"
    assert DeadLetters(w.store).count(ACCOUNT) == 0
    state = next(a for a in account_states(w.store) if a.account == ACCOUNT)
    assert state.state == "reauth_required" and state.pause_reason == "token_invalid"
    # the lanes sleep until resumed (no polling), and a process with the old token never resumes it
    k = w.store.acct(ACCOUNT)
    assert rdb.zscore(k.ready, "3004") > time.time() * 1000 + 365 * 86_400_000
    assert check_reauth(w.store, w.clients.token) == []
    # the operator replaces the token; a process with the new token resumes it and wakes the lanes
    sandbox.add_token("IGAAnew-token-0001", ACCOUNT)
    s2 = s.with_overrides(accounts={**s.accounts, ACCOUNT: AccountConfig(ACCOUNT, "IGAAnew-token-0001")})
    w2 = LaneWorker(s2, LaneStore(s2, rdb))
    assert check_reauth(w2.store, w2.clients.token) == [ACCOUNT]
    assert rdb.zscore(k.ready, "3004") <= time.time() * 1000 + 1000
    assert not rdb.exists(k.pause)
    w2.run_lane(ACCOUNT, "3004")
    w2.run_lane(ACCOUNT, "3005")
    assert [ob.status(j.id).state for j in (j1, j2, j3)] == ["sent"] * 3
    texts = [m["body"]["message"]["text"] for m in sandbox.sends(ACCOUNT)]
    assert texts == ["a", "b", "c"]  # held in order, released in order
    w2.clients.close()


def test_a_read_timeout_after_the_send_is_outcome_unknown_and_retried(settings, sandbox, rdb):
    _s, ob, w = _setup(settings, rdb, http_read_timeout_s=0.5)
    sandbox.open_window(ACCOUNT, "3006")
    sandbox.set_slow(900)
    j = ob.send_text("3006", "maybe twice")
    run = w.run_lane(ACCOUNT, "3006")
    assert run.outcomes == ["retry"]
    st = ob.status(j.id)
    assert st.state == "waiting" and st.last_error and st.last_error.kind == "outcome_unknown"
    assert [e[2] for e in st.timeline if e[1] == "retry"] == ["timeout"]  # the timeline says why
    # counted as a timeout of the account (several in a row pause it: tests/test_fairness.py)
    assert w.store.redis.hget(w.store.acct(ACCOUNT).limiter, "timeouts") == "1"
    sandbox.set_slow(0)
    _drive(w, "3006", lambda: ob.status(j.id).state == "sent")
    # Meta got it both times: the documented at-least-once case
    assert len(sandbox.sends(ACCOUNT)) == 2 and ob.status(j.id).attempts == 2
