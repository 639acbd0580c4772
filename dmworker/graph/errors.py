"""The Graph API's errors, split by what the caller must do, and the one map onto them.

::

    GraphError(Exception)              .code .subcode .fbtrace_id .http_status .message .is_transient
     │                                 .kind (short label) .usage  .to_dict()
     ├── TemporaryError                retry with backoff + jitter
     │    │                            codes 1, 2, 1200; is_transient true; HTTP 5xx or 408 without a
     │    │                            usable body; unknown codes on 5xx; connect failures and timeouts
     │    └── OutcomeUnknownError      the request was sent but no answer was read (read timeout,
     │                                 connection dropped after sending, 2xx without a JSON object):
     │                                 Meta may have delivered it; a blind retry may duplicate
     ├── ThrottledError                wait ``.retry_after_s`` (seconds or None), then retry; no attempt
     │    │                            burned. Codes 4, 17, 32, 341, 613, 80002, 80006; HTTP 429
     │    └── PolicyBlockedError       code 368: pause the account for a long time
     └── PermanentError                give up on this job
          ├── OutsideWindowError       code 10 subcode 2534022 (Messenger wording: 2018278)
          ├── RecipientUnavailableError code 551; code 100 subcode 2018001
          ├── InvalidRequestError      code 100 (other subcodes); 2534025/2534039/2534040 (private
          │                            reply used or expired); unknown non-transient codes; 3xx/4xx
          │                            without a usable body; bad URL
          ├── PermissionDeniedError    code 10 (other subcodes), codes 200-299  (alias PermissionError_)
          └── TokenInvalidError        code 190, any subcode: the account needs a new token

:func:`map_error` is the only place that turns a response, a status or a ``requests`` exception
into one of these. It classifies by ``code`` / ``error_subcode`` / ``is_transient`` and looks at
the HTTP status only when the body carries no known code (one exception: HTTP 429 is always a
throttle). Order: 368, throttle codes / 429, transient, 190, window subcodes, 551 / 2018001,
private-reply codes / 100, 10 / 200-299, then the status.

Messages never carry an access token: :func:`redact` removes the given secrets, any
``access_token=`` value and anything shaped like a Meta token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from requests import exceptions as rex
from urllib3 import exceptions as u3ex

from .usage import Usage, parse_usage, wait_hint_s

REDACTED = "[redacted]"
TEMPORARY_CODES = frozenset({1, 2, 1200})
THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, 80002, 80006})
POLICY_BLOCK_CODE = 368
TOKEN_CODE = 190
WINDOW_SUBCODES = frozenset({2534022, 2018278})
NO_USER_SUBCODES = frozenset({2018001})
PRIVATE_REPLY_USED = frozenset({2534025, 2534039, 2534040})
_BAD_URL = (rex.InvalidURL, rex.MissingSchema, rex.InvalidSchema, rex.InvalidHeader, u3ex.LocationValueError)
_DICT_FIELDS = ("kind", "code", "subcode", "message", "fbtrace_id", "http_status")
_QUERY_TOKEN_RE = re.compile(r"(access_token=)[^&\s\"'<>]+", re.IGNORECASE)
_BEARER_RE = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_META_TOKEN_RE = re.compile(r"\b(?:IGAA|IGQV|EAA)[A-Za-z0-9_-]{20,}")


class GraphError(Exception):
    """Base of every Graph API failure. ``kind`` is a short machine label for job status."""

    kind = "graph_error"

    def __init__(
        self,
        message: str = "",
        *,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        http_status: int | None = None,
        is_transient: bool = False,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.http_status = http_status
        self.is_transient = is_transient
        self.usage = usage

    def _fields(self) -> str:
        return (
            f"code={self.code!r}, subcode={self.subcode!r}, fbtrace_id={self.fbtrace_id!r}, "
            f"http_status={self.http_status!r}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields()}): {self.message}"

    def __str__(self) -> str:
        return f"{self.message} ({self._fields()})"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable despite keyword-only arguments
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary for a job's status (no token, no headers)."""
        return {name: getattr(self, name) for name in _DICT_FIELDS}


def _rebuild(cls: type[GraphError], message: str, state: dict[str, Any]) -> GraphError:
    err = cls(message)
    err.__dict__.update(state)
    return err


class TemporaryError(GraphError):
    """A temporary failure: retry with backoff and jitter."""

    kind = "temporary"


class OutcomeUnknownError(TemporaryError):
    """The request was sent but no answer was read: Meta may or may not have delivered it."""

    kind = "outcome_unknown"


class ThrottledError(GraphError):
    """Rate limited: wait ``retry_after_s`` seconds (None: unknown, use a default) and retry."""

    kind = "throttled"

    def __init__(self, message: str = "", *, retry_after_s: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s

    def _fields(self) -> str:
        return f"{super()._fields()}, retry_after_s={self.retry_after_s!r}"

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "retry_after_s": self.retry_after_s}


class PolicyBlockedError(ThrottledError):
    """Code 368, temporarily blocked for policy reasons: pause the account for a long time."""

    kind = "policy_blocked"


class PermanentError(GraphError):
    """Retrying will not help: fail this job."""

    kind = "permanent"


class OutsideWindowError(PermanentError):
    """The recipient's messaging window is closed (code 10, subcode 2534022 or 2018278)."""

    kind = "outside_window"


class RecipientUnavailableError(PermanentError):
    """The recipient cannot be messaged (code 551, or code 100 subcode 2018001)."""

    kind = "recipient_unavailable"


class InvalidRequestError(PermanentError):
    """The request itself was refused (bad parameter, private reply used, unknown error)."""

    kind = "invalid_request"


class PermissionDeniedError(PermanentError):
    """The app or token lacks a permission (code 10, codes 200-299)."""

    kind = "permission_denied"


PermissionError_ = PermissionDeniedError


class TokenInvalidError(PermanentError):
    """Code 190: the token is invalid or expired; the account needs a new token."""

    kind = "token_invalid"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret, ``access_token=`` value, bearer value and Meta-shaped token removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _QUERY_TOKEN_RE.sub(r"\1" + REDACTED, text)
    text = _BEARER_RE.sub(r"\1" + REDACTED, text)
    return _META_TOKEN_RE.sub(REDACTED, text)


def map_error(
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | None = None,
    exc: BaseException | None = None,
    sent: bool = False,
    secrets: Iterable[str] = (),
) -> GraphError:
    """Turn one failed exchange into the :class:`GraphError` subclass that says what to do.

    Args:
        status: the HTTP status, when a response arrived.
        headers: its headers (``Retry-After`` in seconds or an HTTP date; usage headers).
        body: its raw body (a Graph error envelope, or anything else).
        exc: the exception raised instead of a response (``requests``, ``urllib3`` or ``OSError``).
        sent: True when the request may have reached Meta before ``exc`` (a connection dropped
            while waiting for the answer). A read timeout always counts as sent.
        secrets: strings (the access token) to remove from every message.

    Returns the exception; never raises.
    """
    secrets = tuple(secrets)
    if exc is not None:
        return _from_exception(exc, sent, secrets)
    usage = parse_usage(headers)
    envelope = _envelope(body)
    if envelope is None:
        return _from_status(status, body, headers, usage, secrets)
    kw: dict[str, Any] = {
        "code": _int(envelope.get("code")),
        "subcode": _int(envelope.get("error_subcode")),
        "fbtrace_id": _str(envelope.get("fbtrace_id")),
        "http_status": status,
        "is_transient": envelope.get("is_transient") is True,
        "usage": usage,
    }
    message = redact(_str(envelope.get("message")) or f"Graph API error (HTTP {status})", secrets)
    cls = _classify(kw["code"], kw["subcode"], kw["is_transient"], status)
    if issubclass(cls, ThrottledError):
        return cls(message, retry_after_s=wait_hint_s(headers, usage), **kw)
    return cls(message, **kw)


def _classify(code: int | None, subcode: int | None, transient: bool, status: int | None) -> type[GraphError]:
    if code == POLICY_BLOCK_CODE:
        return PolicyBlockedError
    if code in THROTTLE_CODES or status == 429:
        return ThrottledError
    if transient or code in TEMPORARY_CODES:
        return TemporaryError
    if code == TOKEN_CODE:
        return TokenInvalidError
    if subcode in WINDOW_SUBCODES:
        return OutsideWindowError
    if code == 551 or (code == 100 and subcode in NO_USER_SUBCODES):
        return RecipientUnavailableError
    if code in PRIVATE_REPLY_USED or subcode in PRIVATE_REPLY_USED or code == 100:
        return InvalidRequestError
    if code == 10 or (code is not None and 200 <= code <= 299):
        return PermissionDeniedError
    if status is not None and status >= 500:  # unknown code on a server error: try again later
        return TemporaryError
    return InvalidRequestError


def _from_status(
    status: int | None,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
    usage: Usage,
    secrets: tuple[str, ...],
) -> GraphError:
    snippet = _snippet(body, secrets)
    what = f"a non-JSON or non-Graph body: {snippet!r}" if snippet else "no body"
    message = f"HTTP {status} with {what}" if status is not None else "no response"
    kw: dict[str, Any] = {"http_status": status, "usage": usage}
    if status == 429:
        return ThrottledError(message, retry_after_s=wait_hint_s(headers, usage), **kw)
    if status is None or status >= 500 or status == 408:
        return TemporaryError(message, **kw)
    if 200 <= status < 300:
        return OutcomeUnknownError(
            f"HTTP {status} without the expected JSON ({what}); delivery unknown", **kw
        )
    return InvalidRequestError(message, **kw)


def _from_exception(exc: BaseException, sent: bool, secrets: tuple[str, ...]) -> GraphError:
    message = redact(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, (rex.ConnectTimeout, u3ex.ConnectTimeoutError)):  # urllib3's: refused too
        return TemporaryError(message)
    if isinstance(exc, (rex.ReadTimeout, u3ex.ReadTimeoutError)) or sent:
        return OutcomeUnknownError(message)
    if isinstance(exc, _BAD_URL):
        return InvalidRequestError(message)
    return TemporaryError(message)


def _envelope(body: bytes | str | None) -> dict[str, Any] | None:
    """The ``error`` object of a Graph error body, or None when the body has no usable one."""
    if body is None:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict) or _int(err.get("code")) is None:
        return None
    return err


def _snippet(body: bytes | str | None, secrets: tuple[str, ...], limit: int = 200) -> str:
    """The start of a body for a message: redacted first, then cut (a cut must not split a token)."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    text = " ".join(redact(text, secrets).split())
    return text if len(text) <= limit else text[:limit] + "…"


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
