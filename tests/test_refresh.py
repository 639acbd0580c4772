"""Token refresh with injected time against the sandbox's refresh endpoint: 60-day lifetimes run in
seconds (the sandbox's token clock moves with the simulated one)."""

from __future__ import annotations

import time

import pytest
from test_accounts import assert_no_token_in_redis

from dmworker.accounts import Accounts
from dmworker.crypto import new_key
from dmworker.refresh import Refresher
from dmworker.runtime import live_settings
from dmworker.settings import Settings, token_fingerprint

DAY = 86_400.0
A, B, C = "17841400000000701", "17841400000000702", "17841400000000703"
TOK_A, TOK_B, TOK_C = "IGAArefresh-secret-a-0701", "IGAArefresh-secret-b-0702", "IGAArefresh-secret-c-0703"


@pytest.fixture
def rsettings(settings: Settings, rdb) -> Settings:
    return live_settings(settings.with_overrides(secret_keys=(new_key(),), accounts_refresh_s=0.01), rdb)


@pytest.fixture
def accounts(rsettings, rdb) -> Accounts:
    return Accounts(rsettings, rdb)


@pytest.fixture
def refresher(rsettings, rdb):
    r = Refresher(rsettings, rdb)
    yield r
    r.close()


def _at(sandbox, now_s: float) -> None:
    """Move the sandbox's token clock to ``now_s`` (simulated epoch seconds)."""
    sandbox.set_clock(now_s - time.time())


def test_a_token_is_refreshed_once_inside_the_horizon_and_again_60_days_later(
    accounts, refresher, sandbox, rdb, rsettings, key_prefix
):
    # Given a token issued on day 0 that expires on day 60, refreshed 7 days ahead (the default)
    t0 = time.time()
    sandbox.add_token(TOK_A, A, issued_s=t0, expires_s=t0 + 60 * DAY)
    accounts.add(A, TOK_A, token_expires_at=t0 + 60 * DAY, token_issued_at=t0)
    assert accounts.get(A).refresh["next_s"] == pytest.approx(t0 + 53 * DAY)
    # When the scheduler looks every 6 simulated hours for 120 days
    tokens_seen = set()
    for step in range(0, 120 * 4):
        now = t0 + step * 6 * 3600
        _at(sandbox, now)
        refresher.run_once(now_s=now)
        rec = accounts.registry.get(A)
        assert rec is not None and rec.expires_s is not None and rec.expires_s > now, f"expired at {now}"
        tokens_seen.add(rec.fp)
    # Then Meta saw exactly two refresh calls (day 53 and day 106), both accepted
    calls = sandbox.refreshes(A)
    assert [c["status"] for c in calls] == [200, 200]
    assert len(tokens_seen) == 3
    info = accounts.get(A)
    assert info.refresh["state"] == "ok" and info.refresh["failures"] == 0
    assert info.token_expires_at == pytest.approx(info.refresh["last_s"] + 60 * DAY)
    # And the live view carries the newest token, which the sandbox accepts; none is stored in clear
    live = rsettings.accounts
    live.refresh()
    assert live[A].fingerprint == info.token_fingerprint
    assert_no_token_in_redis(rdb, key_prefix, [TOK_A, live[A].access_token])


def test_a_young_token_waits_until_it_is_24_hours_old(accounts, refresher, sandbox):
    # Given a token issued now that expires in 3 days (inside the 7-day horizon already)
    t0 = time.time()
    sandbox.add_token(TOK_B, B, issued_s=t0, expires_s=t0 + 3 * DAY)
    accounts.add(B, TOK_B, token_expires_at=t0 + 3 * DAY, token_issued_at=t0)
    # When the scheduler looks before 24 h have passed, nothing is called
    for hours in (0, 6, 23):
        _at(sandbox, t0 + hours * 3600)
        assert refresher.run_once(now_s=t0 + hours * 3600).refreshed == []
    assert sandbox.refreshes(B) == []
    # Then at 24 h it is refreshed
    _at(sandbox, t0 + DAY + 1)
    assert refresher.run_once(now_s=t0 + DAY + 1).refreshed == [B]
    assert [c["status"] for c in sandbox.refreshes(B)] == [200]


def test_one_accounts_failure_does_not_stop_the_others(accounts, refresher, sandbox):
    # Given three accounts due together: A's token is revoked, B's refresh meets a 5xx, C is fine
    t0 = time.time() - 55 * DAY
    for acct, tok in ((A, TOK_A), (B, TOK_B), (C, TOK_C)):
        sandbox.add_token(tok, acct, issued_s=t0, expires_s=t0 + 60 * DAY)
        accounts.add(acct, tok, token_expires_at=t0 + 60 * DAY)
    sandbox.revoke_token(TOK_A)
    sandbox.set_faults(account=B, next_n=1, kinds=["5xx"])
    # When the refresher runs
    report = refresher.run_once()
    # Then C is refreshed, A and B failed with their reason and their own next step
    assert report.refreshed == [C] and sorted(report.failed) == [A, B]
    a, b, c = accounts.get(A), accounts.get(B), accounts.get(C)
    assert c.refresh["state"] == "ok" and c.token_fingerprint != accounts.registry.get(A).fp
    assert a.refresh["state"] == "invalid" and a.refresh["next_s"] is None and "session" in a.refresh["error"]
    assert b.refresh["state"] == "failed" and b.refresh["failures"] == 1
    assert b.refresh["next_s"] == pytest.approx(time.time() + 60, abs=5)
    # And B's retry (after its backoff) succeeds, A is not called again
    refresher.run_once(now_s=time.time() + 61)
    assert accounts.get(B).refresh["state"] == "ok"
    refused = [c for c in sandbox.refreshes() if c["token_fp"] == token_fingerprint(TOK_A)]
    assert [(c["status"], c["error_code"]) for c in refused] == [(400, 190)]
    assert [c["status"] for c in sandbox.refreshes(B)] == [500, 200]


def test_an_operator_token_set_during_a_refresh_wins(accounts, refresher, sandbox):
    t0 = time.time() - 55 * DAY
    sandbox.add_token(TOK_A, A, issued_s=t0, expires_s=t0 + 60 * DAY)
    accounts.add(A, TOK_A, token_expires_at=t0 + 60 * DAY)
    rec = accounts.registry.get(A)
    accounts.set_token(A, TOK_B)  # after the refresher read the record, before it stores
    refresher._store(rec, "IGAAfrom-a-refresh-secret", time.time(), time.time() + 60 * DAY)
    assert accounts.get(A).token_fingerprint == token_fingerprint(TOK_B)


def test_the_due_scan_costs_the_due_accounts_not_all_of_them(accounts, refresher, rdb):
    # Given 5,000 accounts whose refreshes are weeks away and one that is due
    reg = accounts.registry
    now = time.time()
    rdb.zadd(reg.keys.refresh, {f"9{n:08d}": now + 30 * DAY + n for n in range(5000)})
    # When the refresher looks, it reads only what is due (here nothing, then one missing record)
    t0 = time.perf_counter()
    for _ in range(100):
        refresher.run_once(now_s=now)
    per_pass_ms = (time.perf_counter() - t0) * 10
    print(f"5,000 scheduled refreshes, none due: {per_pass_ms:.3f} ms per pass")
    assert per_pass_ms < 5
    report = refresher.run_once(now_s=now + 30 * DAY + 0.5)
    assert (report.refreshed, report.failed, report.skipped) == ([], [], ["900000000"])
    assert rdb.zscore(reg.keys.refresh, "900000000") is None  # no record: dropped from the schedule
