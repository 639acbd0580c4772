"""The producer HTTP API under ``/v1`` (bearer auth, see :mod:`.auth`): the Outbox and the operator
views over HTTP.  A job is ``{"kind": ..., "recipient": ..., <the kind's arguments>, [account,
delay, at, key, replace, cancel_on_reply, idempotency_key]}``; ``kind: "sequence"`` takes ``steps``.

Every route honours the token's role and accounts (:mod:`.scoping`): another account's job is a
404, a request naming an account outside the scope (or needing another role) a 403. Accounts and
API tokens are managed in :mod:`.api_accounts` (routes on this blueprint).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import flask
from flask.typing import ResponseReturnValue

from ..errors import (
    BacklogFullError,
    IdempotencyConflictError,
    JobNotFoundError,
    JobStateError,
    RedisUnavailableError,
    ValidationError,
    WindowClosedError,
)
from ..keys import account_of_job
from ..outbox import OPTIONS, Job
from ..schemas import recipient_error
from .auth import current_scope, require_bearer
from .context import ctx, error
from .scoping import Forbidden, check_send, dead_letters, need_account, need_write, purge_target

bp = flask.Blueprint("api", __name__, url_prefix="/v1")
bp.before_request(require_bearer)

MAX_DLQ_LIMIT = 1000
#: Longest ``key`` / ``idempotency_key`` the enqueue path accepts (characters).
MAX_KEY_CHARS = 200
#: An Idempotency-Key header leaves room for ``:<index>`` (a batch item's key is ``<header>:<i>``).
MAX_HEADER_KEY_CHARS = MAX_KEY_CHARS - 10


@bp.errorhandler(ValidationError)
def _invalid(e: ValidationError) -> ResponseReturnValue:
    if isinstance(e, IdempotencyConflictError):
        return flask.jsonify(
            {
                "error": "idempotency_conflict",
                "message": e.messages["idempotency_key"][0],
                "fields": e.messages,
                "jobs": list(e.job_ids),
            }
        ), 409
    body: dict[str, Any] = {"error": "validation", "fields": e.messages}
    if isinstance(e, WindowClosedError):
        body.update(message=e.messages["window"][0], closes_at_ms=e.closes_at_ms)
    return flask.jsonify(body), 422


@bp.errorhandler(JobNotFoundError)
def _not_found(e: JobNotFoundError) -> ResponseReturnValue:
    return error(404, "not_found", str(e))


@bp.errorhandler(Forbidden)
def _forbidden(e: Forbidden) -> ResponseReturnValue:
    return error(403, "forbidden", str(e))


@bp.errorhandler(BacklogFullError)
def _backlog(e: BacklogFullError) -> ResponseReturnValue:
    retry = max(1, math.ceil(e.retry_after_s))
    body = {
        "error": "backlog_full",
        "message": str(e),
        "account": e.account,
        "retry_after_s": e.retry_after_s,
    }
    return flask.jsonify(body), 429, {"Retry-After": str(retry)}


@bp.errorhandler(JobStateError)
def _conflict(e: JobStateError) -> ResponseReturnValue:
    return flask.jsonify({"error": "conflict", "message": str(e), "id": e.job_id, "state": e.state}), 409


@bp.errorhandler(RedisUnavailableError)
def _redis_down(e: RedisUnavailableError) -> ResponseReturnValue:
    body: dict[str, Any] = {"error": "unavailable", "message": str(e)}
    if e.queued or e.in_doubt:  # a batch that Redis failed midway: say exactly what was queued
        body.update(queued=[j.id for j in e.queued], in_doubt=list(e.in_doubt))
    return flask.jsonify(body), 503, {"Retry-After": "5"}


def _job_id(raw: str) -> str:
    """``raw`` if it is shaped like a job id of an account the token covers (else a 404, as for an
    unknown one: a token learns nothing about the jobs of other accounts)."""
    try:
        account = account_of_job(raw)
    except ValueError:
        raise JobNotFoundError(raw) from None
    if not current_scope().covers(account):
        raise JobNotFoundError(raw)
    return raw


def _account_arg() -> str | None:
    return flask.request.args.get("account") or None


# ----------------------------------------------------------------------------------- messages
@bp.post("/messages")
def post_messages() -> ResponseReturnValue:
    need_write()
    try:
        body = json.loads(flask.request.get_data())
    except (ValueError, RecursionError):
        return error(400, "bad_request", "the body is not valid JSON")
    header_key = flask.request.headers.get("Idempotency-Key") or None
    if header_key and len(header_key) > MAX_HEADER_KEY_CHARS:
        raise ValidationError({"Idempotency-Key": [f"at most {MAX_HEADER_KEY_CHARS} characters"]})
    outbox = ctx().outbox
    check_send(body, outbox.account)
    if isinstance(body, list):
        if not body:
            raise ValidationError({"_schema": ["the batch is empty"]})
        items = []
        for i, item in enumerate(body):
            if header_key and isinstance(item, dict) and "idempotency_key" not in item:
                item = {**item, "idempotency_key": f"{header_key}:{i}"}
            items.append(item)
        jobs = outbox.send_many(items)
    elif isinstance(body, dict):
        if header_key and "idempotency_key" not in body:
            body = {**body, "idempotency_key": header_key}
        jobs = [_submit_one(body)]
    else:
        return error(400, "bad_request", "the body must be a job object or a list of job objects")
    return flask.jsonify({"jobs": [_job_view(j) for j in jobs]}), 202


def _submit_one(item: Mapping[str, Any]) -> Job:
    body = dict(item)
    kind, recipient = body.pop("kind", None), body.pop("recipient", None)
    opts = {k: body.pop(k) for k in OPTIONS if k in body}
    if not isinstance(kind, str) or not isinstance(recipient, str):
        names = [n for n, v in (("kind", kind), ("recipient", recipient)) if not isinstance(v, str)]
        raise ValidationError({n: ["missing or not a string"] for n in names})
    outbox = ctx().outbox
    if kind == "sequence":
        extra = sorted(set(body) - {"steps"})
        if extra:
            raise ValidationError({name: ["Unknown field."] for name in extra})
        return outbox.submit_sequence(recipient, body.get("steps"), **opts)  # type: ignore[arg-type]
    return outbox.submit(kind, recipient, body, **opts)


def _job_view(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "ids": list(job.ids),
        "account": job.account,
        "recipient": job.recipient,
        "due_ms": job.due_ms,
        "duplicate": job.duplicate,
    }


# ----------------------------------------------------------------------------------- jobs
@bp.get("/jobs")
def find_job() -> ResponseReturnValue:
    """The job that sent Meta's ``message_id`` (in ``account``, else in the accounts the token covers)."""
    mid = flask.request.args.get("message_id", "")
    if not mid or len(mid) > 512:
        raise ValidationError({"message_id": ["required, 1 to 512 characters"]})
    scope = current_scope()
    account = _account_arg()
    if account is not None:
        need_account(account)
        return flask.jsonify(ctx().outbox.find(mid, account=account).to_dict())
    if scope.accounts is None:
        return flask.jsonify(ctx().outbox.find(mid).to_dict())
    for acct in sorted(scope.accounts):
        try:
            return flask.jsonify(ctx().outbox.find(mid, account=acct).to_dict())
        except JobNotFoundError:
            continue
    raise JobNotFoundError(f"message_id={mid}")


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> ResponseReturnValue:
    return flask.jsonify(ctx().outbox.status(_job_id(job_id)).to_dict())


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> ResponseReturnValue:
    need_write()
    job_id = _job_id(job_id)
    return _cancel(account_of_job(job_id), job_id=job_id)


@bp.delete("/followups")
def delete_followup() -> ResponseReturnValue:
    need_write()
    key = flask.request.args.get("key")
    if not key:
        raise ValidationError({"key": ["Missing data for required field."]})
    account = _account_arg() or ctx().outbox.account
    if not account:
        raise ValidationError({"account": ["no account given and no default account configured"]})
    need_account(account)
    return _cancel(account, key=key)


def _cancel(account: str, job_id: str | None = None, key: str | None = None) -> ResponseReturnValue:
    tag, found, state = ctx().store.cancel(account, job_id=job_id, key=key)
    if tag == "notfound":
        raise JobNotFoundError(job_id or f"key={key}")
    if tag == "cancelled":
        return flask.jsonify({"cancelled": True, "id": found})
    return flask.jsonify({"cancelled": False, "id": found, "state": state}), 409


# ----------------------------------------------------------------------------------- dead letters
@bp.get("/dlq")
def list_dlq() -> ResponseReturnValue:
    raw = flask.request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DLQ_LIMIT:
        raise ValidationError({"limit": [f"must be an integer from 1 to {MAX_DLQ_LIMIT}"]})
    items = dead_letters(ctx().dead_letters, _account_arg(), int(raw))
    return flask.jsonify({"dead_letters": [s.to_dict() for s in items]})


@bp.get("/dlq/<job_id>")
def show_dlq(job_id: str) -> ResponseReturnValue:
    status, job = ctx().dead_letters.show(_job_id(job_id))
    return flask.jsonify({"status": status.to_dict(), "job": job})


@bp.post("/dlq/<job_id>/replay")
def replay_dlq(job_id: str) -> ResponseReturnValue:
    need_write()
    ctx().dead_letters.replay(_job_id(job_id))
    return flask.jsonify({"replayed": True, "id": job_id})


@bp.delete("/dlq")
def purge_dlq() -> ResponseReturnValue:
    """Purge the dead letters of ``account=<id>``, or of every account with ``all=true`` (admin)."""
    return flask.jsonify({"purged": ctx().dead_letters.purge(purge_target(_account_arg()))})


# ----------------------------------------------------------------------------------- state
@bp.get("/windows/<igsid>")
def get_window(igsid: str) -> ResponseReturnValue:
    bad = recipient_error("text", igsid)
    if bad:
        raise ValidationError({"igsid": [bad]})
    account = need_account(_account_arg() or ctx().outbox.account)
    return flask.jsonify(ctx().outbox.window(igsid, account=account).to_dict())


@bp.get("/accounts")
def get_accounts() -> ResponseReturnValue:
    from .api_accounts import account_page

    return flask.jsonify(account_page())


from . import api_accounts  # noqa: E402  (registers /v1/accounts/<id> and /v1/api-tokens on bp)

__all__ = ["api_accounts", "bp"]
