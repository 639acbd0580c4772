"""How many Graph sends per second the sandbox answers (it must never be a benchmark's bottleneck).

Starts a SandboxProcess and opens one window; then for each K in ``--threads`` runs K client
threads, each with its own keep-alive ``requests.Session``, posting valid text messages for
``--seconds``. ``--procs P`` spreads the K threads over P client processes (one Python process
tops out near one core because of the GIL). Prints requests/s, the sandbox's own CPU time per
request (from /proc) and the capacity that implies, and checks the sandbox recorded every send.

    /work/venv/bin/python bench/sandbox_rps.py [--threads 1,8] [--seconds 3] [--procs 1]

The client sessions set ``trust_env = False``: with it on, requests looks up proxy variables and
~/.netrc on every call, which costs the client more than the sandbox spends answering.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time

import requests

from dmworker.sandbox import SandboxProcess

TOKEN, ACCOUNT, USER = "IGAAbench-token-0000000000000000", "17841400000000009", "900000000000001"


def client(url: str, threads: int, seconds: float, trust_env: bool, results: mp.Queue) -> None:
    """One client process: ``threads`` threads posting until the deadline; puts (ok, errors, seconds)."""
    counts, errors = [0] * threads, [0] * threads
    ready = threading.Barrier(threads + 1)
    deadline = [0.0]
    body = json.dumps({"recipient": {"id": USER}, "message": {"text": "hello from the benchmark"}}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def worker(i: int) -> None:
        with requests.Session() as session:
            session.trust_env = trust_env
            session.post(f"{url}/v25.0/me/messages", data=body, headers=headers, timeout=10)  # connect
            ready.wait()
            while time.perf_counter() < deadline[0]:
                resp = session.post(f"{url}/v25.0/me/messages", data=body, headers=headers, timeout=10)
                if resp.status_code == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    ready.wait()
    started = time.perf_counter()
    for t in pool:
        t.join()
    results.put((sum(counts), sum(errors), time.perf_counter() - started))


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (Linux /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run(proc: SandboxProcess, threads: int, procs: int, seconds: float, trust_env: bool) -> str:
    ctl = proc.control
    ctl.reset()
    ctl.open_window(ACCOUNT, USER)
    ctx = mp.get_context("spawn" if procs > 1 else "fork")
    results: mp.Queue = ctx.Queue()
    split = [threads // procs + (1 if i < threads % procs else 0) for i in range(procs)]
    cpu0 = cpu_s(proc.pid or 0)
    if procs == 1:
        client(proc.url, threads, seconds, trust_env, results)
    else:
        children = [
            ctx.Process(target=client, args=(proc.url, n, seconds, trust_env, results)) for n in split
        ]
        for c in children:
            c.start()
        for c in children:
            c.join()
    cpu1 = cpu_s(proc.pid or 0)
    ok = bad = 0
    rate = 0.0
    for _ in split:
        n_ok, n_bad, elapsed = results.get()
        ok, bad, rate = ok + n_ok, bad + n_bad, rate + n_ok / elapsed
    recorded = ctl.stats()["sends"] - threads  # minus the warm-up sends
    line = (
        f"threads={threads:<3} procs={procs}  {rate:7.0f} req/s  ({ok} ok, {bad} errors, "
        f"sandbox recorded {recorded})"
    )
    if cpu0 is not None and cpu1 is not None and ok:
        per_req_us = (cpu1 - cpu0) / (ok + bad + threads) * 1e6
        line += f"  sandbox CPU {per_req_us:.0f} us/request (~{1e6 / per_req_us:,.0f} req/s per core)"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", default="1,8", help="comma-separated client thread counts")
    parser.add_argument("--procs", type=int, default=1, help="client processes to spread the threads over")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--trust-env", action="store_true", help="leave requests' trust_env on")
    args = parser.parse_args()
    with SandboxProcess(tokens={TOKEN: ACCOUNT}) as proc:
        for k in (int(x) for x in args.threads.split(",")):
            print(run(proc, k, min(args.procs, k), args.seconds, args.trust_env), flush=True)


if __name__ == "__main__":
    main()
