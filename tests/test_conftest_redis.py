"""The suite's own Redis: never a DB that may hold someone's data (a real pytest run of the shared
fixtures in a subprocess, against real Redis servers)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dmworker.redisconn import embedded_status, ensure_embedded, stop_embedded

HERE = Path(__file__).resolve().parent

INNER_TEST = """
import os

def test_writes_one_key(redis_url, rdb, key_prefix):
    rdb.set(f"{key_prefix}:probe", "1")
    print("REDIS_URL", redis_url)
"""


def _inner_pytest(tmp_path: Path, **env_over: str) -> subprocess.CompletedProcess[str]:
    """Run one test that uses the shared fixtures, in a fresh pytest process (temp dirs under tmp_path)."""
    work = tmp_path / "inner"
    work.mkdir(exist_ok=True)
    shutil.copy(HERE / "conftest.py", work / "conftest.py")
    (work / "test_inner.py").write_text(INNER_TEST)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env.update(TMPDIR=str(tmp), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env_over)  # fast: conftest only
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_url_the_tests_use_an_embedded_redis_and_stop_it(tmp_path):
    # Given no DMWORKER_TEST_REDIS_URL (whatever answers on localhost:6379)
    out = _inner_pytest(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # Then the tests ran on an embedded Redis in a temporary directory (a unix socket) ...
    url = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("REDIS_URL"))
    assert url.startswith("unix://" + str(tmp_path / "tmp")), url
    # ... which is stopped when the session ends: no daemon left running
    data_dirs = list((tmp_path / "tmp").glob("dmw-test-*"))
    assert all(embedded_status(str(d)) is None for d in data_dirs)
    assert not Path(url[len("unix://") :]).exists()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test alone (an embedded one in tmp_path): its URL."""
    data = str(tmp_path / "own")
    try:
        yield "unix://" + str(ensure_embedded(data))
    finally:
        stop_embedded(data)


def test_a_given_db_with_other_data_is_refused_and_left_alone(tmp_path, own_server):
    # Given DMWORKER_TEST_REDIS_URL pointing to a DB that holds someone's key
    given = own_server + "?db=7"
    r = redis.Redis.from_url(given, decode_responses=True)
    try:
        r.set("orders:17", "precious")
        # When the tests start
        out = _inner_pytest(tmp_path, DMWORKER_TEST_REDIS_URL=given)
        # Then they refuse, naming the variable and a key, and write nothing there
        assert out.returncode == 4, out.stdout + out.stderr
        text = out.stdout + out.stderr
        assert "DMWORKER_TEST_REDIS_URL" in text and "'orders:17'" in text and "empty DB" in text
        assert "REDIS_URL unix" not in out.stdout  # the test did not run
        assert sorted(r.keys()) == ["orders:17"] and r.get("orders:17") == "precious"
    finally:
        r.close()


def test_a_given_db_that_is_empty_or_holds_only_test_keys_is_used(tmp_path, own_server):
    given = own_server + "?db=8"
    r = redis.Redis.from_url(given, decode_responses=True)
    try:
        r.set("dmwt0123456789:{1}:leftover", "x")  # what an interrupted earlier run leaves
        out = _inner_pytest(tmp_path, DMWORKER_TEST_REDIS_URL=given)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"REDIS_URL {given}" in out.stdout
        assert r.keys() == ["dmwt0123456789:{1}:leftover"]  # the test deleted its own keys only
    finally:
        r.close()
