"""Executing one job: the plain service function the Celery task calls (testable without Celery).

:func:`precheck` decides, without any API call, what must not be sent (expired, attempts used
up, outside the messaging window); :func:`send` calls the Graph API and maps the result or the
exception to an *outcome* — the small dict the ``step`` script records:

=============  =================================================================================
``sent``       delivered; ``mid`` = Meta's message id; ``hold_ms`` = typing pause before the next
``retry``      temporary failure: the lane holds for ``delay_ms`` (exponential backoff, full jitter)
``throttled``  the whole account pauses (``pause_ms`` or exponential); the attempt is refunded
``reauth``     Meta refused the token: the account is held until a different token is configured;
               the attempt is refunded and nothing is dead-lettered (``fp`` = the refused token's
               fingerprint)
``failed``     permanent: ``dead`` = dead-lettered
=============  =================================================================================

Expiry is not decided here: ``step.lua`` never hands out a job past its ``expires_at_ms`` (Redis
clock), see :mod:`dmworker.lifecycle`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from .graph import errors as gerr
from .graph.client import InstagramClient
from .settings import Settings

log = logging.getLogger("dmworker.service")

DAY_MS = 86_400_000
WINDOW_MS = DAY_MS
HUMAN_AGENT_WINDOW_MS = 7 * DAY_MS
PRIVATE_REPLY_WINDOW_MS = 7 * DAY_MS
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SECRET_RE = re.compile(r"(access_token=)[^&\s]+|(Bearer\s+)\S+", re.I)


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, rand: Callable[[], float] = random.random) -> int:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))] ms."""
    ceiling = min(cap_ms, base_ms * (2 ** max(0, attempt - 1)))
    return max(1, int(rand() * ceiling))


def window_limit_ms(kind: str, args: dict[str, Any]) -> int:
    """How long after the user's last message this kind may be sent (0 = no user window)."""
    if kind == "private_reply":
        return 0
    if kind == "text" and args.get("human_agent"):
        return HUMAN_AGENT_WINDOW_MS
    return WINDOW_MS


def enforce_windows(settings: Settings) -> bool:
    """``enforce``, ``trust``, or ``auto`` (= enforce when the webhook secret is configured)."""
    if settings.window_policy == "auto":
        return bool(settings.app_secret)
    return settings.window_policy == "enforce"


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with tokens removed (known secrets and anything shaped like one)."""
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    return _SECRET_RE.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text)


def _fail(kind: str, message: str, dead: bool = True, **extra: Any) -> dict[str, Any]:
    return {"o": "failed", "dead": dead, "err": {"kind": kind, "message": message, **extra}}


def precheck(
    job: dict[str, Any],
    *,
    now_ms: int,
    attempts: int,
    state_before: str | None,
    window_ms: int | None,
    comment_state: str | None,
    settings: Settings,
) -> dict[str, Any] | None:
    """An outcome that settles the job without an API call, or ``None`` to send it."""
    if attempts > settings.max_attempts:
        why = "a worker died while sending it" if state_before == "sending" else "temporary failures"
        return _fail("attempts_exhausted", f"gave up after {attempts - 1} attempts ({why})")
    if not enforce_windows(settings):
        return None
    kind, args = job["kind"], job.get("args") or {}
    if kind == "private_reply":
        if comment_state == "used":
            return _fail("private_reply_used", "this comment already received its one private reply")
        if (
            comment_state
            and comment_state.isdigit()
            and now_ms > int(comment_state) + PRIVATE_REPLY_WINDOW_MS
        ):
            return _fail("outside_window", "the comment is older than 7 days: private reply window closed")
        return None
    limit = window_limit_ms(kind, args)
    if window_ms is None:
        return _fail("outside_window", "outside the messaging window: the user has not messaged this account")
    if now_ms > window_ms + limit:
        return _fail(
            "outside_window",
            f"outside the messaging window: it closed at {window_ms + limit} ms "
            f"({'7 days' if limit > WINDOW_MS else '24 h'} after the user's last message)",
        )
    return None


def _latency_bucket(seconds: float) -> str:
    for b in LATENCY_BUCKETS_S:
        if seconds <= b:
            return f"{b:g}"
    return "+Inf"


def send(
    job: dict[str, Any],
    *,
    attempts: int,
    client: InstagramClient | None,
    settings: Settings,
    rand: Callable[[], float] = random.random,
    token_fp: str = "",
) -> dict[str, Any]:
    """Send ``job`` through ``client`` and return the outcome (never raises).

    ``token_fp`` is the fingerprint of the token ``client`` sends with (recorded when Meta refuses it).
    """
    kind, args = job["kind"], dict(job.get("args") or {})
    account = job["account"]
    if client is None:
        return _retry(
            attempts,
            settings,
            rand,
            {"kind": "config", "message": f"account {account!r} is not configured on this worker (no token)"},
        )
    from .schemas import METHOD_OF_KIND

    recipient = job["recipient"]
    hold_ms = 0
    if kind == "typing":
        hold_ms = int(float(args.pop("seconds", 0) or 0) * 1000)
    if kind == "private_reply":
        recipient = recipient[2:] if recipient.startswith("c:") else recipient
    t0 = time.perf_counter()
    try:
        result = client.messaging.call(METHOD_OF_KIND[kind], recipient, **args)
    except gerr.PolicyBlockedError as e:
        return {
            "o": "throttled",
            "reason": "policy_block",
            "err": e.to_dict(),
            "pause_ms": int(settings.policy_block_pause_s * 1000),
            "kind": kind,
        }
    except gerr.ThrottledError as e:
        out: dict[str, Any] = {"o": "throttled", "reason": "throttled", "err": e.to_dict(), "kind": kind}
        if e.retry_after_s:
            out["pause_ms"] = int(e.retry_after_s * 1000)
        else:
            out["pause_base_ms"] = int(settings.throttle_pause_s * 1000)
            out["pause_cap_ms"] = int(settings.policy_block_pause_s * 1000)
        return out
    except gerr.TokenInvalidError as e:
        return {"o": "reauth", "fp": token_fp, "err": e.to_dict(), "kind": kind}
    except gerr.PermanentError as e:
        return {"o": "failed", "dead": True, "err": e.to_dict(), "kind": kind}
    except gerr.GraphError as e:  # temporary, or outcome unknown (resent: at-least-once, see docs)
        out = _retry(attempts, settings, rand, e.to_dict(), kind)
        if e.message.startswith(("ReadTimeout", "ConnectTimeout")):
            out["timeout"] = True  # the account's calls hang: several in a row pause it (step.lua)
        return out
    except ValueError as e:  # arguments the body builders refuse: permanent, no call was made
        return {
            "o": "failed",
            "dead": True,
            "kind": kind,
            "err": {"kind": "invalid_request", "message": redact(str(e))},
        }
    except Exception as e:  # a poison job: it crashed the send path; retried, then dead-lettered
        log.exception("send path crashed", extra={"job_id": job.get("id"), "recipient": recipient})
        secrets = (settings.accounts[account].access_token,) if account in settings.accounts else ()
        return _retry(
            attempts,
            settings,
            rand,
            {"kind": "internal", "message": redact(f"{type(e).__name__}: {e}", secrets)},
            kind,
        )
    lat = time.perf_counter() - t0
    out = {
        "o": "sent",
        "mid": result.message_id,
        "kind": kind,
        "lat": _latency_bucket(lat),
        "lat_s": round(lat, 6),
    }
    if hold_ms:
        out["hold_ms"] = hold_ms
    if kind == "private_reply":
        out["cmt"] = recipient
    pct = getattr(result.usage, "peak_pct", None)
    if pct is not None:
        out["usage_pct"] = int(pct)
        out["slow"] = slowdown_factor(int(pct), settings.usage_slowdown_pct)
    return out


def slowdown_factor(pct: int, start_pct: int) -> float:
    """Interval multiplier from Meta's usage percentage: 1 below ``start_pct``, up to 4 at 100 %."""
    if pct <= start_pct or start_pct >= 100:
        return 1.0
    return round(1.0 + 3.0 * min(1.0, (pct - start_pct) / (100 - start_pct)), 3)


def _retry(
    attempts: int, settings: Settings, rand: Callable[[], float], err: dict[str, Any], kind: str | None = None
) -> dict[str, Any]:
    if attempts >= settings.max_attempts:
        out = _fail(
            err.get("kind", "temporary"), f"gave up after {attempts} attempts: {err.get('message', '')}"
        )
        out["err"] = {**err, "message": out["err"]["message"]}
    else:
        out = {
            "o": "retry",
            "delay_ms": backoff_ms(attempts, settings.backoff_base_ms, settings.backoff_cap_ms, rand),
            "err": err,
        }
    if kind:
        out["kind"] = kind
    return out
