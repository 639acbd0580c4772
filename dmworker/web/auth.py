"""Bearer-token authentication of the producer API (``Authorization: Bearer <token>``).

A token is accepted when it equals one of ``DMWORKER_API_TOKENS``; the comparison is constant
time against every configured token (no early exit, so timing tells nothing about which one or
how much of it matched).  With no tokens configured the API refuses everything (and says so in
the log once), rather than running open.
"""

from __future__ import annotations

import hmac
import logging

import flask
from flask.typing import ResponseReturnValue

from .context import ctx, error

log = logging.getLogger("dmworker.web.auth")

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def token_ok(presented: str, tokens: tuple[str, ...]) -> bool:
    """Whether ``presented`` is one of ``tokens`` (constant time in the tokens' content)."""
    given = presented.encode("utf-8", "surrogatepass")
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(given, t.encode("utf-8", "surrogatepass"))
    return ok


def bearer_of(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <t>`` header, or ``None``."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def require_bearer() -> ResponseReturnValue | None:
    """``before_request`` hook: ``None`` to go on, else the 401 answer."""
    web = ctx()
    tokens = web.settings.api_tokens
    if not tokens:
        if not web.warned_no_tokens:
            web.warned_no_tokens = True
            log.warning("DMWORKER_API_TOKENS is unset: the producer API answers 401 to every request")
        resp, status = error(401, "unauthorized", "the API is disabled: no API tokens are configured")
        return resp, status, CHALLENGE
    presented = bearer_of(flask.request.headers.get("Authorization"))
    if presented is None:
        resp, status = error(401, "unauthorized", "missing 'Authorization: Bearer <token>' header")
        return resp, status, CHALLENGE
    if not token_ok(presented, tokens):
        resp, status = error(401, "unauthorized", "invalid API token")
        return resp, status, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return None
