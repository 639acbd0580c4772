"""`dmworker status` tells an operator whether any worker is alive (real `dmworker` processes,
real Redis, a real worker's heartbeat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ACCOUNT

from dmworker.cli_ops import WORKER_ALIVE_MS, WorkerLiveness, describe_workers
from dmworker.keys import Keys
from dmworker.testing import ProcessGroup, settings_to_env, wait_until

pytestmark = pytest.mark.slow  # real processes: the full suite and CI run it


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmworker.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def env(settings, tmp_path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    e.update(settings_to_env(settings, str(tmp_path / "accounts.json")))
    e["DMWORKER_ACCOUNT_ID"] = ACCOUNT
    return e


def _redis_ms(rdb) -> int:
    sec, usec = rdb.time()
    return int(sec) * 1000 + int(usec) // 1000


def test_the_alive_window_is_the_one_healthz_and_the_metric_use():
    pytest.importorskip("flask")
    from dmworker.web.health import HEARTBEAT_MAX_AGE_MS

    assert WORKER_ALIVE_MS == HEARTBEAT_MAX_AGE_MS


def test_status_says_when_no_worker_ever_ran_and_a_waiting_job_warns(env):
    # Given no worker has ever beaten
    out = _cli(env, "status")
    # Then the overview says so on its first line, and lists the account
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("workers: NONE has ever sent a heartbeat")
    assert any(line.startswith(f"{ACCOUNT}: active") for line in lines[1:])
    # When a job is queued and its status is asked for
    job = json.loads(_cli(env, "send", "text", "5550101", "Hi").stdout)
    st = _cli(env, "status", job["id"])
    # Then stdout is the job's JSON as before, and stderr warns that nothing will send it
    assert json.loads(st.stdout)["state"] == "queued"
    assert "workers: NONE" in st.stderr and "Traceback" not in st.stderr


def test_status_shows_a_stale_heartbeat_as_dead_with_its_age(env, settings, rdb):
    # Given a worker that last beat 5 minutes ago (Redis clock)
    rdb.zadd(Keys(settings.key_prefix).workers, {"w-old@host": _redis_ms(rdb) - 300_000})
    out = _cli(env, "status")
    # Then it is not counted as alive, and the line says when it was last heard from
    first = out.stdout.splitlines()[0]
    assert first.startswith("workers: NONE alive (no heartbeat in the last 30 s)"), out.stdout
    assert "(5 min ago)" in first and "from w-old@host" in first
    data = json.loads(_cli(env, "status", "--json").stdout)
    assert data["workers"]["alive"] == 0 and 299 <= data["workers"]["last_beat_age_s"] <= 330
    assert any(a["account"] == ACCOUNT for a in data["accounts"])


def test_status_shows_a_running_worker_as_alive(env, settings, rdb):
    # Given a real worker process (its dispatcher thread beats every few seconds)
    g = ProcessGroup(settings)
    try:
        g.start_worker("wlive", concurrency=1)
        assert wait_until(lambda: rdb.zcard(Keys(settings.key_prefix).workers) > 0, 30), g.log_tail("wlive")
        # When the operator asks for the overview
        out = _cli(env, "status")
        data = json.loads(_cli(env, "status", "--json").stdout)
    finally:
        g.stop_all()
    # Then the worker is alive, by name
    first = out.stdout.splitlines()[0]
    assert first.startswith("workers: 1 alive (a heartbeat in the last 30 s: wlive@"), out.stdout
    assert data["workers"]["alive"] == 1 and data["workers"]["names"][0].startswith("wlive@")


def test_a_long_list_of_live_workers_is_cut_short():
    w = WorkerLiveness([f"w{i}@h" for i in range(8)], "w0@h", 1_000, 2_000)
    assert describe_workers(w) == (
        "workers: 8 alive (a heartbeat in the last 30 s: w0@h, w1@h, w2@h, w3@h, w4@h and 3 more)"
    )
