"""Signed HTTP callbacks: every event (:mod:`dmworker.events`) POSTed to the producer's URL.

Where: ``DMWORKER_CALLBACK_URL`` receives every account's events; an account's ``callback_url`` in
the registry (``Accounts.add(..., callback_url=...)``) receives that account's events too (a URL
equal to ``DMWORKER_CALLBACK_URL`` is posted to once).  The deliverer runs as ``dmworker callbacks``
(or as a thread of ``dmworker scheduler`` when ``DMWORKER_CALLBACK_URL`` is set); it reads the
event streams as consumer group ``callbacks``, so several deliverers share the work.

What: ``POST`` of ``{"events": [...]}`` (1 to 100 events, oldest first per account),
``Content-Type: application/json`` and::

    Dmworker-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">

(the HMAC key is ``DMWORKER_CALLBACK_SECRET``)

Any 2xx acknowledges the batch.  Anything else, a timeout (``DMWORKER_CALLBACK_TIMEOUT_S``) or a
connection error is retried with exponential backoff and full jitter (:func:`backoff_s`, per
destination URL) until the event is ``DMWORKER_CALLBACK_MAX_AGE_S`` old (from its ``created_ms``);
then it becomes a *dead callback* (:mod:`dmworker.callbacks_store`), listed and replayed with
``dmworker callbacks dead|replay|purge`` and ``/v1/callbacks/dead``.  Delivery is at least once: an
event keeps its ``id`` across retries and replays, so receivers de-duplicate on it.

Receivers in Python check a request with :func:`verify`::

    from dmworker.callbacks import verify
    if not verify(request.get_data(), request.headers.get("Dmworker-Signature", ""), SECRET):
        abort(400)

This module imports nothing beyond the standard library, so a receiver may use it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from urllib.parse import urlsplit

#: The header carrying the signature.
HEADER = "Dmworker-Signature"
#: Most events in one POST.
MAX_BATCH = 100
#: First backoff ceiling and largest one (seconds): the n-th consecutive failure of a destination
#: waits a uniform random time in [0, min(cap, base x 2^(n-1))].
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0


def sign(body: bytes, secret: str, t: int) -> str:
    """The ``Dmworker-Signature`` value of ``body`` at unix time ``t`` (seconds)."""
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(body: bytes, header: str, secret: str, tolerance_s: int = 300, now_s: float | None = None) -> bool:
    """Whether ``header`` (a ``Dmworker-Signature`` value) signs ``body`` (the raw request body)
    under ``secret`` and was made within ``tolerance_s`` seconds of ``now_s`` (default: now).

    Compares in constant time; several ``v1=`` values (a secret being rotated) are each tried.
    Never raises: a malformed header is ``False``.
    """
    t: int | None = None
    macs: list[str] = []
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1" and value:
            macs.append(value)
    if t is None or not macs or not secret:
        return False
    now = time.time() if now_s is None else now_s
    if abs(now - t) > tolerance_s:
        return False
    expected = sign(body, secret, t).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, m) for m in macs)


def backoff_s(
    failures: int,
    rand: random.Random | None = None,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (>= 1) of a destination:
    uniform in ``[0, min(cap_s, base_s * 2 ** (failures - 1))]`` ("full jitter")."""
    ceiling = min(cap_s, base_s * 2 ** min(max(failures, 1) - 1, 60))
    return (rand or random).uniform(0.0, ceiling)


def safe_url(url: str) -> str:
    """``url`` fit for a log line or an error: no user, password, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed url>"
    if not parts.scheme or not host:
        return "<malformed url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a callback URL (``None``: it can); the reason never shows a password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return f"expected an http(s) URL, got {safe_url(url)}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http(s) URL with a host, got {safe_url(url)}"
    return None
