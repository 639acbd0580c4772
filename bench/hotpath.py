"""Figure 8: the hot path. Redis commands and round trips per send (MONITOR, our DB only, and the
server's INFO commandstats as a cross-check), a py-spy profile of one dmworker worker process,
and the cost of single hot-path pieces measured in isolation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import common as c
import redis
from workers import Group, backlog, timed_run

from dmworker import scripts
from dmworker.graph.client import InstagramClient
from dmworker.outbox import Outbox
from dmworker.schemas import load_job

SHA = {hashlib.sha1(scripts.source(n).encode()).hexdigest(): n for n in scripts.NAMES}


class Monitor:
    """Counts the commands of our DB (MONITOR), by command; a MULTI..EXEC block is one round trip."""

    def __init__(self) -> None:
        self.client: Counter[str] = Counter()
        self.lua: Counter[str] = Counter()
        self.trips = 0
        self.other_evalsha = 0  # EVALSHA calls of other DBs (other clients of this server)
        self._sentinel = f"dmwbmonitorstop{id(self):x}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._db = int(c.REDIS_URL.rsplit("/", 1)[1])

    def _run(self) -> None:
        multi: dict[str, list[str]] = {}
        with redis.Redis.from_url(c.REDIS_URL, decode_responses=True).monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                if self._sentinel in cmd["command"]:  # everything sent before it has been read
                    return
                if cmd.get("db") != self._db:
                    if cmd.get("client_type") != "lua" and cmd["command"][:8].upper() == "EVALSHA ":
                        self.other_evalsha += 1
                    continue
                words = cmd["command"].split()
                name = words[0].upper() if words else "?"
                if name in ("SCRIPT", "CLIENT", "CONFIG") and len(words) > 1:
                    name += " " + words[1].upper()
                if cmd.get("client_type") == "lua":
                    self.lua[name] += 1
                    continue
                who = f"{cmd.get('client_address')}:{cmd.get('client_port')}"
                if name == "EVALSHA" and len(words) > 1:
                    name = f"EVALSHA {SHA.get(words[1], words[1][:8])}"
                if name == "MULTI":
                    multi[who] = []
                elif name == "EXEC" and who in multi:
                    self.client["MULTI " + " ".join(sorted(multi.pop(who))) + " EXEC"] += 1
                    self.trips += 1
                elif who in multi:
                    multi[who].append(name)
                elif name not in ("PING", "SELECT"):
                    self.client[name] += 1
                    self.trips += 1

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            c.rdb().get(self._sentinel)
            self._thread.join(timeout=10)


def count_commands(group: Group, quick: bool) -> dict[str, Any]:
    items = backlog(50 if quick else 300, 10, f"count{group.system}")
    mon = Monitor()
    stats0: dict[str, Any] = {}

    def loaded() -> None:
        mon.__enter__()
        stats0.update(group.r.info("commandstats"))

    try:
        run = timed_run(group, items, 0, warm=False, on_loaded=loaded)
        time.sleep(0.2)
        stats1 = group.r.info("commandstats")
    finally:
        mon.__exit__()
    idle_s = 1.0 if quick else 3.0
    with Monitor() as idle:  # the same worker process with nothing to do: the dispatcher's polling
        time.sleep(idle_s)
    evalsha = (
        stats1.get("cmdstat_evalsha", {}).get("calls", 0) - stats0.get("cmdstat_evalsha", {}).get("calls", 0)
    ) - mon.other_evalsha
    out = {
        "sends": run.sends,
        "trips": mon.trips,
        "client": dict(mon.client),
        "lua": dict(mon.lua),
        "commandstats_evalsha": evalsha,
        "idle_per_s": {k: v / idle_s for k, v in idle.client.items()},
        "idle_trips_per_s": idle.trips / idle_s,
    }
    c.say(
        f"  {group.system:8} {mon.trips / run.sends:.2f} Redis round trips/send "
        f"({sum(mon.lua.values()) / run.sends:.1f} commands inside scripts/send)"
    )
    return out


def profile(group: Group, quick: bool, rate_hz: int = 250) -> dict[str, Any]:
    """py-spy (GIL holder only) on the first worker process while it drains a 0 ms backlog."""
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        return {"error": "py-spy is not installed (pip install py-spy)"}
    out = os.path.join(tempfile.mkdtemp(prefix="dmwb-prof-"), "profile.txt")
    proc: list[subprocess.Popen[bytes]] = []

    def loaded() -> None:
        proc.append(
            subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(group.pids[0]),
                    "--rate",
                    str(rate_hz),
                    "--format",
                    "raw",
                    "--gil",
                    "--nonblocking",
                    "-o",
                    out,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(0.5)

    run = timed_run(group, backlog(100 if quick else 500, 10, "prof"), 0, warm=False, on_loaded=loaded)
    proc[0].send_signal(signal.SIGINT)
    proc[0].wait(timeout=30)
    if not os.path.exists(out):
        return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
    res = analyse(out)
    res["sends"] = run.sends
    c.say(f"  profile: {res['samples']} samples ({out})")
    return res


COMPONENTS = (  # (label, function name as py-spy prints it, file part)
    ("lane loop, all of it (LaneWorker.run_lane)", "LaneWorker.run_lane", "dmworker/worker.py"),
    ("HTTP POST to the Graph API (InstagramClient.request)", "InstagramClient.request", "dmworker/graph"),
    (
        "  of which requests' proxy/env lookup (merge_environment_settings)",
        "Session.merge_environment_settings",
        "requests/sessions.py",
    ),
    ("  of which urllib3 + http.client send/receive (HTTPAdapter.send)", "HTTPAdapter.send", "requests"),
    ("step.lua round trip (LaneStore.step)", "LaneStore.step", "dmworker/lanes.py"),
    ("  of which redis-py Script/EVALSHA call", "Script.__call__", "redis/commands"),
    ("job re-validation (load_job, marshmallow)", "load_job", "dmworker/schemas"),
    ("precheck (windows, age, attempts)", "precheck", "dmworker/service.py"),
    ("outcome JSON for step (json.dumps)", "dumps", "json/__init__.py"),
    ("logging calls", "Logger.log", "logging"),
    ("token fingerprint (sha256 per step)", "token_fingerprint", "dmworker/settings.py"),
    ("Celery consumer loop: receive, ack (asynloop)", "asynloop", "celery/worker/loops.py"),
    ("Celery task bookkeeping (trace_task minus process_lane)", "build_tracer.<locals>.trace_task", "celery"),
    ("dispatcher thread (Dispatcher.run)", "Dispatcher.run", "dmworker/dispatcher.py"),
)


def analyse(path: str) -> dict[str, Any]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n_s = line.rstrip().rpartition(" ")
            if not n_s.isdigit():
                continue
            n = int(n_s)
            total += n
            frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
            for fr in set(frames):
                inclusive[fr] += n
            own[frames[-1]] += n
    comps = []
    for label, func, where in COMPONENTS:
        hits = sum(v for k, v in inclusive.items() if k.startswith(func + " (") and where in k)
        if "minus" in label:
            hits -= sum(v for k, v in inclusive.items() if k.startswith("process_lane ("))
        comps.append((label, 100.0 * hits / max(1, total)))
    top = [(k, 100.0 * v / max(1, total)) for k, v in own.most_common(13) if k.strip()][:12]
    return {"samples": total, "components": comps, "self": top}


def micro(sandbox: Any, settings: Any, quick: bool) -> dict[str, float]:
    """Single-thread costs (us per call) of hot-path pieces, in this process."""
    n = 300 if quick else 1500
    out: dict[str, float] = {}
    ctl = sandbox.control
    ctl.reset()
    ctl.open_windows(c.ACCOUNT, ["700000001"])
    client = InstagramClient(c.TOKEN, base_url=sandbox.url + "/v25.0", account_id=c.ACCOUNT)
    out["trust_env_default"] = bool(client._session.trust_env)
    for trust in (True, False):
        client._session.trust_env = trust
        for _ in range(50):
            client.messaging.send_text("700000001", "warm")
        t = time.perf_counter()
        for _ in range(n):
            client.messaging.send_text("700000001", "hello")
        out[f"post_trust_env_{trust}"] = (time.perf_counter() - t) / n * 1e6
    client.close()
    prepared = Outbox(settings=settings, client=c.rdb())._prepare("text", "700000001", {"text": "hello"}, {})
    job = prepared.jobs[0][1]
    for name, fn in (("load_job", lambda: load_job(job)), ("json_loads", lambda: json.loads(job))):
        fn()
        t = time.perf_counter()
        for _ in range(n * 10):
            fn()
        out[name] = (time.perf_counter() - t) / (n * 10) * 1e6
    return out


def _per(counter: dict[str, int], sends: int) -> dict[str, float]:
    return {k: v / sends for k, v in counter.items()}


def section(counts: dict[str, Any], prof: dict[str, Any], micro_us: dict[str, float]) -> str:
    d, n = counts["dmworker"], counts["naive"]
    dc, nc = _per(d["client"], d["sends"]), _per(n["client"], n["sends"])
    names = sorted(set(dc) | set(nc), key=lambda k: -(dc.get(k, 0) + nc.get(k, 0)))
    rows = [
        [f"`{k}`", f"{dc.get(k, 0):.3f}", f"{nc.get(k, 0):.3f}"]
        for k in names
        if dc.get(k, 0) + nc.get(k, 0) >= 0.005
    ]
    rows.append(
        [
            "**round trips per send** (a MULTI..EXEC block = 1)",
            f"**{d['trips'] / d['sends']:.2f}**",
            f"**{n['trips'] / n['sends']:.2f}**",
        ]
    )
    rows.append(
        [
            "commands run inside Lua scripts per send",
            f"{sum(d['lua'].values()) / d['sends']:.1f}",
            f"{sum(n['lua'].values()) / n['sends']:.1f}",
        ]
    )
    rows.append(
        [
            "`cmdstat_evalsha` delta / sends (INFO commandstats less other DBs' EVALSHA)",
            f"{d['commandstats_evalsha'] / d['sends']:.2f}",
            f"{n['commandstats_evalsha'] / n['sends']:.2f}",
        ]
    )
    t1 = c.table(["Redis command from a client, per send", "dmworker", "baseline"], rows)
    lua = sorted(_per(d["lua"], d["sends"]).items(), key=lambda kv: -kv[1])
    t2 = c.table(
        ["command inside step.lua (and dispatch.lua), per send", "calls"],
        [[f"`{k}`", f"{v:.2f}"] for k, v in lua if v >= 0.05],
    )
    parts = [t1, t2]
    if "error" in prof:
        parts.append(f"Profile: {prof['error']}")
    else:
        head = f"component (inclusive; % of {prof['samples']:,} samples holding the GIL)"
        parts.append(c.table([head, "% time"], [[label, f"{v:.1f}"] for label, v in prof["components"]]))
        parts.append(
            c.table(["function (self time)", "% time"], [[f"`{k}`", f"{v:.1f}"] for k, v in prof["self"]])
        )
    m = micro_us

    def now(v: bool) -> str:
        return " (dmworker's setting)" if bool(m.get("trust_env_default", True)) == v else ""

    parts.append(
        c.table(
            ["piece measured alone (one thread, this process)", "us per call"],
            [
                [
                    f"POST a text to the sandbox, `requests` trust_env=True{now(True)}",
                    f"{m['post_trust_env_True']:.0f}",
                ],
                [
                    f"POST a text to the sandbox, `requests` trust_env=False{now(False)}",
                    f"{m['post_trust_env_False']:.0f}",
                ],
                ["`load_job` (marshmallow re-validation of the stored job)", f"{m['load_job']:.1f}"],
                ["`json.loads` of the same job", f"{m['json_loads']:.1f}"],
            ],
        )
    )
    return "\n\n".join(parts)
