"""Exceptions a producer or operator sees (the Graph API's own live in :mod:`dmworker.graph.errors`).

::

    DmworkerError
     ├── ValidationError        bad input; ``.messages`` maps field paths to messages; nothing queued
     │    └── WindowClosedError a send or follow-up falls outside the messaging window (``.closes_at``)
     ├── RedisUnavailableError  Redis could not be reached; nothing was written
     ├── JobNotFoundError       no job with that id (or its retention has passed)
     └── ConfigError            (from :mod:`dmworker.settings`) a bad setting, named

This module imports nothing from the rest of the package at import time (``ConfigError`` is
looked up on first access), so :mod:`dmworker.settings` can derive its ``ConfigError`` from
:class:`DmworkerError` without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import ConfigError


class DmworkerError(Exception):
    """Base class of dmworker's own exceptions."""


class ValidationError(DmworkerError, ValueError):
    """Input was refused; ``messages`` maps each field path (``replies.3.title``) to its errors."""

    def __init__(self, messages: Mapping[str, Any] | str, *, index: int | None = None) -> None:
        if isinstance(messages, str):
            messages = {"_schema": [messages]}
        self.messages: dict[str, Any] = dict(messages)
        self.index = index
        parts = [
            f"{k}: {'; '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in self.messages.items()
        ]
        where = f"item {index}: " if index is not None else ""
        super().__init__(where + ", ".join(parts))


class WindowClosedError(ValidationError):
    """The messaging window is closed (or will be when the follow-up is due)."""

    def __init__(self, message: str, closes_at_ms: int | None = None) -> None:
        super().__init__({"window": [message]})
        self.closes_at_ms = closes_at_ms


class RedisUnavailableError(DmworkerError, ConnectionError):
    """Redis could not be reached; nothing was written. Retry later."""


class JobNotFoundError(DmworkerError, KeyError):
    """No job with this id (wrong id, or its retention has passed)."""

    def __str__(self) -> str:
        return f"no such job: {self.args[0]!r}"


def __getattr__(name: str) -> Any:
    if name == "ConfigError":  # re-exported lazily: settings.py may import this module
        from .settings import ConfigError

        return ConfigError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DmworkerError",
    "JobNotFoundError",
    "RedisUnavailableError",
    "ValidationError",
    "WindowClosedError",
]
