"""Per-account state and token refresh on ``/metrics`` (read from the registry and pause hashes).

Past :data:`dmworker.web.metrics.ALL_ACCOUNTS_UP_TO` accounts, only the accounts with work (something
due, events lately) or that need attention (not active, a failing refresh) get series.

Series (labels only from the accounts this deployment serves, never from a request):

* ``dmworker_account_state{account, state}`` — 1 for the account's state, 0 for the others of the
  fixed set active, paused, reauth_required, disabled (alert on ``state="reauth_required"``);
* ``dmworker_account_token_expires_in_seconds{account}`` — until the token expires (when known);
* ``dmworker_account_token_refresh_failures{account}`` — consecutive failed refreshes;
* ``dmworker_account_token_refresh_next_timestamp_seconds{account}`` — the next refresh attempt;
* ``dmworker_account_token_refresh_state{account, state}`` — 1 for the refresh state, of the fixed
  set none, scheduled, ok, failed, expired, invalid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..accountinfo import STATES
from ..lanes import LaneStore

REFRESH_STATES = ("none", "scheduled", "ok", "failed", "expired", "invalid")


class AccountsCollector(Collector):
    """Account state and refresh series, one registry snapshot and one pipeline per scrape."""

    def __init__(self, store: LaneStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # no Redis I/O when registered

    def collect(self) -> Iterator[Metric]:
        from ..accounts import Accounts
        from .metrics import ALL_ACCOUNTS_UP_TO, active_accounts

        infos = Accounts(self.store.settings, self.store.redis).list()
        if len(infos) > ALL_ACCOUNTS_UP_TO:  # past that, the accounts with work or needing attention
            busy = set(active_accounts(self.store))
            infos = [
                i
                for i in infos
                if i.account in busy
                or i.state != "active"
                or (i.refresh or {}).get("state") in ("failed", "expired", "invalid")
            ]
        state = GaugeMetricFamily(
            "dmworker_account_state", "1 for the account's state (fixed set)", labels=["account", "state"]
        )
        expires = GaugeMetricFamily(
            "dmworker_account_token_expires_in_seconds", "Seconds until the token expires", labels=["account"]
        )
        failures = GaugeMetricFamily(
            "dmworker_account_token_refresh_failures",
            "Consecutive failed token refreshes",
            labels=["account"],
        )
        nxt = GaugeMetricFamily(
            "dmworker_account_token_refresh_next_timestamp_seconds",
            "When the next token refresh is attempted (epoch s)",
            labels=["account"],
        )
        refresh = GaugeMetricFamily(
            "dmworker_account_token_refresh_state",
            "1 for the account's token refresh state (fixed set)",
            labels=["account", "state"],
        )
        now = time.time()
        for info in infos:
            a = info.account
            for s in STATES:
                state.add_metric([a, s], 1.0 if info.state == s else 0.0)
            if info.token_expires_at is not None:
                expires.add_metric([a], float(info.token_expires_at) - now)
            r = info.refresh or {}
            current = str(r.get("state") or "none")
            for s in REFRESH_STATES:
                refresh.add_metric([a, s], 1.0 if current == s else 0.0)
            failures.add_metric([a], float(r.get("failures") or 0))
            if r.get("next_s") is not None:
                nxt.add_metric([a], float(r["next_s"]))
        yield from (state, expires, failures, nxt, refresh)
