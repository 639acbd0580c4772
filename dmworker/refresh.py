"""Token refresh: keeps Instagram Login tokens alive (they expire 60 days after they are issued).

``dmworker scheduler`` runs :func:`start_refresher`: every ``DMWORKER_TOKEN_REFRESH_CHECK_S`` it
calls :meth:`Refresher.run_once`, which reads only the accounts whose refresh is due from the
``refresh`` sorted set of the registry (O(due), whatever the number of accounts) and, for each:

1. takes a short per-account lock (several schedulers may run: one refresh per token);
2. ``GET <graph host>/refresh_access_token?grant_type=ig_refresh_token&access_token=…``
   (Meta refreshes a token at least 24 h old that has not expired; ``expires_in`` in the answer
   gives the new expiry);
3. stores the new token (encrypted) — unless an operator replaced the token meanwhile — before
   any worker can use it; workers pick it up within ``DMWORKER_ACCOUNTS_REFRESH_S``;
4. schedules the next refresh ``DMWORKER_TOKEN_REFRESH_BEFORE_S`` before the new expiry.

A failure is isolated to its account: it is recorded (state ``failed``, the error, the next
attempt, visible in ``dmworker accounts show`` and ``/v1/accounts``) and retried with exponential
backoff (1 min doubling up to 6 h, never past the expiry). A token Meta rejects (code 190) or that
has expired is not retried (state ``invalid`` / ``expired``): it needs ``set_token``.

Time is injected: ``run_once(now_s=...)`` (epoch seconds) decides what is due and dates the new
expiry, so tests run 60-day lifetimes in seconds.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from .crypto import TokenCipher
from .graph.errors import GraphError, TokenInvalidError, map_error
from .registry import AccountRecord, RefreshState, Registry
from .settings import Settings, token_fingerprint

log = logging.getLogger("dmworker.refresh")

BATCH = 200  # due accounts read per pass (the rest on the next pass)
LOCK_MS = 60_000
BACKOFF_BASE_S = 60.0
BACKOFF_CAP_S = 6 * 3600.0


@dataclass
class RefreshReport:
    """What one pass did: account ids by outcome."""

    refreshed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Refresher:
    """Refreshes due tokens of one deployment's registry (see the module docstring).

    Args:
        settings: supplies the key prefix, secret keys, Graph hosts, timeouts and the horizon.
        client: Redis (``decode_responses=True``).
        session: the HTTP session to call Meta with (default: a new one, closed by :meth:`close`).
    """

    def __init__(self, settings: Settings, client: Any, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.registry = Registry(settings.key_prefix, client)
        self.cipher = TokenCipher.from_settings(settings)
        self._session = session or requests.Session()
        self._owns_session = session is None
        self.holder = uuid.uuid4().hex

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def run_once(self, now_s: float | None = None) -> RefreshReport:
        """Refresh every token due at ``now_s`` (epoch s, default now); never raises for one account."""
        now = time.time() if now_s is None else now_s
        report = RefreshReport()
        for account in self.registry.due_refreshes(now, BATCH):
            if not self.registry.lock_refresh(account, self.holder, LOCK_MS):
                report.skipped.append(account)
                continue
            try:
                outcome = self._refresh(account, now)
                getattr(report, outcome).append(account)
            except Exception as e:  # one account's trouble never stops the others
                log.exception("token refresh of account %s crashed", account)
                self._failed(account, now, f"{type(e).__name__}", retry=True)
                report.failed.append(account)
            finally:
                self.registry.unlock_refresh(account)
        return report

    # ------------------------------------------------------------------ one account
    def _refresh(self, account: str, now: float) -> str:
        """Refresh one due account: the :class:`RefreshReport` list it belongs in."""
        rec = self.registry.get(account)
        if rec is None or rec.refresh.next_s is None:
            self.registry.reschedule(account, None)
            return "skipped"
        if rec.refresh.next_s > now:  # rescheduled meanwhile (set_token)
            self.registry.reschedule(account, rec.refresh.next_s)
            return "skipped"
        if rec.expires_s is not None and now >= rec.expires_s:
            self._failed(
                account,
                now,
                "the token expired before it could be refreshed",
                retry=False,
                state="expired",
                fp=rec.fp,
            )
            log.error("account %s: token expired; set a new one (dmworker accounts set-token)", account)
            return "failed"
        token = self.cipher.decrypt(rec.tok)
        try:
            new_token, expires_in = self._call(rec, token)
        except GraphError as e:
            permanent = isinstance(e, TokenInvalidError)
            self._failed(
                account,
                now,
                e.message or type(e).__name__,
                retry=not permanent,
                state="invalid" if permanent else "failed",
                fp=rec.fp,
            )
            log.warning("account %s: token refresh failed: %s", account, e.message)
            return "failed"
        self._store(rec, new_token, now, now + expires_in)
        return "refreshed"

    def _call(self, rec: AccountRecord, token: str) -> tuple[str, float]:
        base = urlsplit(self.settings.graph_url_for(rec.account) if rec.graph_url is None else rec.graph_url)
        url = urlunsplit((base.scheme, base.netloc, "/refresh_access_token", "", ""))
        s = self.settings
        try:
            resp = self._session.get(
                url,
                params={"grant_type": "ig_refresh_token", "access_token": token},
                timeout=(s.http_connect_timeout_s, s.http_read_timeout_s),
                allow_redirects=False,
            )
        except OSError as exc:
            raise map_error(exc=exc, sent=True, secrets=(token,)) from None
        with resp:
            body: Any = None
            if resp.status_code == 200:
                try:
                    body = resp.json()
                except ValueError:
                    body = None
            if not isinstance(body, dict) or "error" in body:
                raise map_error(
                    status=resp.status_code, headers=resp.headers, body=resp.content, secrets=(token,)
                )
        new, expires_in = body.get("access_token"), body.get("expires_in")
        if (
            not isinstance(new, str)
            or not new
            or isinstance(expires_in, bool)
            or not isinstance(expires_in, (int, float))
            or expires_in <= 0
        ):
            raise map_error(status=502, headers={}, body=b'{"error":{"message":"malformed refresh answer"}}')
        return new, float(expires_in)

    def _store(self, rec: AccountRecord, token: str, now: float, expires: float) -> None:
        from .accounts import initial_refresh

        fields = {
            "tok": self.cipher.encrypt(token),
            "fp": token_fingerprint(token),
            "expires_s": expires,
            "issued_s": now,
        }
        nxt = initial_refresh(self.settings, expires, now, rec.login)
        state = RefreshState("ok", next_s=nxt.next_s, last_s=now)
        kept = []

        def change(cur: AccountRecord | None) -> AccountRecord | None:
            if cur is None or cur.fp != rec.fp:  # removed, or an operator set a token meanwhile
                kept.append(cur)
                return cur
            return cur.with_(updated_s=now, refresh=state, **fields)

        self.registry.update(rec.account, change, lambda r: r.refresh.next_s if r else None)
        if kept:
            log.info(
                "account %s: token changed during its refresh; the refreshed one is dropped", rec.account
            )
        else:
            log.info(
                "account %s: token refreshed (%s -> %s), expires at %.0f",
                rec.account,
                rec.fp,
                fields["fp"],
                expires,
            )
            self._event(rec.account, fields["fp"], expires)

    def _event(self, account: str, fingerprint: Any, expires_s: float) -> None:
        """``account.token_refreshed`` (the registry lives in its own hash slot, so this is a second
        write after the token is stored, not the same call); never raises."""
        from .events import emit
        from .lanes import LaneStore

        try:
            emit(
                LaneStore(self.settings, self.registry.redis),
                account,
                {"type": "account.token_refreshed", "token_fingerprint": fingerprint,
                 "token_expires_at_ms": int(expires_s * 1000)},
            )  # fmt: skip
        except Exception:
            log.warning("account %s: could not write the token_refreshed event", account, exc_info=True)

    def _failed(
        self, account: str, now: float, error: str, retry: bool, state: str = "failed", fp: str | None = None
    ) -> None:
        def change(cur: AccountRecord | None) -> AccountRecord | None:
            if cur is None or (fp is not None and cur.fp != fp):
                return cur
            failures = cur.refresh.failures + 1
            nxt = None
            if retry:
                nxt = now + min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1))
                if cur.expires_s is not None:
                    nxt = min(nxt, max(now + 1.0, cur.expires_s - 1.0))
            refresh = RefreshState(
                state, next_s=nxt, last_s=cur.refresh.last_s, failures=failures, error=error[:300]
            )
            return cur.with_(refresh=refresh, updated_s=now)

        self.registry.update(account, change, lambda r: r.refresh.next_s if r else None)


def start_refresher(settings: Settings, client: Any, stop: threading.Event) -> threading.Thread | None:
    """Run :meth:`Refresher.run_once` every ``DMWORKER_TOKEN_REFRESH_CHECK_S`` in a daemon thread
    until ``stop`` is set. ``None`` (and one log line) when ``DMWORKER_SECRET_KEY`` is unset: then
    the registry holds no token to refresh."""
    if not settings.secret_keys:
        log.info("token refresh off: DMWORKER_SECRET_KEY is unset (no registry tokens)")
        return None
    refresher = Refresher(settings, client)

    def loop() -> None:
        try:
            while not stop.is_set():
                try:
                    refresher.run_once()
                except Exception as e:  # Redis down: try again at the next check
                    log.warning("token refresh pass failed: %s", type(e).__name__)
                stop.wait(settings.token_refresh_check_s)
        finally:
            refresher.close()

    thread = threading.Thread(target=loop, name="dmworker-token-refresh", daemon=True)
    thread.start()
    return thread
