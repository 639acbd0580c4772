"""Account state and token refresh on /metrics: a fixed set of 0/1 series per served account."""

from __future__ import annotations

import time

from conftest import ACCOUNT
from prometheus_client.parser import text_string_to_metric_families

from dmworker.accounts import Accounts
from dmworker.crypto import new_key
from dmworker.lanes import LaneStore
from dmworker.runtime import live_settings
from dmworker.web import create_app

NEW = "17841400000000881"


def _scrape(s, rdb) -> dict[tuple[str, tuple], float]:
    app = create_app(s, redis_client=rdb, publish=lambda a, r: None)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name.startswith("dmworker_account_"):
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_account_state_and_refresh_are_series_with_fixed_labels(settings, rdb):
    s = live_settings(settings.with_overrides(secret_keys=(new_key(),), accounts_refresh_s=0.01), rdb)
    t0 = time.time()
    Accounts(s, rdb).add(NEW, "IGAAmetrics-token-0881", token_expires_at=t0 + 30 * 86400, token_issued_at=t0)
    # Meta refused the configured account's token: reauth_required
    store = LaneStore(s, rdb)
    rdb.hset(store.acct(ACCOUNT).pause, mapping={"until": int(t0 * 1000) + 10**11, "reason": "token_invalid",
                                                 "token_fp": s.accounts[ACCOUNT].fingerprint})  # fmt: skip
    got = _scrape(s, rdb)

    def state(account: str, name: str) -> float:
        return got[("dmworker_account_state", (("account", account), ("state", name)))]

    assert state(ACCOUNT, "reauth_required") == 1 and state(ACCOUNT, "active") == 0
    assert (
        state(NEW, "active") == 1
        and sum(state(NEW, x) for x in ("paused", "disabled", "reauth_required")) == 0
    )
    left = got[("dmworker_account_token_expires_in_seconds", (("account", NEW),))]
    assert 29 * 86400 < left <= 30 * 86400
    nxt = got[("dmworker_account_token_refresh_next_timestamp_seconds", (("account", NEW),))]
    assert abs(nxt - (t0 + 23 * 86400)) < 5  # 7 days before expiry
    assert got[("dmworker_account_token_refresh_state", (("account", NEW), ("state", "scheduled")))] == 1
    # an account id nobody serves never becomes a label
    assert not any("17849999999999999" in str(k) for k in got)


def test_past_500_accounts_only_the_busy_ones_get_series(settings, rdb):
    from dmworker.outbox import Outbox
    from dmworker.settings import AccountConfig

    many = {f"1784166{i:010d}": AccountConfig(f"1784166{i:010d}", f"IGAAmany-{i}") for i in range(600)}
    s = settings.with_overrides(accounts={**settings.accounts, **many}, window_policy="trust")
    busy = next(iter(many))
    Outbox(settings=s, client=rdb, publish=lambda a, r: None).send_text("5550001", "hi", account=busy)
    got = _scrape(s, rdb)
    labelled = {dict(k[1]).get("account") for k in got} - {None}
    assert busy in labelled and len(labelled) < 10, len(labelled)
