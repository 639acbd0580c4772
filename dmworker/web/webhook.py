"""``/webhooks/instagram``: Meta's verification handshake and signed inbound events (graph-api.md §7).

A POST is checked before anything else: ``X-Hub-Signature-256`` must be ``sha256=<hex>`` of
HMAC-SHA256(app secret, raw body), compared in constant time; otherwise 403 and nothing is read
or recorded.  Then, per ``entry`` and per ``messaging`` event, one :meth:`LaneStore.inbound` call
de-duplicates the event, opens the user's window and cancels their cancel-on-reply follow-ups:

==============================  =============  ==================  =====================
event                           opens window   cancels follow-ups  de-duplicated by
==============================  =============  ==================  =====================
message (text, attachment,      yes            yes                 message.mid
quick-reply tap)
postback                        yes            yes                 postback.mid
reaction (react / unreact)      react only     no                  reaction.mid + action
referral                        yes            no                  sha256(sender, ts, ref)
message echo, read, unknown     ignored        -                   -
==============================  =============  ==================  =====================

``changes`` with ``field: comments`` record the comment time (private-reply window).  Each new
event goes to the user's ``DMWORKER_EVENT_TASK`` / ``DMWORKER_EVENT_CALLBACK``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import flask
from flask.typing import ResponseReturnValue

from ..lifecycle import KEEP_INBOUND_MS
from ..schemas.send import recipient_error
from .context import WebContext, ctx, error

log = logging.getLogger("dmworker.web.webhook")

bp = flask.Blueprint("webhook", __name__)

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")


def signature_ok(secret: str | None, raw: bytes, header: str | None) -> bool:
    """Whether ``header`` is ``sha256=<HMAC-SHA256(s, raw)>`` for one of the app secrets in
    ``secret`` (``DMWORKER_APP_SECRET``: one or more, comma-separated, one per Meta app).

    Every secret is tried, each compared in constant time, with no early exit: the time taken says
    nothing about which app (if any) signed the body.
    """
    if not secret or not header:
        return False
    m = _SIGNATURE.fullmatch(header.strip())
    if m is None:
        return False
    given = m.group(1).lower()
    ok = False
    for one in (s.strip() for s in secret.split(",")):
        if one:
            expected = hmac.new(one.encode(), raw, hashlib.sha256).hexdigest()
            ok |= hmac.compare_digest(expected, given)
    return ok


@bp.get("/webhooks/instagram")
def verify() -> ResponseReturnValue:
    args = flask.request.args
    expected = ctx().settings.verify_token
    given = args.get("hub.verify_token", "")
    if (
        args.get("hub.mode") == "subscribe"
        and expected
        and hmac.compare_digest(given.encode(), expected.encode())
    ):
        return flask.Response(
            args.get("hub.challenge", ""),
            200,
            mimetype="text/plain",
            headers={"X-Content-Type-Options": "nosniff"},
        )
    log.warning("webhook verification refused (wrong mode or verify token)")
    return error(403, "forbidden", "verification failed")


@bp.post("/webhooks/instagram")
def receive() -> ResponseReturnValue:
    """Check the signature, then record every event (counted in ``dmworker_webhook_*``)."""
    web = ctx()
    count = web.telemetry.webhook
    raw = flask.request.get_data(cache=False)
    if not signature_ok(web.settings.app_secret, raw, flask.request.headers.get("X-Hub-Signature-256")):
        log.warning(
            "webhook refused: %s",
            "bad or missing signature" if web.settings.app_secret else "no DMWORKER_APP_SECRET configured",
        )
        count("bad_signature")
        return error(403, "forbidden", "invalid or missing X-Hub-Signature-256")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        count("bad_request")
        return error(400, "bad_request", "the body is not valid JSON")
    if not isinstance(body, dict):
        count("bad_request")
        return error(400, "bad_request", "the body must be a JSON object")
    if body.get("object") != "instagram":
        log.info("webhook ignored: object %r", str(body.get("object"))[:40])
        count("ignored")
        return {"received": 0, "new": 0}
    tally = dict.fromkeys(EVENT_OUTCOMES, 0)
    new: list[dict[str, Any]] = []
    ok = False
    try:
        for entry in _list(body.get("entry")):
            if isinstance(entry, dict):
                for outcome, n in _entry(web, entry, new).items():
                    tally[outcome] += n
        ok = True
    finally:  # Redis failing half-way (503, Meta redelivers): what was recorded still goes out
        for event in new:
            web.deliver(event)
        received = sum(tally.values())
        count("ok" if ok else "error", received=received, **tally)
    return {"received": received, "new": len(new)}


#: What became of one event of a webhook POST: recorded for the first time (``new``), delivered
#: before (``duplicate``), not a kind dmworker records (``ignored``: echo, read, delivery, unknown,
#: malformed, the account's own), or for an account this deployment does not serve (``unserved``).
EVENT_OUTCOMES = ("new", "duplicate", "ignored", "unserved")


def _entry(web: WebContext, entry: Mapping[str, Any], out: list[dict[str, Any]]) -> dict[str, int]:
    """Record one ``entry``: append its new events to ``out``; how many of its events had each
    outcome (keys: :data:`EVENT_OUTCOMES`)."""
    tally = dict.fromkeys(EVENT_OUTCOMES, 0)
    entry_id = str(entry.get("id", ""))
    messaging = _list(entry.get("messaging"))
    changes = _list(entry.get("changes"))
    seen = len(messaging) + len(changes)
    if entry_id not in web.settings.accounts:  # never filed under another account
        log.warning(
            "webhook entry for an account this deployment does not serve ignored: %s (%d events)",
            entry_id[:40] or "(no id)",
            seen,
        )
        tally["unserved"] = seen
        return tally
    account = entry_id
    _housekeep(web, account)
    for ev in messaging:
        outcome, got = _messaging(web, account, ev, _ms(entry.get("time")))
        tally[outcome] += 1
        if got is not None:
            out.append(got)
    for change in changes:
        got = _comment(web, account, change, _ms(entry.get("time")))
        if got is not None:
            tally["new"] += 1
            out.append(got)
            continue
        # not new: a redelivery of a comment (already recorded), or not a comment of another user
        # (the guards of _comment, before its HSETNX)
        value = change.get("value") if isinstance(change, dict) else None
        author = value.get("from") if isinstance(value, dict) else None
        user = str(author.get("id", "")) if isinstance(author, dict) else ""
        recordable = (
            isinstance(value, dict)
            and change.get("field") == "comments"
            and isinstance(value.get("id"), str)
            and bool(value.get("id"))
            and user != account
        )
        tally["duplicate" if recordable else "ignored"] += 1
    return tally


def classify(ev: Mapping[str, Any], sender: str, ts: int) -> tuple[str, str, bool, bool] | None:
    """(kind, event id, opens window, cancels follow-ups) of a messaging event, ``None`` to ignore it."""
    for kind in ("message", "postback", "reaction", "referral"):
        part = ev.get(kind)
        if kind not in ev:
            continue
        if not isinstance(part, dict):
            return None
        if kind == "message" and (part.get("is_echo") or part.get("is_deleted")):
            return None
        mid = part.get("mid")
        if kind == "referral" or not isinstance(mid, str) or not mid:
            ref = part.get("ref") if kind == "referral" else part
            digest = hashlib.sha256(
                json.dumps([kind, sender, ts, ref], sort_keys=True, default=str).encode()
            ).hexdigest()
            return kind, f"{kind}:{digest}", True, kind in ("message", "postback")
        if kind == "reaction":
            action = str(part.get("action", ""))
            return kind, f"reaction:{mid}:{action}", action == "react", False
        return kind, f"{kind}:{mid}", True, True
    return None  # read, delivery, unknown kinds


def _messaging(
    web: WebContext, account: str, ev: Any, entry_ms: int | None
) -> tuple[str, dict[str, Any] | None]:
    """Record one messaging event: its outcome (``new``, ``duplicate`` or ``ignored``) and, when
    new, the event to deliver."""
    if not isinstance(ev, dict):
        return "ignored", None
    if _receipt(web, account, ev):
        return "ignored", None  # a receipt about our own messages: recorded on the jobs, not delivered
    sender = ev.get("sender")
    user = sender.get("id") if isinstance(sender, dict) else None
    if not isinstance(user, (str, int)) or isinstance(user, bool) or str(user) in ("", account):
        return "ignored", None
    user = str(user)
    ts = _ms(ev.get("timestamp")) or entry_ms or int(time.time() * 1000)
    what = classify(ev, user, ts)
    if what is None:
        log.debug("webhook event ignored (%s)", ",".join(sorted(k for k in ev if isinstance(k, str)))[:80])
        return "ignored", None
    kind, event_id, opens, cancels = what
    is_new, cancelled = web.store.inbound(account, user, event_id, ts, opens_window=opens, cancels=cancels)
    reaction = ev.get("reaction")
    if is_new and kind == "reaction" and isinstance(reaction, dict) and isinstance(reaction.get("mid"), str):
        detail = f"{reaction.get('action', '')}:{reaction.get('reaction') or reaction.get('emoji') or ''}"
        web.store.observe(account, reaction["mid"], "reaction", detail[:40])  # a reaction to our message
    if not is_new:
        return "duplicate", None
    if cancelled:
        log.info(
            "%s from the user cancelled %d follow-up(s)",
            kind,
            len(cancelled),
            extra={"account": account, "recipient": user},
        )
    return "new", {"account": account, "user": user, "kind": kind, "timestamp_ms": ts, "event": ev}


def _receipt(web: WebContext, account: str, ev: Mapping[str, Any]) -> bool:
    """Seen receipts and echoes of our own messages: recorded on the jobs they concern.

    ``read`` (``messaging_seen``): the user saw our messages up to ``read.mid`` (Instagram) or up
    to ``read.watermark`` (ms, Messenger style): those sent jobs become ``seen``.  A ``message`` with
    ``is_echo``: the echo of a message we sent, noted on its job's timeline.  Returns whether ``ev``
    was one of these.
    """
    read = ev.get("read")
    sender = ev.get("sender")
    user = str(sender.get("id", "")) if isinstance(sender, dict) else ""
    if isinstance(read, dict):
        mid, mark = read.get("mid"), read.get("watermark")
        if user and user != account and isinstance(mid, str) and mid:
            web.store.seen(account, user, message_id=mid)
        elif user and user != account and isinstance(mark, (int, float)) and not isinstance(mark, bool):
            web.store.seen(account, user, watermark_ms=_ms(mark) or 0)
        return True
    message = ev.get("message")
    if isinstance(message, dict) and message.get("is_echo"):
        mid = message.get("mid")
        if isinstance(mid, str) and mid:
            web.store.observe(account, mid, "echo")
        return True
    return False


def _comment(web: WebContext, account: str, change: Any, entry_ms: int | None) -> dict[str, Any] | None:
    """Record a comment's time (HSETNX: the first delivery wins) and its author (the comments of
    each author, kept 7 days after their last one, so the person can be forgotten); the event if
    it is new."""
    if not isinstance(change, dict) or change.get("field") != "comments":
        return None
    value = change.get("value")
    comment_id = value.get("id") if isinstance(value, dict) else None
    if not isinstance(comment_id, str) or not comment_id or not isinstance(value, dict):
        return None
    author = value.get("from")
    user = str(author.get("id", "")) if isinstance(author, dict) else ""
    if user == account:
        return None
    ts = _ms(value.get("timestamp")) or entry_ms or int(time.time() * 1000)
    k = web.store.acct(account)
    if not web.redis.hsetnx(k.comments, comment_id, ts):
        return None
    pipe = web.redis.pipeline(transaction=False)
    pipe.zadd(k.comment_times, {comment_id: ts}, nx=True)  # forgotten 7 days after the comment
    if user and recipient_error("text", user) is None:
        pipe.sadd(k.comment_authors(user), comment_id)
        pipe.pexpire(k.comment_authors(user), KEEP_INBOUND_MS)
    pipe.execute()
    return {"account": account, "user": user, "kind": "comment", "timestamp_ms": ts, "event": change}


def _housekeep(web: WebContext, account: str) -> None:
    """Make sure the account's windows and comments get trimmed (at the latest in 7 days)."""
    at = int(time.time() * 1000) + KEEP_INBOUND_MS
    web.redis.zadd(web.store.keys.housekeep, {account: at}, nx=True)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _ms(value: Any) -> int | None:
    """An epoch time in milliseconds (values that look like seconds are scaled)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return None
    return int(value * 1000) if value < 100_000_000_000 else int(value)
