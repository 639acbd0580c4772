"""Exceptions a producer or operator sees (the Graph API's own live in :mod:`dmworker.graph.errors`).

::

    DmworkerError
     ├── ValidationError        bad input; ``.messages`` maps field paths to messages; nothing queued
     │    ├── WindowClosedError a send or follow-up falls outside the messaging window (``.closes_at``)
     │    └── IdempotencyConflictError  an idempotency key reused for a different request
     ├── RedisUnavailableError  Redis could not be reached; nothing was written
     ├── JobNotFoundError       no job with that id (or its retention has passed)
     ├── JobStateError          the job is not in a state that allows this (``.state``)
     ├── BacklogFullError       the account's queue is full for now (``.retry_after_s``)
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


class IdempotencyConflictError(ValidationError):
    """An idempotency key was used before with a different request (HTTP 409); ``job_ids`` are
    the jobs of the first request."""

    def __init__(self, key: str, job_ids: tuple[str, ...] = ()) -> None:
        super().__init__(
            {
                "idempotency_key": [
                    f"idempotency key {key!r} was already used for a different request "
                    f"(job {job_ids[0] if job_ids else '?'}); use a new key for a new request"
                ]
            }
        )
        self.key = key
        self.job_ids = job_ids


class RedisUnavailableError(DmworkerError, ConnectionError):
    """Redis could not be reached; nothing was written (for a batch, ``queued`` lists the jobs that
    were, and ``in_doubt`` the item indexes whose fate is unknown). Retry later."""

    def __init__(self, message: str, queued: Any = (), in_doubt: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.queued = list(queued)
        self.in_doubt = in_doubt


class BacklogFullError(DmworkerError):
    """The account already has as many due jobs queued as it can send in its DMWORKER_MAX_BACKLOG_S:
    nothing was queued; try again in ``retry_after_s`` seconds (HTTP 429 with Retry-After).  Other
    accounts are not affected."""

    def __init__(self, account: str, retry_after_s: float) -> None:
        super().__init__(
            f"account {account}'s backlog is full (DMWORKER_MAX_BACKLOG_S): nothing was queued; "
            f"retry in {retry_after_s:.1f} s"
        )
        self.account = account
        self.retry_after_s = retry_after_s


class JobStateError(DmworkerError):
    """The job exists but is not in a state that allows this (``state``), e.g. a replay of a job
    that is no longer dead-lettered (HTTP 409)."""

    def __init__(self, job_id: str, state: str | None, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.state = state


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
    "BacklogFullError",
    "ConfigError",
    "DmworkerError",
    "IdempotencyConflictError",
    "JobNotFoundError",
    "JobStateError",
    "RedisUnavailableError",
    "ValidationError",
    "WindowClosedError",
]
