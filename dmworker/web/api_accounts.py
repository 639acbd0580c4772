"""``/v1/accounts`` and ``/v1/api-tokens``: accounts and API tokens over HTTP (routes on the
``/v1`` blueprint of :mod:`.api`).

==========================================  ========================================  ============
``GET /v1/accounts?limit=&after=``          state, limits, pause, backlog, token        any (own
                                            fingerprint/expiry, refresh of each; pages   accounts)
                                            of 500 by account id (``next``: the after)
``GET /v1/accounts/<id>``                   one account                                 any (own)
``PUT /v1/accounts/<id>``                   add or replace (JSON body, below)           admin
``DELETE /v1/accounts/<id>?jobs=keep|fail|cancel``  remove; what becomes of its jobs    admin
``GET|POST /v1/api-tokens``, ``DELETE /v1/api-tokens/<name>``  registry API tokens      admin
``DELETE /v1/people/<igsid>?account=A``     forget a person (data-deletion request)     admin,
                                            (no account: every account, admin-wide)     producer (own)
==========================================  ========================================  ============

PUT body (the whole account: a PUT replaces it): ``{"access_token" (required), "login", "page_id",
"token_expires_at", "token_issued_at" (epoch s), "rates", "burst", "graph_url", "callback_url",
"disabled"}``. A static account (environment, file) or an existing API token name answers 409.
No answer ever carries a token: only its fingerprint (``POST /v1/api-tokens`` answers the new
API token once, by design).
"""

from __future__ import annotations

import json
from typing import Any

import flask
from flask.typing import ResponseReturnValue

from ..accounts import Accounts
from ..apitokens import ApiTokens
from ..errors import ValidationError
from ..registry import ACCOUNT_ID_RE, AccountConflictError, AccountError, AccountNotFoundError
from ..settings import ConfigError
from .api import bp
from .auth import current_scope
from .context import ctx, error
from .scoping import need_account, need_admin, need_write

PUT_FIELDS = (
    "access_token",
    "login",
    "page_id",
    "token_expires_at",
    "token_issued_at",
    "rates",
    "burst",
    "graph_url",
    "callback_url",
    "disabled",
)


def _accounts() -> Accounts:
    web = ctx()
    return Accounts(web.settings, web.redis)


@bp.errorhandler(AccountNotFoundError)
def _no_account(e: AccountNotFoundError) -> ResponseReturnValue:
    return error(404, "not_found", str(e))


@bp.errorhandler(AccountConflictError)
def _account_conflict(e: AccountConflictError) -> ResponseReturnValue:
    return error(409, "conflict", str(e))


@bp.errorhandler(AccountError)
def _bad_account(e: AccountError) -> ResponseReturnValue:
    return error(422, "validation", str(e), fields={"_schema": [str(e)]})


@bp.errorhandler(ConfigError)
def _not_configured(e: ConfigError) -> ResponseReturnValue:
    return error(503, "not_configured", str(e))


#: Accounts per page of ``GET /v1/accounts``: the default and the most a ``limit`` may ask for.
ACCOUNTS_PAGE, ACCOUNTS_PAGE_MAX = 500, 1000


def account_page() -> dict[str, Any]:
    """``GET /v1/accounts?limit=&after=``: the operator view of the accounts in scope, with their
    registry state, by account id: at most ``limit`` (default 500) after the account id ``after``;
    ``next`` is the ``after`` of the next page (``null`` on the last).  Only the page's accounts are
    read from Redis.

    Raises:
        ValidationError: ``limit`` is not 1 to 1000, or ``after`` is not an account id.
    """
    from ..admin import known_accounts

    args = flask.request.args
    raw_limit, after = args.get("limit", str(ACCOUNTS_PAGE)), args.get("after")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= ACCOUNTS_PAGE_MAX:
        raise ValidationError({"limit": [f"must be an integer from 1 to {ACCOUNTS_PAGE_MAX}"]})
    if after is not None and not ACCOUNT_ID_RE.fullmatch(after):
        raise ValidationError({"after": ["must be an account id (letters, digits, _ and -)"]})
    scope = current_scope()
    names = [a for a in known_accounts(ctx().store) if a > (after or "") and scope.covers(a)]
    page = names[: int(raw_limit)]
    more = len(names) > len(page)
    return {"accounts": account_rows(page), "next": page[-1] if more else None}


def account_rows(names: list[str]) -> list[dict[str, Any]]:
    """The rows of ``GET /v1/accounts`` for ``names``."""
    from ..admin import account_states

    infos = {i.account: i for i in _accounts().list(only=set(names))}
    out = []
    for state in account_states(ctx().store, names):
        row = state.to_dict()
        info = infos.get(state.account)
        if info is not None:
            row.update(
                state=info.state,
                source=info.source,
                login=info.login,
                token_fingerprint=info.token_fingerprint,
                token_expires_at=info.token_expires_at,
                refresh=info.refresh,
            )
        out.append(row)
    return out


@bp.get("/accounts/<account>")
def get_account(account: str) -> ResponseReturnValue:
    if not current_scope().covers(account):
        raise AccountNotFoundError(f"no account {account}")
    return flask.jsonify(_accounts().get(account).to_dict())


@bp.put("/accounts/<account>")
def put_account(account: str) -> ResponseReturnValue:
    need_admin()
    try:
        body = json.loads(flask.request.get_data())
    except (ValueError, RecursionError):
        return error(400, "bad_request", "the body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(body) - set(PUT_FIELDS))
    if unknown:
        raise ValidationError({name: ["Unknown field."] for name in unknown})
    if not isinstance(body.get("access_token"), str) or not body["access_token"]:
        raise ValidationError({"access_token": ["Missing data for required field."]})
    if "disabled" in body and not isinstance(body["disabled"], bool):
        raise ValidationError({"disabled": ["Not a valid boolean."]})
    accounts = _accounts()
    existed = accounts.registry.exists(account)
    disabled = body.pop("disabled", None)
    info = accounts.add(
        account,
        body.pop("access_token", None),
        login=body.pop("login", "instagram"),
        replace=True,
        **body,
    )
    if disabled is True:
        info = accounts.disable(account)
    elif disabled is False:
        info = accounts.enable(account)
    return flask.jsonify(info.to_dict()), 200 if existed else 201


@bp.delete("/accounts/<account>")
def delete_account(account: str) -> ResponseReturnValue:
    need_admin()
    jobs = flask.request.args.get("jobs")
    if jobs is None:
        raise ValidationError({"jobs": ["say what happens to its queued jobs: keep, fail or cancel"]})
    return flask.jsonify(_accounts().remove(account, jobs=jobs))


@bp.get("/api-tokens")
def list_api_tokens() -> ResponseReturnValue:
    need_admin()
    return flask.jsonify({"api_tokens": ApiTokens(ctx().settings, ctx().redis).list()})


@bp.post("/api-tokens")
def create_api_token() -> ResponseReturnValue:
    need_admin()
    try:
        body = json.loads(flask.request.get_data())
    except (ValueError, RecursionError):
        return error(400, "bad_request", "the body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "bad_request", "the body must be a JSON object")
    unknown = sorted(set(body) - {"name", "role", "accounts"})
    if unknown:
        raise ValidationError({n: ["Unknown field."] for n in unknown})
    name, role, accounts = body.get("name"), body.get("role"), body.get("accounts")
    if accounts is not None and not isinstance(accounts, list):
        raise ValidationError({"accounts": ["a list of account ids"]})
    bad = [a for a in accounts or () if not isinstance(a, str) or not ACCOUNT_ID_RE.match(a)]
    if bad:
        raise ValidationError(
            {"accounts": [f"not an account id (letters, digits, _ and -, 1 to 64): {bad[0]!r}"]}
        )
    if not isinstance(name, str) or not isinstance(role, str):
        raise ValidationError(
            {f: ["a string is required"] for f in ("name", "role") if not isinstance(body.get(f), str)}
        )
    token = ApiTokens(ctx().settings, ctx().redis).create(name, role, accounts)
    shown = sorted(accounts) if accounts and role != "admin" else []  # []: every account (admin)
    return flask.jsonify({"name": name, "role": role, "accounts": shown, "token": token}), 201


@bp.delete("/api-tokens/<name>")
def delete_api_token(name: str) -> ResponseReturnValue:
    need_admin()
    if not ApiTokens(ctx().settings, ctx().redis).remove(name):
        return error(404, "not_found", f"no API token named {name!r}")
    return flask.jsonify({"removed": name})


@bp.delete("/people/<igsid>")
def forget_person(igsid: str) -> ResponseReturnValue:
    """Forget a person on ``account`` (or, for an admin token over every account, on all of them).

    200 ``{"accounts": [report...], "complete", "in_flight"}``; ``complete`` false: a send was in
    flight, call again once it ended. 403: a viewer, or an account outside the token's scope.
    """
    from ..forget import check_igsid

    need_write()
    check_igsid(igsid)
    account = flask.request.args.get("account") or None
    accounts = _accounts()
    if account is None:
        need_account(None)  # every account: admin-wide tokens only
        reports = accounts.forget_everywhere(igsid)
    else:
        reports = [accounts.forget(need_account(account) or account, igsid)]
    in_flight = sum(r.in_flight for r in reports)
    return flask.jsonify(
        {"accounts": [r.to_dict() for r in reports], "complete": in_flight == 0, "in_flight": in_flight}
    )
