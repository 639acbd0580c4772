"""What ``Accounts.get``/``list``, ``dmworker accounts show`` and ``/v1/accounts/<id>`` show of an
account: its state, login, token fingerprint and expiry, limits and refresh — never a token.

States, from the account pause ``P:{A}:pause`` (fields ``until``, ``reason``, ``token_fp``) and the
registry record:

===================  ==========================================================================
``disabled``         an operator disabled it (pause reason ``disabled``, or the registry flag)
``reauth_required``  Meta rejected its token (reason ``token_invalid``) and that token is still
                     the one configured: jobs wait until ``set_token``
``paused``           any other pause still running (throttle, policy block, a kept removal)
``active``           sending (a ``token_invalid`` pause whose token was since replaced lifts at
                     the next step)
===================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .registry import AccountRecord
from .settings import RATE_CLASSES, AccountConfig, Settings

STATES = ("active", "paused", "reauth_required", "disabled")


@dataclass(frozen=True)
class AccountInfo:
    """One account as an operator sees it. Times are epoch seconds (``*_ms``: milliseconds)."""

    account: str
    source: str  # "registry" | "static"
    state: str
    login: str
    page_id: str | None
    graph_url: str
    token_fingerprint: str | None
    token_expires_at: float | None
    token_issued_at: float | None
    limits: dict[str, str]
    burst: int
    pause_reason: str | None
    paused_until_ms: int | None
    callback_url: str | None = None
    refresh: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None
    updated_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pause_state(pause: Mapping[str, str], now_ms: int, fingerprint: str | None, disabled: bool) -> str:
    """The state (one of :data:`STATES`) an account pause hash and the current token give."""
    reason = pause.get("reason") or None
    until = int(pause.get("until") or 0)
    if disabled or reason == "disabled":
        return "disabled"
    if reason == "token_invalid":
        rejected = pause.get("token_fp") or ""
        return "reauth_required" if not fingerprint or rejected == fingerprint else "active"
    if reason and until > now_ms:
        return "paused"
    return "active"


def account_info(
    settings: Settings,
    account: str,
    rec: AccountRecord | None,
    static: AccountConfig | None,
    pause: Mapping[str, str],
    now_ms: int,
) -> AccountInfo:
    """Build the view of one account from its registry record (or static config) and pause hash."""
    fp = static.fingerprint if static is not None else rec.fp if rec is not None else None
    disabled = bool(rec.disabled) if rec is not None and static is None else False
    until = int(pause.get("until") or 0)
    reason = pause.get("reason") or None
    active_pause = reason is not None and (until > now_ms or reason == "token_invalid")
    if static is not None:
        limits = {c: str(static.rates.get(c) or settings.rates[c]) for c in RATE_CLASSES}
        return AccountInfo(
            account=account,
            source="static",
            state=pause_state(pause, now_ms, fp, False),
            login=static.login,
            page_id=static.page_id,
            graph_url=_graph_url(settings, static.graph_url, static.login),
            token_fingerprint=fp,
            token_expires_at=None,
            token_issued_at=None,
            limits=limits,
            burst=static.burst or settings.rate_burst,
            pause_reason=reason if active_pause else None,
            paused_until_ms=until if active_pause else None,
        )
    assert rec is not None
    limits = {c: rec.rates.get(c) or str(settings.rates[c]) for c in RATE_CLASSES}
    return AccountInfo(
        account=account,
        source="registry",
        state=pause_state(pause, now_ms, fp, disabled),
        login=rec.login,
        page_id=rec.page_id,
        graph_url=_graph_url(settings, rec.graph_url, rec.login),
        token_fingerprint=fp,
        token_expires_at=rec.expires_s,
        token_issued_at=rec.issued_s,
        limits=limits,
        burst=rec.burst or settings.rate_burst,
        pause_reason=reason if active_pause else None,
        paused_until_ms=until if active_pause else None,
        callback_url=rec.callback_url,
        refresh=asdict(rec.refresh),
        created_at=rec.created_s,
        updated_at=rec.updated_s,
    )


def _graph_url(settings: Settings, own: str | None, login: str) -> str:
    if own:
        return own.rstrip("/")
    return (settings.facebook_graph_url if login == "facebook" else settings.graph_url).rstrip("/")
