"""Structured logging: plain or JSON lines, a job id and recipient on every line about a job,
and every token and secret redacted (a filter on the handler, so third-party loggers too).

Tokens of accounts added at run time are redacted too: the filter asks the live account view
(:class:`dmworker.live.LiveAccounts`) for the current set of tokens, and looks each long
token-shaped word of a line up in that set (O(length of the line), whatever the number of accounts).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

from .settings import Settings

_SHAPED = re.compile(
    r"(access_token=|Bearer\s+|\"access_token\"\s*:\s*\")[^&\s\"']+|IGAA[A-Za-z0-9_\-]{8,}"
    r"|\bEAA[A-Za-z0-9]{20,}",
    re.I,
)
_WORD = re.compile(r"[A-Za-z0-9_\-]{12,}")  # a word that may be a token (Meta tokens: letters, digits)
_FIELDS = ("job_id", "recipient", "account")


class RedactingFilter(logging.Filter):
    """Replaces the configured secrets, and anything shaped like a token, by ``[redacted]``."""

    def __init__(
        self, secrets: tuple[str, ...] = (), live: Callable[[], frozenset[str]] | None = None
    ) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s and len(s) >= 4)
        self.live = live

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "[redacted]")
        if self.live is not None:
            try:
                known = self.live()
            except Exception:  # the registry is unreachable: the static secrets and shapes still apply
                known = frozenset()
            if known:
                text = _WORD.sub(lambda m: "[redacted]" if m.group(0) in known else m.group(0), text)
        return _SHAPED.sub(lambda m: (m.group(1) or "") + "[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self.scrub(msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(f"{f}={getattr(record, f)}" for f in _FIELDS if getattr(record, f, None))
        return f"{base} {extras}" if extras else base


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for f in _FIELDS:
            v = getattr(record, f, None)
            if v:
                out[f] = v
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out)


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """The static secrets: tokens of the static accounts, app secrets, verify token, API tokens."""
    from .scopes import parse_entries

    accounts = getattr(settings.accounts, "static", settings.accounts)
    vals = [a.access_token for a in accounts.values()]
    vals += [*(settings.app_secret or "").split(","), settings.verify_token or ""]
    try:
        vals += [tok for tok, _ in parse_entries(settings.api_tokens)]
    except ValueError:
        vals += list(settings.api_tokens)
    return tuple(v.strip() for v in vals if v and v.strip())


def setup_logging(settings: Settings, stream: Any = None) -> logging.Handler:
    """Install one handler on the root logger with the configured format and redaction."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactingFilter(secrets_of(settings), getattr(settings.accounts, "secrets", None)))
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_dmworker", False):
            root.removeHandler(h)
    handler._dmworker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler
