"""Helpers to run real dmworker processes (workers, schedulers) from tests, benchmarks and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .settings import RATE_CLASSES, Settings


class ProcessGroup:
    """Start, kill and restart ``dmworker`` subprocesses sharing one settings environment."""

    def __init__(
        self, settings: Settings, extra_env: Mapping[str, str] | None = None, log_dir: str | None = None
    ) -> None:
        self.dir = Path(log_dir or tempfile.mkdtemp(prefix="dmw-procs-"))
        self.env = dict(os.environ)
        self.env.update(settings_to_env(settings, str(self.dir / "accounts.json")))
        self.env.update(extra_env or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list = []

    def start_worker(
        self,
        name: str,
        concurrency: int = 8,
        pool: str = "threads",
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        args = [
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return self._start(name, args, extra_env)

    def start_scheduler(
        self, name: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return self._start(name, ["scheduler"], extra_env)

    def _start(
        self, name: str, args: list[str], extra_env: Mapping[str, str] | None
    ) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        env.update(extra_env or {})
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        p = subprocess.Popen(
            [sys.executable, "-m", "dmworker.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = p
        return p

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, sig)
            p.wait(timeout=30)

    def stop_all(self, timeout: float = 15.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class Accounting:
    """The chaos accounting of a run (design.md): per job lost, duplicated, reordered, unexpected.

    ``expected`` maps each recipient to its job tokens in accepted order; ``delivered`` is the
    sandbox's record, in arrival order, as (recipient, token) pairs; ``dead`` the tokens
    dead-lettered (not lost: they are kept with their reason).
    """

    def __init__(
        self,
        expected: Mapping[str, list[str]],
        delivered: list[tuple[str, str]],
        dead: set[str] | None = None,
    ) -> None:
        dead = dead or set()
        position = {tok: (r, i) for r, toks in expected.items() for i, tok in enumerate(toks)}
        seen: dict[str, int] = {}
        last: dict[str, int] = {}
        self.unexpected = 0
        self.reordered = 0
        self.reorder_examples: list[str] = []  # the first few, for the failure message
        self.duplicated = 0
        for r, tok in delivered:
            where = position.get(tok)
            if where is None or where[0] != r:
                self.unexpected += 1
                continue
            seen[tok] = seen.get(tok, 0) + 1
            if seen[tok] > 1:
                self.duplicated += 1
                continue
            if where[1] < last.get(r, -1):
                self.reordered += 1
                if len(self.reorder_examples) < 5:
                    self.reorder_examples.append(f"{tok} after #{last[r]} of {r}")
            last[r] = max(last.get(r, -1), where[1])
        self.accepted = len(position)
        self.delivered = len(seen)
        self.dead = len(dead & set(position))
        self.lost = sum(1 for tok in position if tok not in seen and tok not in dead)

    def as_dict(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "delivered": self.delivered,
            "dead": self.dead,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "unexpected": self.unexpected,
        }

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.as_dict().items())


def max_in_window(times_ms: list[float], window_ms: float = 1000.0) -> int:
    """The most events in any half-open window [t, t + window_ms) (rate-limit checks)."""
    times_ms = sorted(times_ms)
    best, j = 0, 0
    for i in range(len(times_ms)):
        while times_ms[i] - times_ms[j] >= window_ms:
            j += 1
        best = max(best, i - j + 1)
    return best


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        ok = predicate()
        if ok or time.monotonic() > deadline:
            return bool(ok)
        time.sleep(interval_s)


def settings_to_env(settings: Settings, accounts_file: str) -> dict[str, str]:
    """Environment variables that rebuild ``settings`` in another process (tests, the demo).

    The tokens go to ``accounts_file`` (a JSON accounts file, mode 0600), never to the environment.
    """
    Path(accounts_file).write_text(
        json.dumps(
            {
                a.account_id: {
                    "access_token": a.access_token,
                    **({"graph_url": a.graph_url} if a.graph_url else {}),
                    **({"rates": {k: str(v) for k, v in a.rates.items()}} if a.rates else {}),
                    **({"burst": a.burst} if a.burst is not None else {}),
                }
                for a in settings.accounts.values()
            }
        )
    )
    os.chmod(accounts_file, 0o600)
    s = settings
    env = {
        "DMWORKER_KEY_PREFIX": s.key_prefix,
        "DMWORKER_DATA_DIR": s.data_dir,
        "DMWORKER_GRAPH_URL": s.graph_url,
        "DMWORKER_ACCOUNTS_FILE": accounts_file,
        "DMWORKER_HTTP_CONNECT_TIMEOUT_S": str(s.http_connect_timeout_s),
        "DMWORKER_HTTP_READ_TIMEOUT_S": str(s.http_read_timeout_s),
        "DMWORKER_HTTP_POOL_SIZE": str(s.http_pool_size),
        "DMWORKER_LEASE_MS": str(s.lease_ms),
        "DMWORKER_DISPATCH_GRACE_MS": str(s.dispatch_grace_ms),
        "DMWORKER_MAX_ATTEMPTS": str(s.max_attempts),
        "DMWORKER_MAX_AGE_S": str(s.max_age_s),
        "DMWORKER_DLQ_RETENTION_S": str(s.dlq_retention_s),
        "DMWORKER_DLQ_MAX": str(s.dlq_max),
        "DMWORKER_EVENTS_RETENTION_S": str(s.events_retention_s),
        "DMWORKER_ADMIT_WINDOW_S": str(s.admit_window_s),
        "DMWORKER_ADMIT_POLL_MS": str(s.admit_poll_ms),
        "DMWORKER_MAX_IN_FLIGHT": str(s.max_in_flight),
        "DMWORKER_MAX_BACKLOG_S": str(s.max_backlog_s),
        "DMWORKER_BACKOFF_BASE_MS": str(s.backoff_base_ms),
        "DMWORKER_BACKOFF_CAP_MS": str(s.backoff_cap_ms),
        "DMWORKER_THROTTLE_PAUSE_S": str(s.throttle_pause_s),
        "DMWORKER_POLICY_BLOCK_PAUSE_S": str(s.policy_block_pause_s),
        "DMWORKER_RATE_BURST": str(s.rate_burst),
        "DMWORKER_USAGE_SLOWDOWN_PCT": str(s.usage_slowdown_pct),
        "DMWORKER_THREAD_MIN_INTERVAL_MS": str(s.thread_min_interval_ms),
        "DMWORKER_WINDOW_POLICY": s.window_policy,
        "DMWORKER_RETENTION_S": str(s.retention_s),
        "DMWORKER_SCHEDULER_TICK_MS": str(s.scheduler_tick_ms),
        "DMWORKER_EMBEDDED_SCHEDULER": "true" if s.embedded_scheduler else "false",
        "DMWORKER_LANE_BATCH": str(s.lane_batch),
        "DMWORKER_WORKER_CONCURRENCY": str(s.worker_concurrency),
        "DMWORKER_WORKER_POOL": s.worker_pool,
        "DMWORKER_LOG_FORMAT": s.log_format,
        "DMWORKER_LOG_LEVEL": s.log_level,
    }
    for k in RATE_CLASSES:
        env[f"DMWORKER_RATE_{k.upper()}"] = str(s.rates[k])
    for name, value in (
        ("DMWORKER_REDIS_URL", s.redis_url),
        ("DMWORKER_BROKER_URL", s.broker_url),
        ("DMWORKER_ACCOUNT_ID", s.default_account),
    ):
        if value:
            env[name] = value
    return env
