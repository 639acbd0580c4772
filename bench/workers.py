"""Worker groups (dmworker or the naive baseline) and one timed backlog run against the sandbox.

A :class:`Group` starts ``nprocs`` real worker processes with ``concurrency`` threads each,
waits until every one answers a Celery ping, and warms them up. :meth:`Group.load` puts a
backlog in the hold queue (dmworker: jobs in Redis + one lane message per recipient; the
baseline: one Celery message per send); :func:`timed_run` releases it at once and measures
sends/s from the sandbox's own receive times, the CPU of every process involved (from /proc)
and the per-recipient order (dmworker.testing.Accounting).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import common as c
import naive

from dmworker.outbox import Outbox
from dmworker.sandbox import SandboxProcess
from dmworker.testing import Accounting, ProcessGroup

LANE_TASK = "dmworker.process_lane"


class Group:
    def __init__(
        self,
        system: str,
        nprocs: int,
        concurrency: int,
        sandbox: SandboxProcess,
        n_accounts: int = 1,
        rate: str = "100000/s",
        extra_env: dict[str, str] | None = None,
        **settings_over: Any,
    ) -> None:
        self.system, self.nprocs, self.concurrency, self.sandbox = system, nprocs, concurrency, sandbox
        self.prefix = c.new_prefix("d" if system == "dmworker" else "n")
        self.r = c.rdb()
        self.settings = c.make_settings(
            self.prefix,
            sandbox,
            n_accounts,
            rate,
            http_pool_size=max(64, concurrency),
            worker_concurrency=concurrency,
            **settings_over,
        )
        self.app = c.producer_app(self.prefix, self.settings)
        self.hold = f"{self.prefix}.hold"
        self.extra_env = extra_env or {}
        self.pg: ProcessGroup | None = None
        self.naive_procs: list[Any] = []
        self.queue = f"{self.prefix}.lanes" if system == "dmworker" else naive.queue_name(self.prefix)

    @property
    def pids(self) -> list[int]:
        if self.pg is not None:
            return [p.pid for p in self.pg.procs.values()]
        return [p.pid for p in self.naive_procs]

    def start(self) -> Group:
        t = time.monotonic()
        if self.system == "dmworker":
            self.pg = ProcessGroup(self.settings, extra_env=self.extra_env)
            for i in range(self.nprocs):
                self.pg.start_worker(f"w{i}", concurrency=self.concurrency)
        else:
            log_dir = tempfile.mkdtemp(prefix="dmwb-naive-")
            self.naive_procs = naive.start_workers(
                self.prefix,
                self.nprocs,
                self.concurrency,
                self.settings.graph_url,
                c.TOKEN,
                c.REDIS_URL,
                log_dir,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if len(self.app.control.ping(timeout=0.5)) >= self.nprocs:
                break
        else:
            self.stop()
            raise RuntimeError(f"{self.system} workers did not start")
        c.say(
            f"{self.system}: {self.nprocs} worker process(es) x {self.concurrency} threads ready "
            f"in {time.monotonic() - t:.1f} s"
        )
        return self

    def load(self, items: list[tuple[str, str, str]]) -> int:
        """Queue (account, recipient, text) sends into the hold queue; returns the number of sends."""
        if self.system == "dmworker":
            lanes: list[tuple[str, str]] = []
            ob = Outbox(settings=self.settings, client=self.r, publish=lambda a, r: lanes.append((a, r)))
            for start in range(0, len(items), 5000):
                ob.send_many(
                    [
                        {"kind": "text", "recipient": r, "text": t, "account": a}
                        for a, r, t in items[start : start + 5000]
                    ]
                )
            c.publish_all(self.app, LANE_TASK, lanes, self.hold)
        else:
            c.publish_all(self.app, naive.TASK, [(r, t) for _, r, t in items], self.hold)
        return len(items)

    def release(self) -> float:
        return c.release(self.r, self.prefix, self.hold, self.queue)

    def stop(self) -> None:
        if self.pg is not None:
            self.pg.stop_all()
        naive.stop_workers(self.naive_procs)
        c.cleanup(self.r, self.prefix)


def backlog(
    recipients: int, per: int, tag: str, accounts: list[str] | None = None, grouped: bool = True
) -> list[tuple[str, str, str]]:
    """``per`` jobs for each of ``recipients`` recipients (of each account); ``grouped``: each
    recipient's jobs back to back (a conversation), else interleaved across recipients."""
    out = []
    for a in accounts or [c.ACCOUNT]:
        if grouped:
            out += [(a, str(500000000 + i), f"{tag}:{i}#{n}") for i in range(recipients) for n in range(per)]
        else:
            out += [(a, str(500000000 + i), f"{tag}:{i}#{n}") for n in range(per) for i in range(recipients)]
    return out


def prepare_sandbox(sandbox: SandboxProcess, latency_ms: float, items: list[tuple[str, str, str]]) -> None:
    ctl = sandbox.control
    ctl.reset()
    ctl.set_latency(latency_ms)
    by_account: dict[str, set[str]] = {}
    for a, r, _ in items:
        by_account.setdefault(a, set()).add(r)
    for a, rs in by_account.items():
        ctl.open_windows(a, sorted(rs))


@dataclass
class Run:
    sends: int
    elapsed_s: float
    rate: float
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process kind
    accounting: dict[str, int] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    t0: float = 0.0
    tries: list[float] = field(default_factory=list)

    def cpu_us_per_send(self, kind: str) -> float:
        return self.cpu.get(kind, 0.0) / max(1, self.sends) * 1e6

    def util(self, kind: str) -> float:
        """Cores used by ``kind`` during the run."""
        return self.cpu.get(kind, 0.0) / self.elapsed_s if self.elapsed_s else 0.0


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(group: Group) -> dict[str, float]:
    t = os.times()
    return {
        "workers": sum(c.cpu_s(p) for p in group.pids),
        "redis": c.cpu_s(c.redis_pid(group.r)),
        "sandbox": c.cpu_s(group.sandbox.pid),
        "bench": t.user + t.system,
        "machine": machine_busy_s(),
    }


def timed_run(
    group: Group,
    items: list[tuple[str, str, str]],
    latency_ms: float,
    timeout_s: float = 180.0,
    warm: bool = True,
    on_loaded: Any = None,
) -> Run:
    """Release ``items`` at once to warmed-up workers; measure until the sandbox has them all."""
    if warm:  # open every worker thread's connections at this latency, outside the timed window
        n_warm = group.nprocs * group.concurrency
        warm_items = [(c.ACCOUNT, str(400000000 + i), "warm") for i in range(n_warm)]
        prepare_sandbox(group.sandbox, latency_ms, warm_items)
        group.load(warm_items)
        group.release()
        if not c.wait_for(lambda: c.sends_count(group.sandbox) >= n_warm, 60, 0.05):
            raise RuntimeError("warm-up did not finish")
    prepare_sandbox(group.sandbox, latency_ms, items)
    n = group.load(items)
    time.sleep(0.2)
    if on_loaded is not None:
        on_loaded()
    before = cpu_snapshot(group)
    t0 = group.release()
    if not c.wait_for(lambda: c.sends_count(group.sandbox) >= n, timeout_s, 0.02):
        raise RuntimeError(f"{group.system}: only {c.sends_count(group.sandbox)} of {n} sends arrived")
    after = cpu_snapshot(group)
    records = group.sandbox.control.sends()
    last = max(x["t_ms"] for x in records) / 1000
    elapsed = last - t0
    cpu = {k: after[k] - before[k] for k in before}
    cpu["other"] = max(0.0, cpu["machine"] - cpu["workers"] - cpu["redis"] - cpu["sandbox"] - cpu["bench"])
    expected: dict[str, list[str]] = {}
    for a, r, t in items:
        expected.setdefault(f"{a}/{r}", []).append(t)
    got = [(f"{x['account']}/{x['recipient']}", x["body"]["message"]["text"]) for x in records]
    acc = Accounting(expected, got).as_dict()
    return Run(n, elapsed, len(records) / elapsed, cpu, acc, records, t0)
