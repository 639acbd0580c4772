"""CPU of one Graph API send in the calling thread: dmworker's client beside a pooled ``requests``.

    cd bench && ../.venv/bin/python graph_call.py [--calls 3000] [--rounds 3]

Both POST the same text message to the sandbox (its own process, real HTTP on 127.0.0.1), one
call after the other on one kept-alive connection:

- **dmworker**: ``InstagramClient.messaging.send_text`` (builds and checks the body, sends it through
  the client's own urllib3 pool, parses the answer and Meta's usage headers);
- **requests (baseline)**: what ``bench/naive.py`` does per task, a pooled ``requests.Session`` with a
  Bearer header, then ``resp.json()``; this was also dmworker's transport before it called urllib3.

Prints the process CPU time (``time.process_time``) and the wall time per call, in µs, for each
round; the sandbox's CPU is not counted.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import common as c
import requests

from dmworker.graph import InstagramClient

USER = "17840000000009999"


def per_call_us(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sandbox = c.start_sandbox()
    try:
        sandbox.control.set_enforce_windows(False)
        base = sandbox.url + "/v25.0"
        client = InstagramClient(c.TOKEN, base_url=base)
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)

        def dmworker_call() -> object:
            return client.messaging.send_text(USER, "hello").message_id

        def requests_call() -> object:
            resp = session.post(
                base + "/me/messages",
                json={"recipient": {"id": USER}, "message": {"text": "hello"}},
                headers={"Authorization": "Bearer " + c.TOKEN},
                timeout=(3.05, 10.0),
            )
            resp.raise_for_status()
            return resp.json()["message_id"]

        for fn in (dmworker_call, requests_call):  # warm both connections
            per_call_us(fn, 50)
        print(f"load before: {c.loadavg()}")
        print("round  dmworker cpu  wall   requests cpu  wall   (us per call)")
        ratios = []
        for n in range(1, args.rounds + 1):
            d_cpu, d_wall = per_call_us(dmworker_call, args.calls)
            r_cpu, r_wall = per_call_us(requests_call, args.calls)
            ratios.append(r_cpu / d_cpu)
            print(f"{n:5d}  {d_cpu:12.0f}  {d_wall:5.0f}  {r_cpu:12.0f}  {r_wall:5.0f}")
        print(f"requests / dmworker CPU per call: {min(ratios):.2f}x to {max(ratios):.2f}x")
        client.close()
        session.close()
    finally:
        sandbox.stop()


if __name__ == "__main__":
    main()
