"""Shared fixtures: a real Redis (own key prefix, never flushed) and a real Graph API sandbox.

Redis: ``DMWORKER_TEST_REDIS_URL`` if set; else ``redis://127.0.0.1:6379/15`` when a server
answers there; else the embedded Redis (started under a temporary data directory).  Every test
gets its own key prefix and deletes only keys under it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest
import redis

from dmworker.settings import AccountConfig, Settings

ACCOUNT = "17841400000000001"
TOKEN = "IGAAtest-token-secret-value-0001"
ACCOUNT2 = "17841400000000002"
TOKEN2 = "IGAAtest-token-secret-value-0002"


def _find_redis_url() -> str:
    url = os.environ.get("DMWORKER_TEST_REDIS_URL")
    if url:
        return url
    candidate = "redis://127.0.0.1:6379/15"
    try:
        if redis.Redis.from_url(candidate, socket_connect_timeout=0.5).ping():
            return candidate
    except redis.RedisError:
        pass
    from dmworker.redisconn import ensure_embedded

    data_dir = os.environ.get("DMWORKER_TEST_DATA_DIR") or tempfile.mkdtemp(prefix="dmw-test-")
    return "unix://" + str(ensure_embedded(data_dir))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return _find_redis_url()


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
        http_connect_timeout_s=1.0,
        http_read_timeout_s=2.0,
        lease_ms=4_000,
        dispatch_grace_ms=2_000,
        backoff_base_ms=50,
        backoff_cap_ms=500,
        scheduler_tick_ms=20,
    )


def pytest_configure(config: pytest.Config) -> None:
    # worker subprocesses started by tests import the package from this checkout
    os.environ.setdefault("PYTHONPATH", os.path.dirname(os.path.dirname(__file__)))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
