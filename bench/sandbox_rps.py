"""How many Graph sends per second the sandbox answers (it must never be a benchmark's bottleneck).

Starts a SandboxProcess, opens one window, then for each K in --threads runs K client threads,
each with its own keep-alive ``requests.Session``, posting valid text messages for --seconds.
Prints requests/s per K (and the sandbox's own count, to check nothing was lost).

    /work/venv/bin/python bench/sandbox_rps.py [--threads 1,8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import threading
import time

import requests

from dmworker.sandbox import SandboxProcess

TOKEN, ACCOUNT, USER = "IGAAbench-token-0000000000000000", "17841400000000009", "900000000000001"


def run(url: str, threads: int, seconds: float) -> tuple[int, int, float]:
    counts = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        body = {"recipient": {"id": USER}, "message": {"text": f"hello from thread {i}"}}
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {TOKEN}"
            session.post(f"{url}/v25.0/me/messages", json=body, timeout=10)  # connect before timing
            start.wait()
            while time.perf_counter() < stop_at[0]:
                resp = session.post(f"{url}/v25.0/me/messages", json=body, timeout=10)
                if resp.status_code == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds + 0.05
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    return sum(counts), sum(errors), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,8", help="comma-separated client thread counts")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with SandboxProcess(tokens={TOKEN: ACCOUNT}) as proc:
        ctl = proc.control
        for k in (int(x) for x in args.threads.split(",")):
            ctl.reset()
            ctl.open_window(ACCOUNT, USER)
            ok, bad, elapsed = run(proc.url, k, args.seconds)
            recorded = ctl.stats()["sends"]
            print(f"threads={k:<3} {ok / elapsed:8.0f} req/s  ({ok} ok, {bad} errors in {elapsed:.2f} s; "
                  f"sandbox recorded {recorded} sends)", flush=True)


if __name__ == "__main__":
    main()
