"""The lanes of one Celery message: the step call that ends a lane takes the next lane and its first
job, so a message of one-message lanes costs one ``step`` call per lane, not two; order, leases,
waits, retries of a lost reply and bad references behave as lane-by-lane visits do."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from conftest import ACCOUNT

import dmworker.runtime as runtime
from dmworker import scripts
from dmworker.celery_app import _refs, process_lanes
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import parse_rate
from dmworker.worker import LaneWorker


@pytest.fixture
def env(settings, rdb, sandbox):
    sandbox.set_enforce_windows(False)
    fast = {**settings.rates, "text": parse_rate("100000/s")}
    s = settings.with_overrides(window_policy="trust", rates=fast)
    store = LaneStore(s, rdb)
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None)
    w = LaneWorker(s, store)
    yield s, store, ob, w
    w.clients.close()


@pytest.fixture
def step_calls(monkeypatch) -> list[list[Any]]:
    """The ARGV of every ``step`` script call (after the clock)."""
    calls: list[list[Any]] = []
    real = scripts.run

    def counting(client: Any, name: str, keys: Any, args: Any, *a: Any, **kw: Any) -> Any:
        if name == "step":
            calls.append(list(args))
        return real(client, name, keys, args, *a, **kw)

    monkeypatch.setattr(scripts, "run", counting)
    return calls


def _texts(sandbox, recipient: str) -> list[str]:
    return [
        x["body"]["message"]["text"]
        for x in sandbox.sends()
        if x["recipient"] == recipient and "message" in x["body"]
    ]


def test_a_message_of_one_message_lanes_costs_one_step_call_per_lane(env, sandbox, step_calls):
    # Given eight lanes with one job each (a broadcast)
    _s, store, ob, w = env
    lanes = [str(7100 + i) for i in range(8)]
    ids = [ob.send_text(r, f"hi {r}").id for r in lanes]
    # When one worker thread visits them as one message
    runs = w.run_lanes(ACCOUNT, lanes)
    # Then each was sent once, and it took 9 step calls (an acquire, then one per lane), not 16
    assert [r.sent for r in runs] == [1] * 8 and [r.ended for r in runs] == ["empty"] * 8
    assert all(_texts(sandbox, r) == [f"hi {r}"] for r in lanes)
    assert all(ob.status(i).state == "sent" and ob.status(i).attempts == 1 for i in ids)
    assert len(step_calls) == 9
    # And every lane is released: no lease, not held, not admitted, not ready
    k = store.acct(ACCOUNT)
    assert not any(store.redis.exists(k.lease(r)) for r in lanes)
    for key in (k.held, k.admitted, *k.ready_sets):
        assert store.redis.zcard(key) == 0


def test_lanes_of_several_jobs_keep_their_order_and_the_next_lane_waits_its_turn(env, sandbox):
    # Given lanes of 3, 1 and 2 jobs
    _s, _store, ob, w = env
    plan = {"7201": 3, "7202": 1, "7203": 2}
    for r, n in plan.items():
        for i in range(n):
            ob.send_text(r, f"{r}#{i}")
    # When they are visited as one message
    runs = w.run_lanes(ACCOUNT, list(plan))
    # Then every lane's jobs went out in order, and the next lane started once the lane before ended
    assert [r.sent for r in runs] == [3, 1, 2]
    for r, n in plan.items():
        assert _texts(sandbox, r) == [f"{r}#{i}" for i in range(n)]
    order = [x["recipient"] for x in sandbox.sends()]
    assert order == ["7201"] * 3 + ["7202"] + ["7203"] * 2


def test_a_lane_that_must_wait_is_released_and_the_next_lane_is_taken_in_the_same_call(
    env, sandbox, step_calls
):
    # Given a lane whose typing pause holds its second job, then a lane with one job
    _s, store, ob, w = env
    ob.send_many(
        [
            {"kind": "typing", "recipient": "7301", "seconds": 20},
            {"kind": "text", "recipient": "7301", "text": "after the pause"},
        ]
    )
    ob.send_text("7302", "next")
    # When both are visited as one message
    first, second = w.run_lanes(ACCOUNT, ["7301", "7302"])
    # Then the first waits for its hold (released, the dispatchers told when), the second is sent
    assert first.ended == "wait" and first.why == "hold" and first.sent == 1
    assert second.sent == 1 and _texts(sandbox, "7302") == ["next"]
    assert _texts(sandbox, "7301") == []  # the typing indicator is no text; the text waits
    k = store.acct(ACCOUNT)
    assert not store.redis.exists(k.lease("7301"))
    assert store.redis.zscore(k.ready, "7301") == first.wait_until_ms
    assert store.redis.zscore(store.keys.due, ACCOUNT) <= first.wait_until_ms
    # And it took three calls: the acquire, the typing's outcome (its lane waits: 7302 taken), 7302's
    assert len(step_calls) == 3


def test_a_lane_another_worker_holds_is_skipped_without_touching_it(env, sandbox):
    # Given three lanes, the middle one leased by another worker that is sending its job
    _s, store, ob, w = env
    for r in ("7401", "7402", "7403"):
        ob.send_text(r, f"to {r}")
    other = store.step(ACCOUNT, "7402", "someone-else", acquire=True)
    assert other.action == "job"
    # When this worker visits the three as one message
    runs = w.run_lanes(ACCOUNT, ["7401", "7402", "7403"])
    # Then the held lane is left to its holder; the others are sent
    assert [r.ended for r in runs] == ["empty", "busy", "empty"]
    assert _texts(sandbox, "7402") == [] and _texts(sandbox, "7403") == ["to 7403"]
    assert store.redis.get(store.acct(ACCOUNT).lease("7402")).startswith("someone-else|")
    assert ob.status(other.job_id).state == "sending"


def test_a_lost_reply_of_the_chained_call_sends_nothing_twice(env, sandbox, monkeypatch):
    # Given two one-message lanes, and Redis dropping the reply of the first outcome's call
    _s, store, ob, w = env
    a, b = ob.send_text("7501", "a").id, ob.send_text("7502", "b").id
    real = store.step
    dropped: list[str] = []

    def flaky(*args: Any, **kw: Any) -> Any:
        got = real(*args, **kw)
        if kw.get("prev_id") and not dropped:
            dropped.append(kw["prev_id"])
            raise redis.ConnectionError("reply lost")  # the call ran; its reply never came
        return got

    monkeypatch.setattr(store, "step", flaky)
    monkeypatch.setattr(w, "_sleep", lambda s: None)
    # When the worker visits them as one message (the record is retried)
    w.run_lanes(ACCOUNT, ["7501", "7502"])
    # Then each was sent exactly once, in order, and both ended sent
    assert dropped == [a]
    assert [x["recipient"] for x in sandbox.sends()] == ["7501", "7502"]
    assert ob.status(a).state == "sent" and ob.status(b).state == "sent"
    # (the second lane's job was handed out again to the same holder: one more attempt counted)
    assert ob.status(b).attempts == 2


def test_a_lane_named_twice_in_a_message_is_visited_once(env, sandbox):
    _s, _store, ob, w = env
    ob.send_text("7601", "once")
    runs = w.run_lanes(ACCOUNT, ["7601", "7601"])
    assert len(runs) == 2 and runs[0] is runs[1] and runs[0].sent == 1
    assert _texts(sandbox, "7601") == ["once"]


@pytest.fixture
def rt(env, monkeypatch):
    s, _store, _ob, _w = env
    monkeypatch.setattr(runtime, "_runtime", None)
    got = runtime.set_runtime(s)
    yield got
    import dmworker.celery_app as ca

    if ca._worker is not None:
        ca._worker.clients.close()
    monkeypatch.setattr(ca, "_worker", None)


def test_the_task_reports_each_lane_in_the_order_of_its_refs_and_drops_a_bad_one(env, sandbox, rt):
    # Given a message of three lanes whose middle reference was altered
    _s, _store, ob, _w = env
    for r in ("7701", "7702", "7703"):
        ob.send_text(r, f"to {r}")
    refs = _refs(rt.settings, rt.redis)
    good = [refs.seal(ACCOUNT, r) for r in ("7701", "7702", "7703")]
    bad = good[1][:20] + ("A" if good[1][20] != "A" else "B") + good[1][21:]
    # When the task runs it
    out = process_lanes(ACCOUNT, [good[0], bad, good[2]])
    # Then the visits are reported in the message's order, the bad one dropped (its lane untouched)
    assert [o["ended"] for o in out] == ["empty", "bad_ref", "empty"]
    assert out[0]["sent"] == 1 and out[2]["sent"] == 1
    assert _texts(sandbox, "7701") == ["to 7701"] and _texts(sandbox, "7702") == []
    assert _texts(sandbox, "7703") == ["to 7703"]
