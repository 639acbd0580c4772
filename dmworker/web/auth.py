"""Bearer-token authentication and scopes of the producer API (``Authorization: Bearer <token>``).

A token is accepted when it is one of ``DMWORKER_API_TOKENS`` (a plain entry: admin over every
account; ``token:role[:account|...]``: see :mod:`dmworker.scopes`) or an API token created in
the registry (``dmworker accounts api-token add``; Redis keeps only its SHA-256 digest). The
configured tokens are compared in constant time, every one of them (no early exit, so timing tells
nothing about which one or how much of it matched); a registry token is found by its digest.
With no token configured anywhere the API refuses everything (and says so in the log once).

The request's :class:`~dmworker.scopes.Scope` is kept for the handlers (:func:`current_scope`).
"""

from __future__ import annotations

import functools
import hmac
import logging

import flask
from flask.typing import ResponseReturnValue

from ..registry import Registry
from ..scopes import Scope, make_scope, parse_entries, token_digest
from .context import ctx, error

log = logging.getLogger("dmworker.web.auth")

CHALLENGE = {"WWW-Authenticate": "Bearer"}
_G_SCOPE = "dmworker_scope"


def token_ok(presented: str, tokens: tuple[str, ...]) -> bool:
    """Whether ``presented`` is one of ``tokens`` (constant time in the tokens' content)."""
    return match_entry(presented, tuple((t, Scope("admin")) for t in tokens)) is not None


def match_entry(presented: str, entries: tuple[tuple[str, Scope], ...]) -> Scope | None:
    """The scope of the entry whose token is ``presented`` (every entry compared, constant time)."""
    given = presented.encode("utf-8", "surrogatepass")
    found: Scope | None = None
    for token, scope in entries:
        if hmac.compare_digest(given, token.encode("utf-8", "surrogatepass")):
            found = scope
    return found


@functools.lru_cache(maxsize=8)
def _entries(tokens: tuple[str, ...]) -> tuple[tuple[str, Scope], ...]:
    return parse_entries(tokens)


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <t>`` header, or ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def registry_scope(registry: Registry, presented: str) -> Scope | None:
    """The scope of a registry API token (looked up by digest), or ``None``."""
    found = registry.api_token(token_digest(presented))
    if found is None:
        return None
    try:
        return make_scope(str(found.get("role")), found.get("accounts"), str(found.get("name", "")))
    except ValueError:
        log.error("registry API token %s has a malformed scope; refused", found.get("name", "?"))
        return None


def require_bearer() -> ResponseReturnValue | None:
    """``before_request`` hook: ``None`` to go on (the scope kept), else the 401 answer."""
    web = ctx()
    tokens = web.settings.api_tokens
    if not tokens and not web.warned_no_tokens:
        web.warned_no_tokens = True
        log.warning(
            "DMWORKER_API_TOKENS is unset: the producer API accepts only API tokens created in the registry"
        )
    presented = bearer_of(flask.request.headers.get("Authorization"))
    if presented is None:
        resp, status = error(401, "unauthorized", "missing 'Authorization: Bearer <token>' header")
        return resp, status, CHALLENGE
    scope = match_entry(presented, _entries(tokens)) if tokens else None
    if scope is None:
        scope = registry_scope(Registry(web.settings.key_prefix, web.redis), presented)
    if scope is None:
        resp, status = error(401, "unauthorized", "invalid API token")
        return resp, status, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    setattr(flask.g, _G_SCOPE, scope)
    return None


def current_scope() -> Scope:
    """The scope of the request being handled (set by :func:`require_bearer`)."""
    scope: Scope = getattr(flask.g, _G_SCOPE)
    return scope
