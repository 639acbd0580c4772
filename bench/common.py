"""Shared helpers of the benchmarks: Redis (own DB and key prefix), the sandbox, settings, CPU
readings from /proc, percentiles, the producer-side Celery app and the "hold queue" release.

Every benchmark uses its own key prefix ``dmwb<hex>`` on ``DMWB_REDIS_URL`` (default DB 14) and
deletes only keys under it. Messages are published to a *hold* queue that no worker reads and
then moved to the real queue with one ``RENAMENX``, so warmed-up workers start on a full backlog
at the same instant for dmworker and for the baseline (no producer work inside the timed window).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from celery import Celery

from dmworker.redisconn import broker_url
from dmworker.sandbox import SandboxProcess
from dmworker.settings import AccountConfig, Settings, parse_rate

REDIS_URL = os.environ.get("DMWB_REDIS_URL", "redis://127.0.0.1:6379/14")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, "bench")
ACCOUNT = "17841400000000101"
TOKEN = "IGAAbench-token-secret-value-0101"
_T0 = time.monotonic()


def say(msg: str) -> None:
    """A progress line with the elapsed time of the whole run."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def rdb() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def new_prefix(tag: str = "") -> str:
    return f"dmwb{tag}{uuid.uuid4().hex[:8]}"


def cleanup(r: redis.Redis, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (ours only: the prefix is random)."""
    n = 0
    batch: list[str] = []
    for key in r.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    return n


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc; 0 if unreadable."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def redis_pid(r: redis.Redis) -> int:
    return int(r.info("server")["process_id"])


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values`` (nearest rank); nan for none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def accounts(n: int) -> dict[str, str]:
    """``n`` bench accounts: token -> account id (the first is :data:`ACCOUNT`)."""
    out = {TOKEN: ACCOUNT}
    for i in range(1, n):
        out[f"IGAAbench-token-secret-value-{i:04d}x"] = str(17841400000001000 + i)
    return out


def start_sandbox(n_accounts: int = 1, latency_ms: float = 0.0) -> SandboxProcess:
    return SandboxProcess(tokens=accounts(n_accounts), latency_ms=latency_ms).start()


def make_settings(
    prefix: str,
    sandbox: SandboxProcess,
    n_accounts: int = 1,
    rate: str = "100000/s",
    account_rates: dict[str, str] | None = None,
    **over: Any,
) -> Settings:
    """Settings for ``n_accounts`` bench accounts on the sandbox (``account_rates``: per account)."""
    per = account_rates or {}
    accts = {
        a: AccountConfig(a, t, rates={"text": parse_rate(per[a])} if a in per else {})
        for t, a in accounts(n_accounts).items()
    }
    base = Settings.from_env({})
    return base.with_overrides(
        redis_url=REDIS_URL,
        key_prefix=prefix,
        graph_url=sandbox.url + "/v25.0",
        accounts=accts,
        default_account=ACCOUNT,
        rates={**base.rates, "text": parse_rate(rate)},
        **over,
    )


def producer_app(prefix: str, settings: Settings | None = None) -> Celery:
    """A producer-only Celery app on the bench broker with the same key prefix as the workers."""
    url = broker_url(settings) if settings is not None else REDIS_URL
    app = Celery(f"dmwb-producer-{prefix}", set_as_current=False)
    app.conf.update(
        broker_url=url,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"global_keyprefix": f"{prefix}:celery:"},
    )
    return app


def publish_all(app: Celery, task: str, args_list: Iterable[Sequence[Any]], queue: str) -> int:
    """Publish one message per args tuple to ``queue`` over one producer connection."""
    n = 0
    with app.producer_or_acquire() as producer:
        for args in args_list:
            app.send_task(task, tuple(args), queue=queue, producer=producer)
            n += 1
    return n


def queue_key(prefix: str, queue: str) -> str:
    return f"{prefix}:celery:{queue}"


def release(r: redis.Redis, prefix: str, hold: str, queue: str) -> float:
    """Move the whole hold queue onto the worker queue at once; returns the epoch time (s)."""
    src, dst = queue_key(prefix, hold), queue_key(prefix, queue)
    if r.llen(dst):
        raise RuntimeError(f"queue {dst} is not empty before the release")
    t = time.time()
    if not r.renamenx(src, dst):
        raise RuntimeError("release failed: destination exists")
    return t


def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def wait_logs(paths: Sequence[str], needle: str, timeout_s: float) -> bool:
    """Wait until every log file in ``paths`` contains ``needle``."""

    def ready() -> bool:
        for p in paths:
            try:
                with open(p, errors="replace") as f:
                    if needle not in f.read():
                        return False
            except OSError:
                return False
        return True

    return wait_for(ready, timeout_s, 0.1)


def sends_count(sandbox: SandboxProcess) -> int:
    return int(sandbox.control.stats()["sends"])


def machine() -> dict[str, str]:
    import platform

    import celery
    import kombu

    info = rdb().info("server")
    return {
        "cores": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "redis": str(info.get("redis_version")),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis-py": redis.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "dmworker code": _git_rev(),
    }


def _git_rev() -> str:
    """The commit of the tree measured, and whether dmworker/ had uncommitted changes (read-only git)."""
    import subprocess

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dmworker"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes in dmworker/' if dirty else ''}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(out)


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}x" if b else "n/a"


def f0(x: float) -> str:
    return f"{x:,.0f}"


def f1(x: float) -> str:
    return f"{x:,.1f}"
