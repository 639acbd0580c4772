"""The command line meets ordinary mistakes with one line on stderr and an exit code, never a
traceback; its help shows the real options and their defaults (real `dmworker` processes)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ACCOUNT

from dmworker.admin import AccountState
from dmworker.cli import REGISTRARS
from dmworker.lanes import LaneStore
from dmworker.testing import settings_to_env

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-pa55"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "dmworker.cli", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def _one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, (out.returncode, out.stderr)
    lines = [x for x in out.stderr.strip().splitlines() if x.startswith("dmworker ")]
    assert len(lines) == 1, out.stderr  # the error is one line (log lines of the process may precede it)
    return lines[0]


def test_dlq_show_and_replay_without_an_id(tmp_path):
    env = _env(DMWORKER_REDIS_URL="redis://127.0.0.1:1/0", DMWORKER_DATA_DIR=str(tmp_path))
    for action in ("show", "replay"):
        line = _one_line_error(_cli(env, "dlq", action), 2)
        assert "job id" in line and "dmworker dlq list" in line


def test_a_bad_setting_names_the_variable(tmp_path):
    env = _env(DMWORKER_REDIS_URL="redis://127.0.0.1:1/0", DMWORKER_LEASE_MS="soon")
    line = _one_line_error(_cli(env, "accounts"), 2)
    assert "DMWORKER_LEASE_MS" in line and "integer" in line


def test_config_error_is_a_dmworker_error():
    from dmworker.errors import ConfigError, DmworkerError

    assert issubclass(ConfigError, DmworkerError)


def test_redis_unreachable_is_one_line_and_hides_the_password(tmp_path):
    env = _env(DMWORKER_REDIS_URL=f"redis://:{SECRET}@127.0.0.1:1/0", DMWORKER_ACCOUNT_ID=ACCOUNT)
    env["DMWORKER_ACCESS_TOKEN"] = "IGAAcli-token"
    for args in (("accounts",), ("dlq", "list"), ("send", "text", "5550001", "Hi")):
        line = _one_line_error(_cli(env, *args), 1)
        assert "Redis" in line and "127.0.0.1:1" in line and SECRET not in line, line


def test_an_unknown_url_scheme_is_refused_without_echoing_the_url(tmp_path):
    env = _env(
        DMWORKER_REDIS_URL=f"http://user:{SECRET}@example.invalid:6379/0", DMWORKER_DATA_DIR=str(tmp_path)
    )
    line = _one_line_error(_cli(env, "dlq", "list"), 2)
    assert "DMWORKER_REDIS_URL" in line and "'http://'" in line and SECRET not in line
    assert not (tmp_path / "redis").exists()  # nothing embedded started instead


def test_a_missing_extra_names_the_pip_command(tmp_path):
    # Given an installation without Flask (the [web] extra): `import flask` fails in this process
    code = "import sys; sys.modules['flask'] = None; from dmworker.cli import main; sys.exit(main())"
    env = _env(DMWORKER_REDIS_URL="redis://127.0.0.1:1/0")
    line = _one_line_error(_cli(env, "web", "--port", "1", code=code), 2)
    assert "pip install 'dmworker[web]'" in line


def test_a_bad_web_port_from_the_environment(tmp_path):
    line = _one_line_error(_cli(_env(DMWORKER_WEB_PORT="80a"), "web"), 2)
    assert "DMWORKER_WEB_PORT" in line


def test_version_matches_the_package_metadata():
    out = _cli(_env(), "--version")
    version = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
    assert out.returncode == 0 and out.stdout.strip() == f"dmworker {version}"


def test_subcommand_help_shows_the_real_options():
    sandbox = _cli(_env(), "sandbox", "--help")
    assert sandbox.returncode == 0
    assert all(opt in sandbox.stdout for opt in ("--latency-ms", "--token", "--no-windows"))
    worker = _cli(_env(), "worker", "--help")
    assert worker.returncode == 0  # Celery's own worker options, passed through
    assert all(opt in worker.stdout for opt in ("--concurrency", "--loglevel", "--pool"))


def _parsers(
    p: argparse.ArgumentParser, path: str = "dmworker"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser under ``p`` (subcommands of subcommands too), with its command path."""
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _parsers(sp, f"{path} {name}")


@pytest.mark.parametrize("register", REGISTRARS)
def test_every_option_has_help_and_shows_its_default(register):
    top = argparse.ArgumentParser(prog="dmworker")
    register(top.add_subparsers())
    for name, sp in _parsers(top):
        text = " ".join(sp.format_help().split())  # unwrapped
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction) or sp is top:
                continue
            assert action.help, (name, action.dest)
            meaningful = action.default not in (None, False, [], argparse.SUPPRESS)
            if meaningful and action.option_strings:
                assert f"(default: {action.default})" in text, (name, action.dest, text)


def _state(paused_until_ms: int | None, reason: str | None = None) -> AccountState:
    return AccountState(
        account=ACCOUNT,
        state="paused" if paused_until_ms else "active",
        configured=True,
        limits={"text": "100/s"},
        burst=5,
        usage_pct=None,
        slowdown=1.0,
        paused_until_ms=paused_until_ms,
        pause_reason=reason,
        pause_detail=None,
        backlog_lanes=0,
        scheduled=0,
        dead_letters=0,
        stats={},
    )


def test_accounts_shows_pauses_as_readable_times(settings, rdb, tmp_path):
    from dmworker.cli_common import when
    from dmworker.cli_ops import describe_account

    # Given a throttle pause of 12 minutes (as a worker records it)
    now_ms = time.time() * 1000
    until = int(now_ms + 12 * 60_000 + 20_000)
    rdb.hset(LaneStore(settings, rdb).acct(ACCOUNT).pause, mapping={"until": until, "reason": "throttled"})
    env = {**_env(), **settings_to_env(settings, str(tmp_path / "accounts.json"))}
    out = _cli(env, "accounts")
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith(ACCOUNT))
    # Then the pause reads as a UTC time and how far away it is, not epoch milliseconds
    assert re.search(r"paused until \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in 12 min\) \(throttled\)", line), line
    assert str(until) not in line
    assert out.stdout.splitlines()[0].startswith("workers: NONE")  # no worker in this test
    assert when(1_000_000, now_ms=1_000_000 + 5 * 3_600_000) == "1970-01-01 00:16:40Z (5 h ago)"
    # ... and a bad token's pause (no end until the token is replaced) says so
    assert "paused until resumed (token_invalid)" in describe_account(_state(1, "token_invalid"))


@pytest.mark.parametrize("args", [("cancel",), ("accounts", "resume"), ("conversations", "messages")])
def test_missing_arguments_are_usage_errors(args, tmp_path):
    env = _env(DMWORKER_REDIS_URL="redis://127.0.0.1:1/0", DMWORKER_ACCOUNT_ID=ACCOUNT)
    env["DMWORKER_ACCESS_TOKEN"] = "IGAAcli-token"
    _one_line_error(_cli(env, *args), 2)
