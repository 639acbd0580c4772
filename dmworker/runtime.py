"""The per-process singletons: settings read once from the environment, the Redis client, the
lane store and the lane worker.  Built lazily at first use (never at import time).

The runtime's ``settings.accounts`` is a :class:`~dmworker.live.LiveAccounts`: the static accounts
of the environment plus the account registry in Redis, kept current without a restart.
"""

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
                _runtime = _build(Settings.from_env())
    return _runtime


def set_runtime(settings: Settings) -> Runtime:
    """Replace this process's runtime (tests, CLI flags)."""
    global _runtime
    with _lock:
        _runtime = _build(settings)
    return _runtime


def live_settings(settings: Settings, client: redis.Redis) -> Settings:
    """``settings`` whose ``accounts`` is a live view of its static accounts and the registry."""
    from .crypto import TokenCipher
    from .live import LiveAccounts
    from .registry import Registry

    static = getattr(settings.accounts, "static", settings.accounts)
    cipher = TokenCipher(settings.secret_keys) if settings.secret_keys else None
    live = LiveAccounts(static, Registry(settings.key_prefix, client), cipher, settings.accounts_refresh_s)
    return settings.with_overrides(accounts=live)


def _build(settings: Settings) -> Runtime:
    client = redisconn.client(settings)
    settings = live_settings(settings, client)
    return Runtime(settings, client, LaneStore(settings, client))
