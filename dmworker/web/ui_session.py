"""Sign-in for the dashboard (``/ui/``): an API token once, then a server-side session.

- ``POST /ui/login`` takes an API token (field ``token``): one of ``DMWORKER_API_TOKENS`` or a
  registry API token, with its role and accounts (:mod:`dmworker.scopes`).
- The session lives in Redis (``P:ui:session:<sha256 of the id>``, :data:`SESSION_TTL_S`); the
  browser holds only its random id in the cookie ``dmw_ui`` (HttpOnly, SameSite=Strict, Path=/ui,
  Secure over HTTPS).  The token itself is never stored: only its SHA-256 digest, checked on every
  request, so revoking a token ends its sessions.
- CSRF: every form carries the session's random ``csrf`` value (compared in constant time), and a
  request whose ``Origin`` names another host is refused; the login form uses a double-submit
  cookie.  Every page is sent with a strict Content-Security-Policy and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import flask

from ..registry import Registry
from ..scopes import Scope, make_scope, token_digest
from .auth import _G_SCOPE, _entries, match_entry, registry_scope
from .context import ctx

COOKIE = "dmw_ui"
LOGIN_COOKIE = "dmw_ui_login"
#: How long a dashboard session lasts (seconds) from sign-in.
SESSION_TTL_S = 8 * 3600
_G_SESSION = "dmworker_ui_session"

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Session:
    """A signed-in operator: the scope of the token used, and the session's CSRF value."""

    key: str
    scope: Scope
    csrf: str
    digest: str
    source: str  # "conf" (DMWORKER_API_TOKENS) or "registry"

    @property
    def who(self) -> str:
        return self.scope.name or f"{self.source}:{self.digest[:8]}"


def _key(sid: str) -> str:
    return f"{ctx().settings.key_prefix}:ui:session:{hashlib.sha256(sid.encode()).hexdigest()}"


def resolve_token(presented: str) -> tuple[Scope, str] | None:
    """The scope of an API token and where it is configured, or ``None`` for an unknown token."""
    web = ctx()
    tokens = web.settings.api_tokens
    scope = match_entry(presented, _entries(tokens)) if tokens else None
    if scope is not None:
        return scope, "conf"
    scope = registry_scope(Registry(web.settings.key_prefix, web.redis), presented)
    return (scope, "registry") if scope is not None else None


def _still_valid(digest: str, source: str) -> bool:
    web = ctx()
    if source == "registry":
        return Registry(web.settings.key_prefix, web.redis).api_token(digest) is not None
    configured = _entries(web.settings.api_tokens) if web.settings.api_tokens else ()
    return any(hmac.compare_digest(token_digest(t), digest) for t, _ in configured)


def start(scope: Scope, presented: str, source: str) -> tuple[str, Session]:
    """A new session for ``scope``: (the cookie value, the session)."""
    sid = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    digest = token_digest(presented)
    accounts = "*" if scope.accounts is None else json.dumps(sorted(scope.accounts))
    key = _key(sid)
    ctx().redis.hset(
        key,
        mapping={
            "role": scope.role,
            "accounts": accounts,
            "name": scope.name,
            "csrf": csrf,
            "digest": digest,
            "source": source,
        },
    )
    ctx().redis.expire(key, SESSION_TTL_S)
    return sid, Session(key, scope, csrf, digest, source)


def load() -> Session | None:
    """The request's session (``None``: not signed in, expired, or its token was revoked)."""
    sid = flask.request.cookies.get(COOKIE)
    if not sid or len(sid) > 100:
        return None
    key = _key(sid)
    r: Any = ctx().redis
    data: dict[str, str] = r.hgetall(key)
    if not data or "role" not in data:
        return None
    if not _still_valid(data.get("digest", ""), data.get("source", "")):
        ctx().redis.delete(key)
        return None
    raw = data.get("accounts", "*")
    try:
        scope = make_scope(data["role"], None if raw == "*" else json.loads(raw), data.get("name", ""))
    except ValueError:
        return None
    session = Session(key, scope, data.get("csrf", ""), data.get("digest", ""), data.get("source", ""))
    setattr(flask.g, _G_SESSION, session)
    setattr(flask.g, _G_SCOPE, scope)  # the API's scoping helpers work in the dashboard too
    return session


def end(session: Session) -> None:
    ctx().redis.delete(session.key)


def current() -> Session:
    """The signed-in session of this request (set by :func:`load`)."""
    session: Session = getattr(flask.g, _G_SESSION)
    return session


def same_origin() -> bool:
    """False when the request says it comes from another site (``Origin``/``Referer``)."""
    host = flask.request.host
    for header in ("Origin", "Referer"):
        value = flask.request.headers.get(header)
        if value:
            return value != "null" and urlsplit(value).netloc == host
    return True


def csrf_ok(session: Session) -> bool:
    given = flask.request.form.get("csrf", "")
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode()) and same_origin()


def set_cookie(resp: Any, sid: str) -> None:
    resp.set_cookie(
        COOKIE,
        sid,
        max_age=SESSION_TTL_S,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=flask.request.is_secure,
    )


def harden(resp: flask.Response) -> flask.Response:
    """Security headers of every dashboard answer."""
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"
    return resp
