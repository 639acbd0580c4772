"""The demo a newcomer runs first, the messaging-window policy at enqueue, thread pacing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dmworker.errors import WindowClosedError
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.redisconn import stop_embedded

HOUR_MS = 3_600_000


@pytest.mark.slow
def test_demo_exits_0_in_under_a_minute_on_the_embedded_redis(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env["DMWORKER_DATA_DIR"] = str(tmp_path / "data")  # no DMWORKER_REDIS_URL: embedded Redis
    try:
        out = subprocess.run(
            [sys.executable, "-m", "dmworker.cli", "demo", "--users", "200"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop_embedded(str(tmp_path / "data"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "using the embedded Redis" in out.stderr
    assert "Timelines" in out.stdout and "p99" in out.stdout and "delivered" in out.stdout


@pytest.fixture
def enforcing(settings, rdb):
    s = settings.with_overrides(window_policy="enforce")
    return s, Outbox(settings=s, client=rdb, publish=lambda a, r: None), LaneStore(s, rdb)


def test_window_refuses_at_enqueue_with_the_closing_time(enforcing):
    s, ob, store = enforcing
    acct = s.default_account
    with pytest.raises(WindowClosedError):  # the user never wrote
        ob.send_text("7001", "hi")
    now = store._redis_now_ms()
    store.inbound(acct, "7001", "m-7001", now - 23 * HOUR_MS, opens_window=True, cancels=True)
    w = ob.window("7001")
    assert w.open and w.closes_at_ms == now - 23 * HOUR_MS + 24 * HOUR_MS and w.human_agent_open
    ob.send_text("7001", "within the hour", delay=1800)  # due before the window closes
    with pytest.raises(WindowClosedError) as e:  # due after it closes: refused
        ob.send_text("7001", "too late", delay=2 * 3600)
    assert e.value.closes_at_ms == w.closes_at_ms and "closes at" in str(e.value)
    ob.send_text("7001", "a human, later", delay=2 * 3600, human_agent=True)  # 7 days with HUMAN_AGENT
    with pytest.raises(ValueError, match="naive"):
        from datetime import datetime

        ob.send_text("7001", "x", at=datetime(2030, 1, 1))


def test_thread_pacing_spaces_sends_to_one_user(settings, rdb):
    s = settings.with_overrides(thread_min_interval_ms=500)
    t0 = 1_900_000_000_000  # an injected clock, for the producer too (jobs expire a day after they are due)
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None, clock=lambda: t0)
    store = LaneStore(s, rdb)
    a, b = ob.send_text("7101", "one"), ob.send_text("7101", "two")
    st = store.step(s.default_account, "7101", "w", acquire=True, now_ms=t0)
    assert st.job_id == a.id
    st = store.step(
        s.default_account,
        "7101",
        "w",
        acquire=False,
        prev_id=a.id,
        outcome={"o": "sent", "mid": "m"},
        now_ms=t0 + 10,
    )
    assert st.action == "wait" and st.why == "thread" and st.until_ms == t0 + 500
    assert store.step(s.default_account, "7101", "w", acquire=True, now_ms=t0 + 500).job_id == b.id


def test_a_batch_with_one_closed_window_queues_nothing(enforcing):
    s, ob, store = enforcing
    now = store._redis_now_ms()
    store.inbound(s.default_account, "7201", "m-7201", now - HOUR_MS, opens_window=True, cancels=False)
    from dmworker.errors import ValidationError

    with pytest.raises(ValidationError) as e:
        ob.send_many(
            [
                {"kind": "text", "recipient": "7201", "text": "open"},
                {"kind": "text", "recipient": "7202", "text": "never wrote"},
            ]
        )
    assert list(e.value.messages) == ["1.window"]
    assert store.redis.exists(store.acct(s.default_account).lane("7201")) == 0
    ob.send_many([{"kind": "text", "recipient": "7201", "text": "open"}])
    assert store.redis.llen(store.acct(s.default_account).lane("7201")) == 1
