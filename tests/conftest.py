"""Shared fixtures: a real Redis (own key prefix, never flushed) and a real Graph API sandbox.

Redis: the embedded Redis (``dmworker.redisconn.ensure_embedded``) under a temporary directory,
started on first use and stopped when the session ends; or ``DMWORKER_TEST_REDIS_URL`` when given,
after checking that its DB is empty or holds only keys an earlier run of these tests left (the
test prefixes ``dmwt…``, ``dmwp…``, ``dmws…``): a DB with anything else is refused, so the tests
never write next to someone's data.  Every test gets its own key prefix and deletes only keys
under it.  Worker processes started by tests get the URL through their settings (a unix socket
URL for the embedded Redis).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import AccountConfig, Settings
from dmworker.worker import LaneWorker

ACCOUNT = "17841400000000001"
TOKEN = "IGAAtest-token-secret-value-0001"
#: Where the dashboard's browser tests save their screenshots (default: the test's tmp dir).
SCREENSHOT_DIR_VAR = "DMWORKER_TEST_SCREENSHOT_DIR"
ACCOUNT2 = "17841400000000002"
TOKEN2 = "IGAAtest-token-secret-value-0002"

#: The timings of the tests' settings: short Graph timeouts (s), leases, graces, backoffs and
#: dispatcher ticks (ms), so that a retry or a lost message is seen in seconds, not minutes.
TEST_TIMINGS: dict[str, Any] = {
    "http_connect_timeout_s": 1.0,
    "http_read_timeout_s": 2.0,
    "lease_ms": 4_000,
    "dispatch_grace_ms": 2_000,
    "backoff_base_ms": 50,
    "backoff_cap_ms": 500,
    "scheduler_tick_ms": 20,
}

TEST_REDIS_ENV = "DMWORKER_TEST_REDIS_URL"
#: keys these tests write: ``<prefix>:...`` with a random test prefix (key_prefix fixture: dmwt +
#: 10 hex; test_lane_properties: dmwp / dmws + 8 hex)
TEST_KEY = re.compile(r"^dmw[tps][0-9a-f]{8,10}:")


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def foreign_keys(r: redis.Redis, sample: int = 3) -> tuple[int, list[str]]:
    """How many keys of ``r``'s DB are not test keys, and a few of their names."""
    count, names = 0, []
    for key in r.scan_iter(count=1000):
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        if not TEST_KEY.match(name):
            count += 1
            if len(names) < sample:
                names.append(name)
    return count, names


def check_test_redis(url: str) -> str | None:
    """Why the DB at ``url`` must not be used by the tests, or None when it may be."""
    shown = _hide_password(url)
    r = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        count, names = foreign_keys(r)
    except redis.RedisError as e:
        return f"{TEST_REDIS_ENV}={shown}: cannot reach it ({type(e).__name__}: {e})"
    finally:
        r.close()
    if count:
        return (
            f"{TEST_REDIS_ENV}={shown} holds {count} key(s) these tests did not write "
            f"(e.g. {', '.join(map(repr, names))}); the tests write into that DB, so they refuse to run "
            "there: give an empty DB, or unset it to use an embedded Redis"
        )
    return None


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``DMWORKER_TEST_REDIS_URL`` (checked), else an embedded Redis stopped at the end."""
    given = os.environ.get(TEST_REDIS_ENV)
    if given:
        refusal = check_test_redis(given)
        if refusal:
            pytest.exit(refusal, returncode=pytest.ExitCode.USAGE_ERROR)
        yield given
        return
    from dmworker.redisconn import ensure_embedded, stop_embedded

    data_dir = tempfile.mkdtemp(prefix="dmw-test-")
    try:
        yield "unix://" + str(ensure_embedded(data_dir))
    finally:
        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"dmwt{uuid.uuid4().hex[:10]}"
    yield prefix
    r = redis.Redis.from_url(redis_url)
    batch = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    while batch:
        r.delete(*batch[:1000])
        batch = batch[1000:]
    broker = os.environ.get("DMWORKER_TEST_BROKER_URL", "")
    if broker.startswith("amqp"):  # the suite run on RabbitMQ: remove this test's queue
        import contextlib

        from kombu import Connection

        with Connection(broker) as conn, contextlib.suppress(Exception):
            conn.channel().queue_delete(f"{prefix}.lanes")


@pytest.fixture
def rdb(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture(scope="session")
def sandbox_proc() -> Iterator[object]:
    """One Graph API sandbox process for the whole run (reset before each test that uses it)."""
    from dmworker.sandbox import SandboxProcess

    proc = SandboxProcess(tokens={TOKEN: ACCOUNT, TOKEN2: ACCOUNT2})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def sandbox(sandbox_proc: object) -> object:
    """The sandbox's control client, reset to a clean state for this test."""
    ctl = sandbox_proc.control  # type: ignore[attr-defined]
    ctl.reset()
    return ctl


@pytest.fixture
def settings(redis_url: str, key_prefix: str, sandbox: object) -> Settings:
    base = Settings.from_env({})
    return base.with_overrides(
        redis_url=redis_url,
        broker_url=os.environ.get("DMWORKER_TEST_BROKER_URL") or None,  # e.g. amqp://guest:guest@127.0.0.1//
        key_prefix=key_prefix,
        graph_url=sandbox.url + "/v25.0",  # type: ignore[attr-defined]
        accounts={ACCOUNT: AccountConfig(ACCOUNT, TOKEN), ACCOUNT2: AccountConfig(ACCOUNT2, TOKEN2)},
        default_account=ACCOUNT,
        **TEST_TIMINGS,
    )


@pytest.fixture
def lsettings(settings: Settings) -> Settings:
    """The settings of the lane-level tests (``store``, ``outbox``, ``worker``): the messaging
    window is trusted; a module overrides this fixture for other settings."""
    return settings.with_overrides(window_policy="trust")


@pytest.fixture
def store(lsettings: Settings, rdb: redis.Redis) -> LaneStore:
    return LaneStore(lsettings, rdb)


@pytest.fixture
def outbox(lsettings: Settings, rdb: redis.Redis) -> Outbox:
    """A producer whose Celery messages go nowhere (tests run lanes with ``worker``)."""
    return Outbox(settings=lsettings, client=rdb, publish=lambda a, r: None)


@pytest.fixture
def worker(lsettings: Settings, store: LaneStore) -> Iterator[LaneWorker]:
    w = LaneWorker(lsettings, store)
    yield w
    w.clients.close()


def pytest_configure(config: pytest.Config) -> None:
    # worker subprocesses started by tests import the package from this checkout
    os.environ.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(__file__)))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
