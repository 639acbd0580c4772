"""The command line, and the embedded Redis used when no DMWORKER_REDIS_URL is set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis
from conftest import ACCOUNT

from dmworker.cli import COMMANDS, build_parser
from dmworker.redisconn import embedded_status, ensure_embedded, stop_embedded
from dmworker.testing import settings_to_env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dmworker.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_every_command_has_help():
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(COMMANDS) == set(sub.choices)
    for cmd in COMMANDS:
        out = _cli(dict(os.environ), cmd, "--help")
        assert out.returncode == 0 and "usage:" in out.stdout.lower(), (cmd, out.stderr)


def test_send_status_cancel_dlq_accounts_from_the_command_line(settings, tmp_path):
    env = {**os.environ, **settings_to_env(settings, str(tmp_path / "accounts.json"))}
    env["DMWORKER_ACCOUNT_ID"] = ACCOUNT
    # send a follow-up (no worker runs: it stays scheduled), read it back, cancel it
    out = _cli(env, "send", "text", "5550001", "Hi there", "--delay", "3600", "--key", "nudge")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    st = json.loads(_cli(env, "status", job["id"]).stdout)
    assert st["state"] == "scheduled" and st["key"] == "nudge" and st["recipient"] == "5550001"
    assert _cli(env, "cancel", "--key", "nudge").stdout.strip() == "cancelled"
    assert json.loads(_cli(env, "status", job["id"]).stdout)["state"] == "cancelled"
    # bad input: a clear error, exit 2, nothing queued
    bad = _cli(env, "send", "text", "5550001", "x" * 1001)
    assert bad.returncode == 2 and "text" in bad.stderr and "bytes" in bad.stderr
    assert json.loads(_cli(env, "dlq", "list").stdout) == []
    acc = json.loads(_cli(env, "accounts", "--json").stdout)
    assert any(a["account"] == ACCOUNT and a["limits"]["text"] == "100/s" for a in acc)
    assert _cli(env, "status", "nope").returncode == 2


def test_embedded_redis_is_shared_and_persistent(tmp_path):
    # Given no Redis URL: the first user starts the embedded server under the data directory
    data = str(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env["DMWORKER_DATA_DIR"] = data
    code = (
        "from dmworker.settings import Settings; from dmworker import redisconn; "
        "s = Settings.from_env(); c = redisconn.client(s); print(redisconn.redis_url(s)); {}"
    )
    try:
        a = subprocess.run(
            [sys.executable, "-c", code.format("c.set('dmwembed:k', 'v')")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert a.returncode == 0, a.stderr
        # one line says so, where it is and how to stop it (or use a real one)
        started = [line for line in a.stderr.splitlines() if "using the embedded Redis" in line]
        assert len(started) == 1 and data in started[0] and "dmworker embedded stop" in started[0]
        assert "DMWORKER_REDIS_URL" in started[0]
        # Then the next process reuses it (same socket, sees the data) without starting another
        b = subprocess.run(
            [sys.executable, "-c", code.format("print(c.get('dmwembed:k'))")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert b.stdout.split() == [a.stdout.strip(), "v"] and "using the embedded" not in b.stderr
        # ... and the data survives a restart of the server (AOF under the data directory)
        sock = ensure_embedded(data)
        redis.Redis(unix_socket_path=str(sock)).execute_command("BGREWRITEAOF")
        stop_embedded(data)
        import time

        time.sleep(0.5)
        sock = ensure_embedded(data)
        assert redis.Redis(unix_socket_path=str(sock)).get("dmwembed:k") == b"v"
    finally:
        stop_embedded(data)


def test_with_a_url_nothing_embedded_starts(tmp_path, redis_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env.update(DMWORKER_DATA_DIR=str(tmp_path / "d"), DMWORKER_REDIS_URL=redis_url)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from dmworker.settings import Settings; from dmworker import "
            "redisconn; print(redisconn.client(Settings.from_env()).ping())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "True" and not (tmp_path / "d").exists()


def test_conversations_read_side_from_the_command_line(settings, sandbox, tmp_path):
    for user in ("5560001", "5560002", "5560003"):
        sandbox.inbound(ACCOUNT, user, text=f"hello from {user}")
    env = {**os.environ, **settings_to_env(settings, str(tmp_path / "accounts.json"))}
    env["DMWORKER_ACCOUNT_ID"] = ACCOUNT
    out = _cli(env, "conversations", "list", "--limit", "2")
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert len(rows) == 2 and all(r[0] for r in rows)
    msgs = _cli(env, "conversations", "messages", rows[0][0])
    assert msgs.returncode == 0 and "hello from" in msgs.stdout


def test_bulk_from_a_json_lines_file_shows_progress(settings, tmp_path, rdb):
    env = {**os.environ, **settings_to_env(settings, str(tmp_path / "accounts.json"))}
    env["DMWORKER_ACCOUNT_ID"] = ACCOUNT
    f = tmp_path / "jobs.jsonl"
    f.write_text(
        "\n".join(
            json.dumps({"kind": "text", "recipient": str(5570000 + i), "text": f"hi {i}", "delay": 3600})
            for i in range(1200)
        )
    )
    out = _cli(env, "bulk", str(f))
    assert out.returncode == 0, out.stderr
    assert "queued 1200 jobs" in out.stdout and "1200/1200" in out.stderr  # the progress bar
    assert rdb.zcard(f"{settings.key_prefix}:{{{ACCOUNT}}}:sched") == 1200
    f.write_text(json.dumps({"kind": "text", "recipient": "5579999", "text": ""}))
    bad = _cli(env, "bulk", str(f))
    assert bad.returncode == 2 and "0.text" in bad.stderr


def test_embedded_status_and_stop_from_the_command_line(tmp_path):
    data = str(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env["DMWORKER_DATA_DIR"] = data
    try:
        # Given none running: status says so (exit 3) and starts nothing
        out = _cli(env, "embedded", "status")
        assert out.returncode == 3 and "not running" in out.stdout and not (tmp_path / "data").exists()
        # When a dmworker process starts it, status names its pid and socket
        sock = ensure_embedded(data)
        state = embedded_status(data)
        assert state is not None
        out = _cli(env, "embedded", "status")
        assert out.returncode == 0 and f"pid {state.pid}" in out.stdout and str(sock) in out.stdout
        # Then `embedded stop` stops it (the process is gone when the command returns)
        out = _cli(env, "embedded", "stop")
        assert out.returncode == 0 and f"stopped the embedded Redis (pid {state.pid})" in out.stdout
        assert embedded_status(data) is None
        assert _gone(state.pid)
        assert _cli(env, "embedded", "status").returncode == 3
        assert "not running" in _cli(env, "embedded", "stop").stdout
    finally:
        stop_embedded(data)


@pytest.mark.slow
def test_the_demo_stops_the_embedded_redis_it_started_and_only_that(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    demo = ("demo", "--users", "5", "--workers", "1", "--no-progress")
    try:
        # Given no embedded Redis running: the demo starts one and stops it at its end
        env["DMWORKER_DATA_DIR"] = data = str(tmp_path / "a")
        out = _cli(env, *demo)
        assert "Totals:" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]  # it ran to its end
        assert "stopped the embedded Redis" in out.stdout and embedded_status(data) is None
        # Given one running already (another dmworker process uses it): the demo leaves it running
        env["DMWORKER_DATA_DIR"] = data = str(tmp_path / "b")
        ensure_embedded(data)
        out = _cli(env, *demo)
        assert "Totals:" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
        assert "stopped the embedded Redis" not in out.stdout and embedded_status(data) is not None
    finally:
        stop_embedded(str(tmp_path / "a"))
        stop_embedded(str(tmp_path / "b"))


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"
