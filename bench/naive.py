"""The baseline: a plain Celery app that posts one message per task with ``requests``.

What a team would write first: one Celery message per send, the ``threads`` pool, late acks,
the same Redis broker and prefetch as dmworker, a pooled ``requests.Session`` per thread, the
token in a Bearer header. It keeps no per-recipient order (prefetch and concurrency reorder),
has no cluster-wide rate limit, no durable follow-ups and no record of what was sent, so a crash
or redelivery can duplicate or lose a send.

The worker runs as ``celery -A naive worker`` with ``bench/`` on ``PYTHONPATH``; its settings come
from ``NAIVE_*`` environment variables read when the app is configured (not at import).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import requests
from celery import Celery
from celery.signals import worker_ready

app = Celery("naive", set_as_current=False)
TASK = "naive.send"


def _config() -> dict[str, Any]:
    prefix = os.environ.get("NAIVE_PREFIX", "dmwbnaive")
    return {
        "broker_url": os.environ.get("NAIVE_BROKER", "redis://127.0.0.1:6379/14"),
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_default_queue": queue_name(prefix),
        "worker_prefetch_multiplier": 4,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"global_keyprefix": f"{prefix}:celery:", "visibility_timeout": 3600},
    }


app.add_defaults(_config)
_local = threading.local()


def queue_name(prefix: str) -> str:
    return f"{prefix}.naive"


def _session() -> requests.Session:
    s = getattr(_local, "session", None)
    if s is None:
        s = _local.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
    return s


@app.task(name=TASK, acks_late=True, ignore_result=True)
def send(recipient: str, text: str) -> str:
    """POST one text message; raise on anything but 2xx (Celery then logs it)."""
    resp = _session().post(
        os.environ["NAIVE_GRAPH_URL"] + "/me/messages",
        json={"recipient": {"id": recipient}, "message": {"text": text}},
        headers={"Authorization": "Bearer " + os.environ["NAIVE_TOKEN"]},
        timeout=(3.05, 10.0),
    )
    resp.raise_for_status()
    return str(resp.json()["message_id"])


@worker_ready.connect
def _ready(**_: Any) -> None:
    print("naive worker ready", file=sys.stderr, flush=True)


def start_workers(
    prefix: str, n: int, concurrency: int, graph_url: str, token: str, broker: str, log_dir: str
) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` baseline worker processes; their logs go to ``log_dir/naive<i>.log``."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env.update(
        {
            "NAIVE_PREFIX": prefix,
            "NAIVE_BROKER": broker,
            "NAIVE_GRAPH_URL": graph_url,
            "NAIVE_TOKEN": token,
            "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here), env.get("PYTHONPATH", "")]),
        }
    )
    procs = []
    for i in range(n):
        log = open(os.path.join(log_dir, f"naive{i}.log"), "ab")  # noqa: SIM115 - the child owns it
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "naive",
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    str(concurrency),
                    "--loglevel",
                    "WARNING",
                    "-n",
                    f"naive{i}-{prefix}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-Q",
                    queue_name(prefix),
                ],
                env=env,
                cwd=here,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    import signal

    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
