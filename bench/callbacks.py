"""Events and callbacks: what events cost a send, and how fast callbacks are delivered.

One process, an embedded Redis, the Graph API sandbox (0 ms latency). The in-process send loop
(``Outbox.send_text`` + ``LaneWorker.run_lane``, no Celery) runs with events off
(``events_retention_s=0``) and on (the default), interleaved, and reports per send: CPU of this
process and of the Redis server (µs), client round trips to Redis (every request the client writes:
a pipeline is one), and Redis commands (INFO commandstats, commands inside scripts included). Then
a :class:`~dmworker.callbacks_deliver.Deliverer` delivers the run's events to a local HTTP receiver
(204), and the callback rate (events/s) is printed beside the send rate of the same run.

    .venv/bin/python bench/callbacks.py [--jobs 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from redis.connection import AbstractConnection as Connection

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmworker.callbacks_deliver import Deliverer
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.redisconn import ensure_embedded, stop_embedded
from dmworker.sandbox import SandboxProcess
from dmworker.settings import AccountConfig, Settings, parse_rate
from dmworker.worker import LaneWorker

ACCOUNT, TOKEN = "17841400000000001", "IGAAbench-token-0001"
TRIPS = [0]
_send = Connection.send_packed_command


def _counting(self: Connection, command: Any, check_health: bool = True) -> None:
    TRIPS[0] += 1
    _send(self, command, check_health)


Connection.send_packed_command = _counting  # type: ignore[method-assign]


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commands(r: redis.Redis) -> int:
    return sum(int(v["calls"]) for k, v in r.info("commandstats").items())


def send_loop(settings: Settings, r: redis.Redis, redis_pid: int, n: int, tag: str) -> dict[str, float]:
    """``n`` texts to 100 recipients, sent by one in-process LaneWorker; per-send costs."""
    store = LaneStore(settings, r)
    ob = Outbox(settings=settings, client=r, publish=lambda a, rc: None)
    worker = LaneWorker(settings, store)
    recipients = [str(900000 + i) for i in range(100)]
    worker.run_lane(ACCOUNT, recipients[0])  # warm up: scripts loaded, connections open
    cmds0, trips0, rcpu0 = commands(r), TRIPS[0], cpu_of(redis_pid)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        ob.send_text(recipients[i % 100], f"{tag}#{i}")
        if i % 100 == 99:
            for rc in recipients:
                worker.run_lane(ACCOUNT, rc)
    wall = time.perf_counter() - t0
    cpu, rcpu = time.process_time() - cpu0, cpu_of(redis_pid) - rcpu0
    trips, cmds = TRIPS[0] - trips0, commands(r) - cmds0 - 1  # minus the INFO itself
    worker.clients.close()
    return {"cpu_us": cpu / n * 1e6, "redis_cpu_us": rcpu / n * 1e6, "trips": trips / n,
            "commands": cmds / n, "rate": n / wall}  # fmt: skip


def deliver(settings: Settings, r: redis.Redis, expected: int) -> tuple[float, int]:
    """Deliver every event of the run to a local receiver; (events/s, requests)."""
    got = [0, 0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                got[0] += len(json.loads(body)["events"])
                got[1] += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s = settings.with_overrides(callback_url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    d = Deliverer(LaneStore(s, r), consumer="bench", url_for=lambda a: None)
    t0 = time.perf_counter()
    while got[0] < expected and time.perf_counter() - t0 < 120:
        if not d.step():
            time.sleep(0.001)
    took = time.perf_counter() - t0
    d.close()
    server.shutdown()
    return got[0] / took, got[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    ns = p.parse_args()
    data_dir = tempfile.mkdtemp(prefix="dmw-bench-cb-")
    sandbox = SandboxProcess(tokens={TOKEN: ACCOUNT})
    sandbox.start()
    try:
        url = "unix://" + str(ensure_embedded(data_dir))
        r = redis.Redis.from_url(url, decode_responses=True)
        redis_pid = int(r.info("server")["process_id"])
        sandbox.control.open_windows(ACCOUNT, [str(900000 + i) for i in range(100)])
        base = Settings.from_env({}).with_overrides(
            redis_url=url,
            graph_url=sandbox.url + "/v25.0",
            accounts={ACCOUNT: AccountConfig(ACCOUNT, TOKEN)},
            default_account=ACCOUNT,
            window_policy="trust",
            callback_secret="bench-secret",
            rates={**Settings().rates, "text": parse_rate("1000000/s")},
        )
        results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for rnd in range(ns.rounds):
            for mode in ("off", "on"):
                s = base.with_overrides(key_prefix=f"dmwb{mode}{rnd}",
                                        events_retention_s=0 if mode == "off" else 86_400)  # fmt: skip
                results[mode].append(send_loop(s, r, redis_pid, ns.jobs, f"{mode}{rnd}"))
        s_on = base.with_overrides(key_prefix=f"dmwbon{ns.rounds - 1}")
        cb_rate, requests = deliver(s_on, r, ns.jobs)
        print(f"jobs per run {ns.jobs}, rounds {ns.rounds} (off/on interleaved), load {os.getloadavg()}")
        print("| events | CPU µs/send (this process) | Redis CPU µs/send | round trips/send "
              "| Redis commands/send | sends/s |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for mode, rows in results.items():
            best = min(rows, key=lambda x: x["cpu_us"])
            med = sorted(rows, key=lambda x: x["cpu_us"])[len(rows) // 2]
            cpu = f"{med['cpu_us']:.0f} (best {best['cpu_us']:.0f})"
            print(f"| {mode} | {cpu} | {med['redis_cpu_us']:.0f} | "
                  f"{med['trips']:.2f} | {med['commands']:.2f} | {med['rate']:.0f} |")  # fmt: skip
        print(
            f"callbacks: {cb_rate:.0f} events/s delivered ({requests} POSTs) beside "
            f"{sorted(x['rate'] for x in results['on'])[len(results['on']) // 2]:.0f} sends/s (events on)"
        )
    finally:
        sandbox.stop()
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
