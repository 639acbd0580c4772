"""Redis round trips and Redis CPU per send on a 3-primary Redis Cluster beside a single node, same run.

    .venv/bin/python bench/topology.py [--accounts 6] [--recipients 50] [--per-recipient 10]

Both topologies are real ``redis-server`` processes started for the run on free local ports
(``tests/ha_servers.py``), the Graph API the local sandbox at 0 ms latency.  For each: the jobs are
queued with ``send_many`` (batches of 100 mixing every account), then every lane is delivered by a
lane worker in this process (no Celery: the broker is not what is measured), with one dispatcher
tick per 100 sends.  A round trip is one request the client writes (a pipeline counts once per
node it touches); Redis CPU is ``used_cpu_user + used_cpu_sys`` summed over the nodes.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis.connection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from ha_servers import Cluster, PlainRedis, spread_accounts

from dmworker import redisconn
from dmworker.dispatcher import Dispatcher
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.sandbox import SandboxProcess
from dmworker.settings import AccountConfig, Rate, Settings
from dmworker.worker import LaneWorker

_trips = 0
_original = redis.connection.AbstractConnection.send_packed_command


def _counting(self: Any, command: Any, check_health: bool = True) -> None:
    global _trips
    _trips += 1
    _original(self, command, check_health)


def _cpu_s(nodes: list[redis.Redis]) -> float:
    total = 0.0
    for n in nodes:
        info = n.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def measure(
    url: str, broker: str, nodes: list[redis.Redis], sandbox: SandboxProcess, args: Any
) -> dict[str, float]:
    """Queue and deliver the jobs on ``url``; returns per-send figures."""
    global _trips
    accounts = spread_accounts(per_node=max(1, args.accounts // 3))
    confs = {}
    for a in accounts:
        sandbox.control.add_token(f"IGAAbench-{a}", a)
        confs[a] = AccountConfig(a, f"IGAAbench-{a}")
    s = Settings.from_env({}).with_overrides(
        redis_url=url,
        broker_url=broker,
        key_prefix=f"dmwb{uuid.uuid4().hex[:8]}",
        graph_url=sandbox.url + "/v25.0",
        accounts=confs,
        default_account=accounts[0],
        rates={**Settings().rates, "text": Rate(100_000, 1)},
        rate_burst=1000,
    )
    lanes = [(a, str(800000 + i)) for a in accounts for i in range(args.recipients)]
    for a in accounts:
        sandbox.control.open_windows(a, [r for acct, r in lanes if acct == a])
    items = [
        {"kind": "text", "account": a, "recipient": r, "text": f"m{n}"}
        for n in range(args.per_recipient)
        for a, r in lanes
    ]
    client = redisconn.client(s)
    ob = Outbox(settings=s, client=client, publish=lambda a, r: None)
    store = LaneStore(s, client)
    worker = LaneWorker(s, store)
    dispatcher = Dispatcher(store, lambda a, r: None, name="bench")
    ob.send_many(items[:10])  # warm up: slot map, scripts, HTTP pool
    for a, r in lanes[:10]:
        worker.run_lane(a, r)
    items = items[10:]
    cpu0, t0, _trips = _cpu_s(nodes), time.perf_counter(), 0
    for start in range(0, len(items), 100):
        ob.send_many(items[start : start + 100])
    enqueue_trips, enqueue_s = _trips, time.perf_counter() - t0
    cpu1, _trips = _cpu_s(nodes), 0
    sent = 0
    while True:
        before = sent
        for a, r in lanes:
            sent += worker.run_lane(a, r).summary().get("sent", 0)
            if sent // 100 != (sent - 1) // 100:
                dispatcher.tick()
        if sent == before:
            break
    deliver_trips, cpu2 = _trips, _cpu_s(nodes)
    n = len(items)
    assert sent == n, f"sent {sent} of {n}"
    return {
        "jobs": n,
        "enqueue_trips": enqueue_trips / n,
        "enqueue_cpu_us": (cpu1 - cpu0) * 1e6 / n,
        "enqueue_ms": enqueue_s * 1000 / n,
        "send_trips": deliver_trips / n,
        "send_cpu_us": (cpu2 - cpu1) * 1e6 / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=6, help="accounts (spread evenly over the 3 primaries)")
    ap.add_argument("--recipients", type=int, default=50, help="recipients per account")
    ap.add_argument("--per-recipient", type=int, default=10, help="jobs per recipient")
    args = ap.parse_args()
    redis.connection.AbstractConnection.send_packed_command = _counting  # type: ignore[method-assign]
    sandbox = SandboxProcess(latency_ms=0)
    sandbox.start()
    results = {}
    try:
        with PlainRedis() as broker:
            with PlainRedis() as single:
                results["single node"] = measure(single.url, broker.url, [single.node.client], sandbox, args)
            with Cluster() as cluster:
                results["cluster, 3 primaries"] = measure(
                    cluster.url, broker.url, [n.client for n in cluster.nodes], sandbox, args
                )
    finally:
        sandbox.stop()
    print(
        "| topology | jobs | enqueue: round trips/job | enqueue: Redis CPU µs/job "
        "| send: round trips/send | send: Redis CPU µs/send |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['jobs']:.0f} | {r['enqueue_trips']:.3f} | {r['enqueue_cpu_us']:.0f} "
            f"| {r['send_trips']:.2f} | {r['send_cpu_us']:.0f} |"
        )


if __name__ == "__main__":
    main()
