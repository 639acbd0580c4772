"""``Accounts``: onboard, re-token, disable, enable and remove Instagram accounts at run time.

::

    from dmworker import Accounts

    accounts = Accounts()                                     # settings from the environment
    accounts.add("17841400000000001", access_token="IGAA...", login="instagram",
                 token_expires_at=datetime(2026, 3, 1, tzinfo=timezone.utc), rates={"text": "100/s"})
    accounts.add("17841400000000002", access_token="EAA...", login="facebook", page_id="1029384756")
    accounts.set_token("17841400000000001", "IGAA...new", token_expires_at=...)
    accounts.disable("17841400000000001"); accounts.enable("17841400000000001")
    accounts.remove("17841400000000002", jobs="cancel")      # or "keep" / "fail"
    accounts.get("17841400000000001").state                   # active | paused | reauth_required | disabled

Records live in the registry (:mod:`dmworker.registry`), tokens encrypted under
``DMWORKER_SECRET_KEY``; running workers, schedulers and web processes see a change within
``DMWORKER_ACCOUNTS_REFRESH_S`` (:class:`dmworker.live.LiveAccounts`). Static accounts (environment,
accounts file) are listed too and can be disabled and enabled, but not changed or removed here.

Disabling writes the account pause (reason ``disabled``, until ten years ahead), which every lane
step already honours: queued jobs wait, nothing is sent, nothing is dead-lettered; ``enable`` lifts
it and wakes the parked lanes. After ``set_token`` of an account held for a refused token
(``reauth_required``), each worker resumes it once it holds the new token (within
``DMWORKER_ACCOUNTS_REFRESH_S``): the held jobs go out in order, with the new token.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import redis

from .accountinfo import AccountInfo, account_info
from .crypto import TokenCipher
from .forget import ForgetReport
from .keys import Keys
from .registry import (
    AccountConflictError,
    AccountError,
    AccountNotFoundError,
    AccountRecord,
    RefreshState,
    Registry,
    check_account_id,
)
from .settings import LOGINS, RATE_CLASSES, ConfigError, Settings, parse_rate, token_fingerprint

log = logging.getLogger("dmworker.accounts")

DAY_S = 86_400.0
TOKEN_LIFETIME_S = 60 * DAY_S  # Instagram Login long-lived tokens
MIN_REFRESH_AGE_S = DAY_S  # Meta refreshes only tokens at least 24 h old
FAR_MS = 315_360_000_000  # ten years: a pause that lasts until an operator lifts it
JOB_POLICIES = ("keep", "fail", "cancel")
_URL = re.compile(r"^https?://[^/\s]+")

__all__ = ["AccountError", "AccountInfo", "AccountNotFoundError", "Accounts", "ForgetReport"]


class Accounts:
    """The account registry of one deployment (one key prefix).

    Args:
        settings: default: this process's runtime settings.
        client: a Redis client (``decode_responses=True``); default: the runtime's.

    Every method raises :class:`AccountError` (a ``ValueError``) for bad arguments,
    :class:`AccountNotFoundError` for an unknown account, ``ConfigError`` when a token must be
    stored or read and ``DMWORKER_SECRET_KEY`` is unset, and redis errors when Redis is down.
    Times are epoch seconds (or aware datetimes where noted); ``now_s`` overrides the clock.
    """

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None) -> None:
        if settings is None or client is None:
            from .runtime import get_runtime

            rt = get_runtime()
            settings, client = settings or rt.settings, client or rt.redis
        self.settings = settings
        self.redis: Any = client
        self.registry = Registry(settings.key_prefix, client)
        self.keys = Keys(settings.key_prefix)
        self._cipher: TokenCipher | None = None

    @property
    def static(self) -> Mapping[str, Any]:
        accounts = self.settings.accounts
        return getattr(accounts, "static", accounts)

    @property
    def cipher(self) -> TokenCipher:
        if self._cipher is None:
            self._cipher = TokenCipher.from_settings(self.settings)
        return self._cipher

    # ------------------------------------------------------------------ changes
    def add(
        self,
        account_id: str,
        access_token: str | None,
        *,
        login: str = "instagram",
        page_id: str | None = None,
        token_expires_at: datetime | float | None = None,
        token_issued_at: datetime | float | None = None,
        rates: Mapping[str, str] | None = None,
        burst: int | None = None,
        graph_url: str | None = None,
        callback_url: str | None = None,
        replace: bool = False,
        now_s: float | None = None,
    ) -> AccountInfo:
        """Register an account (``replace=True``: overwrite one; ``access_token=None`` keeps its token).

        A token with a known expiry and no ``token_issued_at`` counts as issued 60 days before it.

        Raises:
            AccountError: bad arguments, an existing account without ``replace``, a static account.
        """
        check_account_id(account_id)
        if account_id in self.static:
            raise AccountConflictError(f"account {account_id} is configured in the environment (read-only)")
        now = time.time() if now_s is None else now_s
        checked = _check_fields(login, page_id, rates, burst, graph_url, callback_url)
        fields: dict[str, Any] = dict(login=login, disabled=False, **checked)
        if access_token is not None:
            fields.update(self._token_fields(access_token, token_expires_at, token_issued_at, now, login))

        def change(cur: AccountRecord | None) -> AccountRecord:
            if cur is not None and not replace:
                raise AccountConflictError(
                    f"account {account_id} is already registered (replace it, or set_token)"
                )
            if cur is None:
                if access_token is None:
                    raise AccountError("access_token is required for a new account")
                return AccountRecord(account=account_id, created_s=now, updated_s=now, **fields)
            return cur.with_(updated_s=now, **fields)

        self.registry.update(account_id, change, self._refresh_due)
        self._lift_pause(account_id, ("disabled", "removed"))
        log.info("account %s registered (%s login)", account_id, login)
        return self.get(account_id)

    def set_token(
        self,
        account_id: str,
        access_token: str,
        *,
        token_expires_at: datetime | float | None = None,
        token_issued_at: datetime | float | None = None,
        now_s: float | None = None,
    ) -> AccountInfo:
        """Replace a registry account's token; an account held for re-authentication resumes.

        Raises:
            AccountNotFoundError: not in the registry.
            AccountError: an empty token, or a static account.
        """
        self._registry_only(account_id)
        now = time.time() if now_s is None else now_s
        current = self.registry.get(account_id)
        login = current.login if current is not None else "instagram"
        fields = self._token_fields(access_token, token_expires_at, token_issued_at, now, login)
        old: list[str] = []

        def change(cur: AccountRecord | None) -> AccountRecord:
            if cur is None:
                raise AccountNotFoundError(f"no registered account {account_id}")
            old.append(cur.fp)
            return cur.with_(updated_s=now, **fields)

        self.registry.update(account_id, change, self._refresh_due)
        log.info("account %s: token replaced (%s -> %s)", account_id, old[0], fields["fp"])
        return self.get(account_id)

    def set_rates(
        self, account_id: str, rates: Mapping[str, str], burst: int | None = None, now_s: float | None = None
    ) -> AccountInfo:
        """Change a registry account's rate limits live (``rates``: class -> ``"100/s"``; merged into
        its current ones) and, if given, its burst.  Workers apply it at their next registry read.

        Raises:
            AccountNotFoundError: not in the registry.
            AccountError: a bad class or rate, or a static account (configured in the environment).
        """
        self._registry_only(account_id)
        now = time.time() if now_s is None else now_s
        current = self.registry.get(account_id)
        if current is None:
            raise AccountNotFoundError(f"no registered account {account_id}")
        merged = {**current.rates, **rates}
        checked = _check_fields(current.login, current.page_id, merged, burst, None, None)

        def change(cur: AccountRecord | None) -> AccountRecord:
            if cur is None:
                raise AccountNotFoundError(f"no registered account {account_id}")
            extra = {"burst": checked["burst"]} if burst is not None else {}
            return cur.with_(updated_s=now, rates={**cur.rates, **checked["rates"]}, **extra)

        self.registry.update(account_id, change, self._refresh_due)
        log.info("account %s: rates set to %s", account_id, checked["rates"])
        return self.get(account_id)

    def disable(self, account_id: str, now_s: float | None = None) -> AccountInfo:
        """Stop every send of the account (its jobs wait; new sends are still accepted and wait too)."""
        self._known(account_id)
        now = time.time() if now_s is None else now_s
        self._flag(account_id, True, now)
        self._hold(account_id, "disabled", "disabled by an operator")
        log.info("account %s disabled", account_id)
        return self.get(account_id)

    def enable(self, account_id: str, now_s: float | None = None) -> AccountInfo:
        """Undo :meth:`disable` (only a ``disabled`` pause is lifted: a throttle or a lost token stays)."""
        self._known(account_id)
        now = time.time() if now_s is None else now_s
        self._flag(account_id, False, now)
        self._lift_pause(account_id, ("disabled",))
        log.info("account %s enabled", account_id)
        return self.get(account_id)

    def remove(self, account_id: str, jobs: str = "keep") -> dict[str, Any]:
        """Unregister an account; ``jobs`` says what happens to its queued and scheduled jobs:

        ``keep``: they stay, held (nothing is sent) until the account is added again; ``fail``:
        they end as failed (dead letters, reason ``account_removed``); ``cancel``: they end as
        cancelled. New sends for the account are refused at enqueue from then on.

        Returns ``{"account", "jobs", "ended"}`` (``ended``: how many jobs were failed/cancelled).

        Raises:
            AccountNotFoundError: not in the registry. AccountError: bad ``jobs``.
        """
        if jobs not in JOB_POLICIES:
            raise AccountError(f"jobs must be one of {', '.join(JOB_POLICIES)}, got {jobs!r}")
        self._registry_only(account_id)
        ended = 0
        if jobs == "keep":
            self._hold(account_id, "removed", "account removed; its jobs are kept until it is added again")
        else:
            state = "failed" if jobs == "fail" else "cancelled"
            ended = self._store().end_account_jobs(account_id, state, "the account was removed")
        self.registry.update(account_id, lambda cur: None)
        log.info("account %s removed (jobs: %s, %d ended)", account_id, jobs, ended)
        return {"account": account_id, "jobs": jobs, "ended": ended}

    def forget(self, account_id: str, igsid: str) -> ForgetReport:
        """Remove everything ``account_id`` keeps about the person ``igsid`` (a Meta data-deletion
        request): window, comments, jobs in any state with their texts, dead letters, lanes.

        Jobs not yet sent are first cancelled (reason ``forgotten``); a job being sent right now
        cannot be recalled: ``in_flight`` counts it and ``complete`` is false — call again once it
        ended. The account need not be served any more (a removed account's data is found too).
        Cost: one walk of the account's status hash (see :mod:`dmworker.forget`).

        Raises:
            AccountError: a malformed account id. ValidationError: ``igsid`` is not an IGSID.
        """
        from .forget import forget_person

        check_account_id(account_id)
        return forget_person(self._store(), account_id, igsid)

    def forget_everywhere(self, igsid: str) -> list[ForgetReport]:
        """:meth:`forget` on every account this deployment serves or that ever had a job."""
        from .forget import check_igsid

        check_igsid(igsid)
        ever = {str(a) for a in self.redis.smembers(self.keys.accounts)}
        _, records = self.registry.snapshot()
        return [self.forget(a, igsid) for a in sorted(ever | set(records) | set(self.static))]

    # ------------------------------------------------------------------ reads
    def get(self, account_id: str) -> AccountInfo:
        """The account as an operator sees it (state, token fingerprint and expiry, limits, refresh).

        Raises:
            AccountNotFoundError: neither registered nor static.
        """
        rec = self.registry.get(account_id)
        static = self.static.get(account_id)
        if rec is None and static is None:
            raise AccountNotFoundError(f"no account {account_id}")
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(self.keys.account(account_id).pause)
        (sec, usec), pause = pipe.execute()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return account_info(self.settings, account_id, rec, static, pause, now_ms)

    def list(self, only: Collection[str] | None = None) -> list[AccountInfo]:
        """Every static and registered account (of ``only``, when given), sorted by id."""
        _, records = self.registry.snapshot()
        ids = sorted(set(records) | set(self.static))
        if only is not None:
            ids = [a for a in ids if a in only]
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for a in ids:
            pipe.hgetall(self.keys.account(a).pause)
        out = pipe.execute()
        now_ms = int(out[0][0]) * 1000 + int(out[0][1]) // 1000
        return [
            account_info(self.settings, a, records.get(a), self.static.get(a), pause, now_ms)
            for a, pause in zip(ids, out[1:], strict=True)
        ]

    def is_registered(self, account_id: str) -> bool:
        """Whether ``account_id`` is static or in the registry (one ``HEXISTS``)."""
        return account_id in self.static or self.registry.exists(account_id)

    # ------------------------------------------------------------------ internals
    def _token_fields(
        self,
        token: str,
        expires: datetime | float | None,
        issued: datetime | float | None,
        now: float,
        login: str,
    ) -> dict[str, Any]:
        if not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token):
            raise AccountError("access_token must be a non-empty string without spaces")
        exp, iss = _epoch(expires, "token_expires_at"), _epoch(issued, "token_issued_at")
        if iss is None:
            iss = exp - TOKEN_LIFETIME_S if exp is not None else now
        return {
            "tok": self.cipher.encrypt(token),
            "fp": token_fingerprint(token),
            "expires_s": exp,
            "issued_s": iss,
            "refresh": initial_refresh(self.settings, exp, iss, login),
        }

    def _refresh_due(self, rec: AccountRecord | None) -> float | None:
        return rec.refresh.next_s if rec is not None else None

    def _flag(self, account_id: str, disabled: bool, now: float) -> None:
        if self.registry.exists(account_id):
            self.registry.update(
                account_id, lambda cur: cur.with_(disabled=disabled, updated_s=now) if cur else None
            )

    def _known(self, account_id: str) -> None:
        if not self.is_registered(account_id):
            raise AccountNotFoundError(f"no account {account_id}")

    def _registry_only(self, account_id: str) -> None:
        if account_id in self.static:
            raise AccountConflictError(f"account {account_id} is configured in the environment (read-only)")
        if not self.registry.exists(account_id):
            raise AccountNotFoundError(f"no registered account {account_id}")

    def _hold(self, account_id: str, reason: str, detail: str) -> None:
        k = self.keys.account(account_id)
        sec, usec = self.redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        self.redis.hset(
            k.pause,
            mapping={
                "until": now_ms + FAR_MS,
                "reason": reason,
                "probe": "",
                "probe_until": 0,
                "token_fp": "",
                "fails": 0,
                "detail": detail,
                "since": now_ms,
            },
        )

    def _lift_pause(self, account_id: str, reasons: tuple[str, ...]) -> bool:
        """Delete the account pause if its reason is one of ``reasons`` (atomic); wake its lanes."""
        key = self.keys.account(account_id).pause
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "reason") not in reasons:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._wake_lanes(account_id)
        return True

    def _store(self) -> Any:
        from .lanes import LaneStore

        return LaneStore(self.settings, self.redis)

    def _wake_lanes(self, account_id: str) -> int:
        """Wake the account's lanes parked behind a pause that was just lifted (in batches)."""
        return int(self._store().resume(account_id, mode="wake")[1])


def _epoch(value: datetime | float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise AccountError(f"{name} must be an aware datetime (a naive one is ambiguous)")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise AccountError(f"{name} must be an aware datetime or epoch seconds, got {value!r}")
    return float(value)


def initial_refresh(settings: Settings, expires: float | None, issued: float, login: str) -> RefreshState:
    """The refresh schedule of a new token: due ``DMWORKER_TOKEN_REFRESH_BEFORE_S`` before it
    expires, but not before it is 24 h old; none without an expiry or for Facebook Login (Page
    tokens are not refreshed through ``refresh_access_token``)."""
    if expires is None or login != "instagram":
        return RefreshState("none")
    due = max(expires - settings.token_refresh_before_s, issued + MIN_REFRESH_AGE_S)
    return RefreshState("scheduled", next_s=due)


def _check_fields(
    login: str,
    page_id: str | None,
    rates: Mapping[str, str] | None,
    burst: int | None,
    graph_url: str | None,
    callback_url: str | None,
) -> dict[str, Any]:
    if login not in LOGINS:
        raise AccountError(f"login must be one of {', '.join(LOGINS)}, got {login!r}")
    if login == "facebook" and not (isinstance(page_id, str) and page_id.strip().isdigit()):
        raise AccountError("a facebook login needs page_id, the linked Page's numeric id")
    if rates is not None and not isinstance(rates, Mapping):
        raise AccountError('rates must be an object of class -> rate, e.g. {"text": "100/s"}')
    out_rates = {}
    for k, v in (rates or {}).items():
        if k not in RATE_CLASSES:
            raise AccountError(f"unknown rate class {k!r} (one of {', '.join(RATE_CLASSES)})")
        try:
            out_rates[k] = str(parse_rate(v, f"rates.{k}"))
        except ConfigError as e:
            raise AccountError(str(e)) from None
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise AccountError("burst must be an integer >= 1")
    for name, url in (("graph_url", graph_url), ("callback_url", callback_url)):
        if url is not None and not (isinstance(url, str) and _URL.match(url)):
            raise AccountError(f"{name} must be an http(s) URL")
    return {
        "page_id": page_id if login == "facebook" else None,  # a Page applies to facebook logins only
        "rates": out_rates,
        "burst": burst,
        "graph_url": graph_url.rstrip("/") if graph_url else None,
        "callback_url": callback_url,
    }
