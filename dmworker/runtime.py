"""The per-process singletons: settings read once from the environment, the Redis client, the
lane store and the lane worker.  Built lazily at first use (never at import time)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import redis

from . import redisconn
from .lanes import LaneStore
from .settings import Settings


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: LaneStore


_lock = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """This process's runtime, built from ``Settings.from_env()`` on first call."""
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                settings = Settings.from_env()
                client = redisconn.client(settings)
                _runtime = Runtime(settings, client, LaneStore(settings, client))
    return _runtime


def set_runtime(settings: Settings) -> Runtime:
    """Replace this process's runtime (tests, CLI flags)."""
    global _runtime
    with _lock:
        client = redisconn.client(settings)
        _runtime = Runtime(settings, client, LaneStore(settings, client))
    return _runtime
