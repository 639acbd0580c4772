"""``/v1/callbacks``: dead callbacks over HTTP (bearer auth; scoped like dead letters).

==========================================  ===================================  ===================
``GET /v1/callbacks/dead?account=&limit=``  dead callbacks, newest first         any (own accounts)
``POST /v1/callbacks/dead/replay``          replay ``{"ids": [...]}``, else       admin, producer
                                            ``account=<id>``, else every one      (own accounts;
                                            (admin-wide only)                     every: admin-wide)
==========================================  ===================================  ===================

A token scoped to some accounts sees and replays only theirs: an id of another account is
skipped (not counted), as if it did not exist; naming another account is a 403.
"""

from __future__ import annotations

import time
from typing import Any

import flask
from flask.typing import ResponseReturnValue

from ..callbacks_store import CallbackStore
from ..errors import ValidationError
from .api import MAX_DLQ_LIMIT
from .auth import current_scope, require_bearer
from .context import ctx, error
from .scoping import Forbidden, need_account, need_write

bp = flask.Blueprint("callbacks", __name__, url_prefix="/v1/callbacks")
bp.before_request(require_bearer)


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError) -> ResponseReturnValue:
    return flask.jsonify({"error": "validation", "fields": e.messages}), 422


@bp.errorhandler(Forbidden)
def _forbidden(e: Forbidden) -> ResponseReturnValue:
    return error(403, "forbidden", str(e))


def _store() -> CallbackStore:
    s = ctx().settings
    return CallbackStore(ctx().redis, s.key_prefix, s.dlq_retention_s * 1000, s.dlq_max)


@bp.get("/dead")
def list_dead() -> ResponseReturnValue:
    raw = flask.request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DLQ_LIMIT:
        raise ValidationError({"limit": [f"must be an integer from 1 to {MAX_DLQ_LIMIT}"]})
    limit, account = int(raw), flask.request.args.get("account") or None
    scope, store = current_scope(), _store()
    if account is not None or scope.accounts is None:
        items = store.list(need_account(account), limit)
    else:
        items = [d for a in sorted(scope.accounts) for d in store.list(a, limit)]
        items = sorted(items, key=lambda d: d.dead_ms, reverse=True)[:limit]
    return flask.jsonify({"dead_callbacks": [d.to_dict() for d in items]})


@bp.post("/dead/replay")
def replay_dead() -> ResponseReturnValue:
    need_write()
    body: Any = flask.request.get_json(silent=True) if flask.request.content_length else {}
    if not isinstance(body, dict):
        raise ValidationError({"_schema": ["expected a JSON object"]})
    ids = body.get("ids")
    if "ids" in body and not (isinstance(ids, list) and all(isinstance(i, str) and i for i in ids)):
        raise ValidationError({"ids": ["must be a list of event ids"]})
    now_ms = int(time.time() * 1000)
    account = flask.request.args.get("account") or None
    if ids is not None:
        scope = current_scope()
        mine = [i for i in ids if scope.covers(i.partition("/")[0]) and "/" in i]
        return flask.jsonify({"replayed": _store().replay(mine, now_ms=now_ms)})
    return flask.jsonify({"replayed": _store().replay(None, need_account(account), now_ms=now_ms)})
