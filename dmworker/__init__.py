"""dmworker: send Instagram Direct Messages reliably at scale.

Producers queue validated send jobs with :class:`Outbox`; Celery workers deliver them in order
per recipient, within cluster-wide per-account rate limits, with retries, dead letters and
durable follow-ups.  :class:`dmworker.graph.InstagramClient` is the direct (synchronous) client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Accounts",
    "BacklogFullError",
    "ConfigError",
    "IdempotencyConflictError",
    "InstagramClient",
    "Job",
    "JobNotFoundError",
    "JobStatus",
    "Outbox",
    "RedisUnavailableError",
    "Settings",
    "ValidationError",
    "WindowClosedError",
    "__version__",
]

if TYPE_CHECKING:
    from .accounts import Accounts
    from .errors import (
        BacklogFullError,
        IdempotencyConflictError,
        JobNotFoundError,
        RedisUnavailableError,
        ValidationError,
        WindowClosedError,
    )
    from .graph import InstagramClient
    from .jobs import JobStatus
    from .outbox import Job, Outbox
    from .settings import ConfigError, Settings

_LAZY = {
    "Accounts": "accounts",
    "Outbox": "outbox",
    "Job": "outbox",
    "JobStatus": "jobs",
    "InstagramClient": "graph",
    "Settings": "settings",
    "ConfigError": "settings",
    "ValidationError": "errors",
    "WindowClosedError": "errors",
    "RedisUnavailableError": "errors",
    "JobNotFoundError": "errors",
    "BacklogFullError": "errors",
    "IdempotencyConflictError": "errors",
}


def __getattr__(name: str) -> Any:  # lazy: importing dmworker stays cheap and side-effect free
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
