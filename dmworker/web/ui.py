"""The operator's dashboard under ``/ui/``: server-rendered pages, no build step, no CDN, no script.

=================================  ==========================================================
``/ui/login``                      sign in with an API token (see :mod:`.ui_session`)
``/ui/``                           accounts (state, limits, send rate, backlog and drain time,
                                   last hour), workers alive, the cluster's sends per minute
``/ui/jobs``                       search by account, recipient, state, message id, key
``/ui/jobs/<id>``                  a job: payload, timeline, cancel / replay
``/ui/dlq``                        dead letters by account, error, since; bulk replay / purge
``/ui/followups``                  scheduled follow-ups by account, recipient, key; cancel
``/ui/accounts/<id>``              an account: pause / resume, rate limits, token (admin)
``/ui/audit``                      who did what, when, with which filter, how many
=================================  ==========================================================

Viewers see everything in their scope and act on nothing; producers act on their accounts;
admins on every account and set tokens.  Every action is recorded in the audit log
(:mod:`dmworker.audit`).  Lists are pages of indexes (:mod:`dmworker.dashboard`): no page scans Redis.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import flask
from flask.typing import ResponseReturnValue

from .. import dashboard as dash
from ..accounts import Accounts
from ..admin import resume_account
from ..audit import AuditLog
from ..errors import JobNotFoundError, JobStateError
from ..jobindex import BUCKETS
from ..keys import account_of_job
from ..registry import AccountError
from ..settings import RATE_CLASSES
from . import ui_session
from .context import ctx

bp = flask.Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")

PAGE = 50
#: Longest pause an operator can set from the dashboard (minutes).
MAX_PAUSE_MIN = 7 * 24 * 60
_PUBLIC = {"ui.login", "ui.login_post", "ui.static"}


class Refused(Exception):
    """An action the signed-in role or scope does not allow (HTTP 403 page)."""


# ----------------------------------------------------------------------------------- plumbing
@bp.before_request
def _signed_in() -> ResponseReturnValue | None:
    if flask.request.endpoint in _PUBLIC:
        return None
    session = ui_session.load()
    if session is None:
        target = flask.request.full_path if flask.request.method == "GET" else "/ui/"
        return flask.redirect(flask.url_for("ui.login", next=target.rstrip("?")))
    if flask.request.method == "POST" and not ui_session.csrf_ok(session):
        return _page(
            "message.html",
            title="Refused",
            message="The form expired or came from another site: reload the page and try again.",
            status=403,
        )
    return None


@bp.after_request
def _headers(resp: flask.Response) -> flask.Response:
    return ui_session.harden(resp)


@bp.errorhandler(Refused)
def _refused(e: Refused) -> ResponseReturnValue:
    return _page("message.html", title="Not allowed", message=str(e), status=403)


@bp.errorhandler(dash.SearchError)
def _bad_search(e: dash.SearchError) -> ResponseReturnValue:
    return _page("message.html", title="Search", message=str(e), status=400)


def _page(template: str, status: int = 200, **values: Any) -> tuple[str, int]:
    session = getattr(flask.g, ui_session._G_SESSION, None)
    html = flask.render_template(
        f"ui/{template}", session=session, fmt=dash.fmt_ms, ago=_ago, qs=_qs, BUCKETS=BUCKETS, **values
    )
    return html, status


def _qs(**params: Any) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _ago(ms: int | None) -> str:
    if not ms:
        return "-"
    d = (time.time() * 1000 - ms) / 1000
    future = d < 0
    d = abs(d)
    text = (
        f"{d:.0f} s"
        if d < 90
        else f"{d / 60:.0f} min"
        if d < 5400
        else f"{d / 3600:.1f} h"
        if d < 172800
        else f"{d / 86400:.1f} d"
    )
    return f"in {text}" if future else f"{text} ago"


def _scope_accounts() -> frozenset[str] | None:
    return ui_session.current().scope.accounts


def _covers(account: str) -> bool:
    return ui_session.current().scope.covers(account)


def _account_arg(name: str = "account") -> str:
    account = (flask.request.values.get(name) or "").strip()
    if account and not _covers(account):
        raise Refused(f"your token does not cover account {account}")
    return account


def _may_write(account: str) -> None:
    scope = ui_session.current().scope
    if not scope.can_write:
        raise Refused(f"a {scope.role} token can look but not act")
    if not scope.covers(account):
        raise Refused(f"your token does not cover account {account}")


def _audit(action: str, account: str = "", count: int = 0, detail: str = "", **flt: Any) -> None:
    s = ui_session.current()
    AuditLog(ctx().settings.key_prefix, ctx().redis).record(
        who=s.who,
        role=s.scope.role,
        action=action,
        account=account,
        count=count,
        detail=detail,
        filter={k: v for k, v in flt.items() if v not in (None, "")},
    )


def _since(raw: str) -> int:
    """``1h``, ``30m``, ``7d``, ``2026-12-01T03:00`` (UTC) or epoch ms -> epoch ms (0: none)."""
    raw = raw.strip()
    if not raw:
        return 0
    m = re.fullmatch(r"(\d+)\s*([mhd])", raw)
    if m:
        unit = {"m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]
        return int(time.time() * 1000) - int(m.group(1)) * unit
    if raw.isdigit():
        return int(raw)
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise dash.SearchError("since: give 30m, 1h, 7d, an ISO time (UTC) or epoch ms") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


# ----------------------------------------------------------------------------------- sign-in
@bp.get("/login")
def login() -> ResponseReturnValue:
    nonce = flask.request.cookies.get(ui_session.LOGIN_COOKIE) or _new_nonce()
    html, status = _page(
        "login.html", nonce=nonce, next=_safe_next(flask.request.args.get("next")), error=None
    )
    resp = flask.make_response(html, status)
    resp.set_cookie(
        ui_session.LOGIN_COOKIE,
        nonce,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=flask.request.is_secure,
        max_age=3600,
    )
    return resp


def _new_nonce() -> str:
    import secrets

    return secrets.token_urlsafe(16)


def _safe_next(raw: str | None) -> str:
    return raw if raw and raw.startswith("/ui/") and not raw.startswith("//") else "/ui/"


@bp.post("/login")
def login_post() -> ResponseReturnValue:
    import hmac

    nonce = flask.request.cookies.get(ui_session.LOGIN_COOKIE, "")
    given = flask.request.form.get("csrf", "")
    if not nonce or not hmac.compare_digest(nonce.encode(), given.encode()) or not ui_session.same_origin():
        return _page(
            "login.html",
            nonce=nonce or _new_nonce(),
            next="/ui/",
            error="The form expired: try again.",
            status=403,
        )
    token = flask.request.form.get("token", "").strip()
    found = ui_session.resolve_token(token) if token and len(token) <= 512 else None
    if found is None:
        return _page(
            "login.html",
            nonce=nonce,
            next=_safe_next(flask.request.form.get("next")),
            error="This token is not valid.",
            status=401,
        )
    scope, source = found
    sid, session = ui_session.start(scope, token, source)
    flask.g.dmworker_ui_session = session
    resp = flask.redirect(_safe_next(flask.request.form.get("next")))
    ui_session.set_cookie(resp, sid)
    resp.delete_cookie(ui_session.LOGIN_COOKIE, path="/ui")
    return resp


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    ui_session.end(ui_session.current())
    resp = flask.redirect(flask.url_for("ui.login"))
    resp.delete_cookie(ui_session.COOKIE, path="/ui")
    return resp


# ----------------------------------------------------------------------------------- overview
@bp.get("/")
def overview() -> ResponseReturnValue:
    store = ctx().store
    q = (flask.request.args.get("q") or "").strip()
    accounts = dash.known_accounts(store, _scope_accounts())
    if q:
        accounts = [a for a in accounts if q in a]
    try:
        page_no = max(1, int(flask.request.args.get("page") or 1))
    except ValueError:
        page_no = 1
    pages = max(1, -(-len(accounts) // dash.ACCOUNTS_PER_PAGE))
    page_no = min(page_no, pages)
    shown = accounts[(page_no - 1) * dash.ACCOUNTS_PER_PAGE : page_no * dash.ACCOUNTS_PER_PAGE]
    rows = dash.account_page(store, shown)
    cl = dash.cluster(store, _scope_accounts())
    sent = cl["per_minute"]["sent"]
    return _page(
        "overview.html",
        rows=rows,
        q=q,
        page_no=page_no,
        pages=pages,
        n_accounts=len(accounts),
        cluster=cl,
        points=dash.sparkline(sent),
        peak=max(sent),
        sent_hour=sum(sent),
        now_ms=cl["now_ms"],
    )


# ----------------------------------------------------------------------------------- jobs
@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    store = ctx().store
    args = flask.request.args
    account = _account_arg()
    q = dash.JobQuery(
        recipient=(args.get("recipient") or "").strip(),
        state=(args.get("state") or "").strip(),
        message_id=(args.get("message_id") or "").strip(),
        key=(args.get("key") or "").strip(),
    )
    searched = account or any([q.recipient, q.state, q.message_id, q.key])
    result, total = None, None
    if searched:
        accounts = dash.search_accounts(store, account, _scope_accounts())
        result = dash.search_jobs(store, accounts, q, after=args.get("after") or None, limit=PAGE)
        total = dash.count_jobs(store, account, q) if account else None
    return _page("jobs.html", q=q, account=account, result=result, total=total, accounts=_account_choices())


def _account_choices() -> list[str]:
    scope = _scope_accounts()
    if scope is not None:
        return sorted(scope)
    r: Any = ctx().redis
    members: list[str] = r.srandmember(ctx().store.keys.accounts, 200) or []
    return sorted(members)


def _job_or_404(job_id: str) -> tuple[str, Any]:
    try:
        account = account_of_job(job_id)
    except ValueError:
        flask.abort(404)
    if not _covers(account):
        flask.abort(404)  # as for an unknown job: nothing is learned about other accounts
    try:
        status = ctx().outbox.status(job_id)
    except JobNotFoundError:
        flask.abort(404)
    return account, status


@bp.get("/jobs/<job_id>")
def job(job_id: str) -> ResponseReturnValue:
    import json

    account, status = _job_or_404(job_id)
    raw = ctx().redis.hget(ctx().store.acct(account).jobs, job_id)
    try:
        payload = json.dumps(json.loads(raw), indent=2, ensure_ascii=False) if raw else None
    except ValueError:
        payload = None
    timeline = [
        {
            "ms": e[0],
            "what": e[1],
            "detail": _detail(e[2] if len(e) > 2 else ""),
            "count": e[3] if len(e) > 3 else 1,
        }
        for e in status.timeline
        if isinstance(e, list) and e
    ]
    return _page(
        "job.html",
        st=status,
        payload=payload,
        timeline=timeline,
        account=account,
        done=flask.request.args.get("done"),
    )


def _detail(value: Any) -> str:
    """A timeline detail as text: an epoch-ms time (a due time, a wait) as a UTC time."""
    text = str(value or "")
    return f"until {dash.fmt_ms(int(text))}" if text.isdigit() and len(text) == 13 else text


@bp.post("/jobs/<job_id>/cancel")
def job_cancel(job_id: str) -> ResponseReturnValue:
    account, _ = _job_or_404(job_id)
    _may_write(account)
    tag, _found, state = ctx().store.cancel(account, job_id=job_id, reason="cancelled from the dashboard")
    _audit(
        "job.cancel",
        account,
        1 if tag == "cancelled" else 0,
        detail=job_id if tag == "cancelled" else f"{job_id}: {state}",
    )
    return flask.redirect(
        flask.url_for(
            "ui.job", job_id=job_id, done="cancelled" if tag == "cancelled" else f"not cancelled ({state})"
        )
    )


@bp.post("/jobs/<job_id>/replay")
def job_replay(job_id: str) -> ResponseReturnValue:
    account, _ = _job_or_404(job_id)
    _may_write(account)
    try:
        ctx().dead_letters.replay(job_id)
        done, n = "replayed", 1
    except JobStateError as e:
        done, n = f"not replayed ({e.state})", 0
    _audit("job.replay", account, n, detail=job_id)
    return flask.redirect(flask.url_for("ui.job", job_id=job_id, done=done))


# ----------------------------------------------------------------------------------- dead letters
def _dead_query() -> tuple[str, dash.DeadQuery, str]:
    args = flask.request.values
    since_raw = (args.get("since") or "").strip()
    return (
        _account_arg(),
        dash.DeadQuery(error=(args.get("error") or "").strip(), since_ms=_since(since_raw)),
        since_raw,
    )


@bp.get("/dlq")
def dlq() -> ResponseReturnValue:
    store = ctx().store
    account, q, since_raw = _dead_query()
    accounts, hint = _searched_accounts(account)
    result = (
        dash.search_dead(store, accounts, q, after=flask.request.args.get("after") or None, limit=PAGE)
        if hint is None
        else None
    )
    return _page(
        "dlq.html",
        account=account,
        q=q,
        since=since_raw,
        result=result,
        hint=hint,
        kinds=dash.error_kinds(store, accounts),
        accounts=_account_choices(),
        done=flask.request.args.get("done"),
    )


def _searched_accounts(account: str) -> tuple[list[str], str | None]:
    """The accounts a list covers, or none and a hint asking for one (too many to list them all)."""
    try:
        return dash.search_accounts(ctx().store, account, _scope_accounts()), None
    except dash.SearchError as e:
        return [], str(e)


def _bulk_target() -> tuple[str, str, dash.DeadQuery, str, list[str]]:
    """A bulk action's request: action, the account named (or ""), the dead-letter query, ``since``
    as typed, and the accounts it covers — every one writable by the user (else 403)."""
    action = flask.request.values.get("action", "")
    if action not in ("replay", "purge"):
        raise dash.SearchError("action must be replay or purge")
    account, q, since_raw = _dead_query()
    accounts = dash.search_accounts(ctx().store, account, _scope_accounts())
    for a in accounts:
        _may_write(a)
    return action, account, q, since_raw, accounts


@bp.get("/dlq/bulk")
def dlq_bulk_confirm() -> ResponseReturnValue:
    action, account, q, since_raw, accounts = _bulk_target()
    count = dash.search_dead(ctx().store, accounts, q, limit=1).total or 0
    return _page(
        "dlq_confirm.html",
        action=action,
        account=account,
        q=q,
        since=since_raw,
        count=count,
        n_accounts=len(accounts),
    )


@bp.post("/dlq/bulk")
def dlq_bulk() -> ResponseReturnValue:
    store = ctx().store
    action, account, q, since_raw, accounts = _bulk_target()
    dl = ctx().dead_letters
    done = 0
    started = time.monotonic()
    for a in accounts:
        n = 0
        for batch in dash.dead_ids(store, a, q):
            n += dl.replay_ids(a, batch) if action == "replay" else dl.purge_ids(a, batch)
        done += n
        _audit(
            f"dlq.{action}",
            a,
            n,
            error=q.error,
            since=since_raw,
            named=account or "(every account in scope)",
            shown_before_confirming=flask.request.form.get("expected", ""),
        )
    took = time.monotonic() - started
    verb = "replayed" if action == "replay" else "purged"
    msg = f"{done} dead letters {verb} in {took:.1f} s"
    return flask.redirect(
        flask.url_for(
            "ui.dlq", account=account or None, error=q.error or None, since=since_raw or None, done=msg
        )
    )


# ----------------------------------------------------------------------------------- follow-ups
@bp.get("/followups")
def followups() -> ResponseReturnValue:
    args = flask.request.args
    account = _account_arg()
    recipient, key = (args.get("recipient") or "").strip(), (args.get("key") or "").strip()
    accounts, hint = _searched_accounts(account)
    result = (
        dash.search_followups(
            ctx().store, accounts, recipient=recipient, key=key, after=args.get("after") or None, limit=PAGE
        )
        if hint is None
        else None
    )
    return _page(
        "followups.html",
        account=account,
        recipient=recipient,
        key=key,
        result=result,
        hint=hint,
        accounts=_account_choices(),
        done=args.get("done"),
    )


@bp.post("/followups/<job_id>/cancel")
def followup_cancel(job_id: str) -> ResponseReturnValue:
    account, _ = _job_or_404(job_id)
    _may_write(account)
    tag, _found, state = ctx().store.cancel(account, job_id=job_id, reason="cancelled from the dashboard")
    _audit("followup.cancel", account, 1 if tag == "cancelled" else 0, detail=job_id)
    back = flask.request.form.get("back") or flask.url_for("ui.followups")
    done = "cancelled" if tag == "cancelled" else f"not cancelled ({state})"
    sep = "&" if "?" in back else "?"
    return flask.redirect(f"{back if back.startswith('/ui/') else '/ui/followups'}{sep}{_qs(done=done)}")


# ----------------------------------------------------------------------------------- accounts
@bp.get("/accounts/<account>")
def account_view(account: str) -> ResponseReturnValue:
    if not _covers(account):
        flask.abort(404)
    store = ctx().store
    row = dash.account_page(store, [account])[0]
    accounts = Accounts(ctx().settings, ctx().redis)
    try:
        info = accounts.get(account).to_dict()
    except AccountError:
        info = None
    r: Any = ctx().redis
    per_minute = dash.hist_counts(r.hgetall(store.acct(account).hist), dash._now_ms(store))
    return _page(
        "account.html",
        row=row,
        info=info,
        classes=RATE_CLASSES,
        done=flask.request.args.get("done"),
        points=dash.sparkline(per_minute["sent"]),
        peak=max(per_minute["sent"]),
        audit=AuditLog(ctx().settings.key_prefix, ctx().redis).latest(10, [account]),
    )


def _back(account: str, done: str) -> ResponseReturnValue:
    return flask.redirect(flask.url_for("ui.account_view", account=account, done=done))


@bp.post("/accounts/<account>/pause")
def account_pause(account: str) -> ResponseReturnValue:
    _may_write(account)
    try:
        minutes = int(flask.request.form.get("minutes") or 0)
    except ValueError:
        minutes = 0
    if not 1 <= minutes <= MAX_PAUSE_MIN:
        return _back(account, f"not paused: minutes must be 1 to {MAX_PAUSE_MIN}")
    reason = (flask.request.form.get("reason") or "").strip()[:200] or "paused from the dashboard"
    until = pause_account(account, minutes * 60_000, reason)
    _audit("account.pause", account, 1, detail=f"{minutes} min: {reason}")
    return _back(account, f"paused until {dash.fmt_ms(until)}")


def pause_account(account: str, duration_ms: int, detail: str) -> int:
    """Pause every send of ``account`` for ``duration_ms`` (reason ``operator``); returns until (ms)."""
    store = ctx().store
    now = dash._now_ms(store)
    until = now + duration_ms
    store.redis.hset(
        store.acct(account).pause,
        mapping={
            "until": until,
            "reason": "operator",
            "probe": "",
            "probe_until": 0,
            "token_fp": "",
            "fails": 0,
            "detail": detail,
            "since": now,
        },
    )
    return until


@bp.post("/accounts/<account>/resume")
def account_resume(account: str) -> ResponseReturnValue:
    _may_write(account)
    lifted = resume_account(ctx().store, account)
    _audit("account.resume", account, 1 if lifted else 0)
    return _back(account, "resumed" if lifted else "it was not paused")


@bp.post("/accounts/<account>/rate")
def account_rate(account: str) -> ResponseReturnValue:
    _may_write(account)
    klass = flask.request.form.get("class", "text")
    rate = (flask.request.form.get("rate") or "").strip()
    try:
        Accounts(ctx().settings, ctx().redis).set_rates(account, {klass: rate})
    except AccountError as e:
        return _back(account, f"rate not changed: {e}")
    _audit("account.rate", account, 1, detail=f"{klass}={rate}")
    return _back(account, f"{klass} rate set to {rate}")


@bp.post("/accounts/<account>/token")
def account_token(account: str) -> ResponseReturnValue:
    scope = ui_session.current().scope
    if not scope.is_admin:
        raise Refused("only an admin token can set an account's token")
    token = (flask.request.form.get("token") or "").strip()
    if not token:
        return _back(account, "token not changed: it is empty")
    try:
        info = Accounts(ctx().settings, ctx().redis).set_token(account, token)
    except AccountError as e:
        return _back(account, f"token not changed: {e}")
    _audit("account.token", account, 1, detail=f"fingerprint {info.token_fingerprint}")
    return _back(account, f"token set (fingerprint {info.token_fingerprint})")


# ----------------------------------------------------------------------------------- audit
@bp.get("/audit")
def audit() -> ResponseReturnValue:
    scope = _scope_accounts()
    entries = AuditLog(ctx().settings.key_prefix, ctx().redis).latest(200, scope)
    return _page("audit.html", entries=entries)
