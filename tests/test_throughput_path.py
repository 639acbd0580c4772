"""The lanes of one Celery message: the step call that ends a lane takes the next lane and its first
job, so a message of one-message lanes costs one ``step`` call per lane, not two; order, leases,
waits, retries of a lost reply and bad references behave as lane-by-lane visits do."""

from __future__ import annotations

import json
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


# --- a visit goes on with the account's lanes waiting for admission ------------------------------


@pytest.fixture
def budget16(env, rdb):
    """The account's admission budget is 16 lanes; 40 one-message lanes queued: 16 admitted (two
    messages' worth, published), 24 waiting for the budget."""
    s, _store, _ob, _w = env
    s = s.with_overrides(max_in_flight=16)
    assert s.admit_budget(ACCOUNT) == 16
    store = LaneStore(s, rdb)
    published: list[str] = []
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: published.append(r))
    lanes = [str(8000 + i) for i in range(40)]
    ob.send_many([{"kind": "text", "recipient": r, "text": f"to {r}"} for r in lanes])
    assert published == lanes[:16]
    w2 = LaneWorker(s, store)
    yield s, store, ob, w2, lanes
    w2.clients.close()


def _watch_budget(monkeypatch, store: LaneStore, budget: int) -> list[tuple[str, ...]]:
    """Check after every step call that the account never has more than ``budget`` lanes in play;
    returns the groups claimed."""
    real = store.step
    k = store.acct(ACCOUNT)
    claimed: list[tuple[str, ...]] = []

    def watched(*args: Any, **kw: Any) -> Any:
        got = real(*args, **kw)
        assert store.redis.zcard(k.admitted) + store.redis.zcard(k.held) <= budget
        if got.claimed:
            claimed.append(got.claimed)
        return got

    monkeypatch.setattr(store, "step", watched)
    return claimed


def test_a_visit_goes_on_with_the_lanes_waiting_for_admission_within_the_budget(
    budget16, sandbox, monkeypatch, step_calls
):
    _s, store, _ob, w, lanes = budget16
    claimed = _watch_budget(monkeypatch, store, 16)
    # When a thread visits the first message's 8 lanes while no other message waits for a thread
    runs = w.run_lanes(ACCOUNT, lanes[:8], go_on=lambda: True)
    # Then it went on with the 24 lanes waiting for admission (in groups of 8, as they were due),
    # not with the second message's lanes (admitted: that message will visit them)
    assert claimed == [tuple(lanes[16:24]), tuple(lanes[24:32]), tuple(lanes[32:40])]
    assert len(runs) == 32 and all(r.sent == 1 for r in runs)
    assert [x["recipient"] for x in sandbox.sends()] == lanes[:8] + lanes[16:]
    # one call per lane, plus an acquire per group
    assert len(step_calls) == 32 + 4
    # And the second message's lanes are still admitted, waiting for it
    assert set(store.redis.zrange(store.acct(ACCOUNT).admitted, 0, -1)) == set(lanes[8:16])
    w.run_lanes(ACCOUNT, lanes[8:16], go_on=lambda: True)
    assert sorted(x["recipient"] for x in sandbox.sends()) == sorted(lanes)
    assert store.redis.zcard(store.acct(ACCOUNT).admitted) == 0


def test_a_visit_does_not_go_on_while_another_message_waits_for_a_thread(budget16, sandbox):
    _s, _store, _ob, w, lanes = budget16
    runs = w.run_lanes(ACCOUNT, lanes[:8], go_on=lambda: False)
    assert len(runs) == 8
    assert [x["recipient"] for x in sandbox.sends()] == lanes[:8]
    # without go_on (a direct visit) neither
    assert len(w.run_lanes(ACCOUNT, lanes[8:16])) == 8


def test_a_visit_goes_on_no_further_than_a_lane_batch_of_sends(budget16, sandbox):
    s, store, _ob, _w, lanes = budget16
    w = LaneWorker(s.with_overrides(lane_batch=20), store)
    try:
        runs = w.run_lanes(ACCOUNT, lanes[:8], go_on=lambda: True)
    finally:
        w.clients.close()
    # 8 + one group of 8 = 16 sends; another group would pass 20
    assert len(runs) == 16 and len(sandbox.sends()) == 16


def test_a_high_priority_lane_waiting_for_admission_is_claimed_first(budget16, sandbox):
    _s, _store, ob, w, lanes = budget16
    ob.send_text("8999", "urgent", priority="high")  # waits for the budget too
    runs = w.run_lanes(ACCOUNT, lanes[:8], go_on=lambda: True)
    order = [x["recipient"] for x in sandbox.sends()]
    assert order[:9] == [*lanes[:8], "8999"]
    assert len(runs) == 8 + 25


def test_lanes_claimed_when_the_slice_is_over_are_published_for_other_threads(budget16, sandbox, monkeypatch):
    _s, store, _ob, w, lanes = budget16
    import dmworker.worker as worker_mod

    real = store.step

    def ends_the_slice(*args: Any, **kw: Any) -> Any:
        got = real(*args, **kw)
        if got.claimed:
            monkeypatch.setattr(worker_mod, "LANE_SLICE_S", -1.0)  # the visit's time is up
        return got

    monkeypatch.setattr(store, "step", ends_the_slice)
    groups: list[list[str]] = []
    runs = w.run_lanes(
        ACCOUNT, lanes[:8], go_on=lambda: True, publish_group=lambda a, g: groups.append(list(g))
    )
    # Then the lanes claimed at the end of the message were handed to other threads, unvisited
    assert len(runs) == 8 and groups == [lanes[16:24]]
    assert [x["recipient"] for x in sandbox.sends()] == lanes[:8]
    assert set(lanes[16:24]) <= set(store.redis.zrange(store.acct(ACCOUNT).admitted, 0, -1))


class _Pool:
    """A threads pool as celery_app sees it: ``waiting`` messages not yet started."""

    def __init__(self, waiting: int) -> None:
        import queue

        self.executor = type("E", (), {"_work_queue": queue.SimpleQueue()})()
        for _ in range(waiting):
            self.executor._work_queue.put(object())


@pytest.mark.parametrize("waiting", [0, 1])
def test_the_task_goes_on_only_while_no_message_waits_for_a_thread(budget16, rt, monkeypatch, waiting):
    import dmworker.celery_app as ca

    s, _store, _ob, _w, lanes = budget16
    monkeypatch.setattr(ca, "_pool", _Pool(waiting))
    rt = runtime.set_runtime(s)
    refs = _refs(rt.settings, rt.redis)
    out = process_lanes(ACCOUNT, [refs.seal(ACCOUNT, r) for r in lanes[:8]])
    if waiting:
        assert len(out) == 8
    else:
        assert len(out) == 9 and out[8] == {"continued_lanes": 24, "sent": 24}
        assert not any(lane in json.dumps(out) for lane in lanes)


def test_no_pool_or_another_pool_never_goes_on(monkeypatch):
    import dmworker.celery_app as ca

    monkeypatch.setattr(ca, "_pool", None)
    assert ca._threads_free() is False
    monkeypatch.setattr(ca, "_pool", object())
    assert ca._threads_free() is False
    monkeypatch.setattr(ca, "_pool", _Pool(0))
    assert ca._threads_free() is True


def test_a_dispatcher_looks_less_often_at_an_account_whose_lanes_keep_waiting_for_the_budget(
    budget16, sandbox
):
    from dmworker.dispatcher import IDLE_POLLS_MAX, Dispatcher

    s, store, _ob, w, lanes = budget16
    published: list[str] = []
    d = Dispatcher(store, lambda a, r: published.append(r))
    poll = s.admit_poll_ms
    due = store.keys.due

    def next_look(now: int) -> int:
        store.redis.zadd(due, {ACCOUNT: now})  # the account is due now: a pass visits it
        d.tick(now_ms=now)
        return int(store.redis.zscore(due, ACCOUNT)) - now

    # When passes find the account's 24 lanes still waiting for its (full) budget, each looks later
    sec, usec = store.redis.time()
    t = int(sec) * 1000 + int(usec) // 1000 + 1
    looks = [next_look(t + i) for i in range(5)]
    assert published == []
    assert looks == [poll, 2 * poll, *[IDLE_POLLS_MAX * poll] * 3]
    # And once a pass admits lanes (a message's worth of the budget is free), it looks again soon
    w.run_lanes(ACCOUNT, lanes[:8])
    assert next_look(t + 6) <= poll and published == lanes[16:24]


def test_a_visit_claims_lanes_only_once_its_own_are_done(budget16, sandbox, monkeypatch):
    # Given a thread visiting the first message's 8 lanes, and, while it is at its third lane,
    # another thread visiting the second message (8 slots of the budget come free)
    _s, store, _ob, w, lanes = budget16
    other = LaneWorker(w.settings, LaneStore(w.settings, store.redis))
    real = store.step
    seen: list[tuple[int, tuple[str, ...]]] = []
    ran: list[bool] = []

    def watched(*args: Any, **kw: Any) -> Any:
        got = real(*args, **kw)
        done = sum(1 for x in sandbox.sends() if x["recipient"] in lanes[:8])
        if done == 3 and not ran:
            ran.append(True)
            other.run_lanes(ACCOUNT, lanes[8:16])
        if got.claimed:
            seen.append((done, got.claimed))
        return got

    monkeypatch.setattr(store, "step", watched)
    try:
        runs = w.run_lanes(ACCOUNT, lanes[:8], go_on=lambda: True)
    finally:
        other.clients.close()
    # Then it claimed a group only when its eighth lane ended (claimed earlier, a group would wait
    # behind its own lanes instead of going to a thread free for it at the same time)
    assert seen and seen[0] == (8, tuple(lanes[16:24]))
    assert len(runs) == 8 + 24


def test_a_visit_claims_what_the_budget_has_room_for_not_only_a_whole_group(budget16, sandbox, monkeypatch):
    # Given a message of 5 of the 16 admitted lanes: once they are done, the 11 others still
    # admitted leave room for 5 more lanes in the budget
    _s, store, _ob, w, lanes = budget16
    claimed = _watch_budget(monkeypatch, store, 16)
    # When a thread visits it
    w.run_lanes(ACCOUNT, lanes[:5], go_on=lambda: True)
    # Then it went on with the 5 lanes the budget had room for (a dispatcher waits for a group of 8:
    # a message costs the same for 1 lane as for 8; a thread going on pays no message)
    assert claimed[0] == tuple(lanes[16:21])
