"""Lane references: Celery messages carry a sealed lane, never the recipient's IGSID.

The broker is read as it is (the Redis list of the Celery queue), the worker is a real process,
and a message in the older form (a plain lane name) still delivers.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from conftest import ACCOUNT, ACCOUNT2
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from dmworker.crypto import new_key
from dmworker.keys import Keys
from dmworker.laneref import REF_PREFIX, LaneRefError, LaneRefs, StoredKey, derive_key, is_ref, refs_for
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.schemas.send import COMMENT_ID_RE, IGSID_RE
from dmworker.testing import ProcessGroup, wait_until
from dmworker.worker import LaneWorker

IGSID = "1784140000009876"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def derived_refs(*secrets: str) -> LaneRefs:
    return LaneRefs([derive_key(s, "dmw") for s in secrets], None)


def stored_refs(rdb, prefix: str, clock=time.monotonic) -> tuple[LaneRefs, StoredKey]:
    stored = StoredKey(lambda: rdb, Keys(prefix).laneref, clock=clock)
    return LaneRefs([], stored), stored


# --- the format --------------------------------------------------------------------------------


def test_a_ref_opens_to_its_lane_is_short_deterministic_and_hides_the_lane():
    refs = derived_refs(new_key())
    ref = refs.seal(ACCOUNT, IGSID)
    assert is_ref(ref) and ref.startswith(REF_PREFIX)
    assert IGSID not in ref
    assert len(ref) <= 3 + 44  # r1. + base64 of 16 bytes of tag + 16 digits
    assert refs.seal(ACCOUNT, IGSID) == ref  # one lane, one ref (duplicates look alike)
    assert refs.seal(ACCOUNT, "1784140000009877") != ref
    assert refs.open(ACCOUNT, ref) == IGSID
    comment_lane = "c:17841400000000123_17841400000000456"
    assert refs.open(ACCOUNT, refs.seal(ACCOUNT, comment_lane)) == comment_lane


def test_a_ref_opens_only_for_its_own_account_and_deployment():
    refs = derived_refs(new_key())
    ref = refs.seal(ACCOUNT, IGSID)
    with pytest.raises(LaneRefError):
        refs.open(ACCOUNT2, ref)  # moved to another account's message
    with pytest.raises(LaneRefError):
        derived_refs(new_key()).open(ACCOUNT, ref)  # another deployment's key


@pytest.mark.parametrize(
    "tamper",
    [
        # one character changed (in the middle: the last base64 character may carry unused bits)
        lambda r: r[:20] + ("A" if r[20] != "A" else "B") + r[21:],
        lambda r: r[:-4],  # truncated
        lambda r: r + "AAAA",  # extended
        lambda r: REF_PREFIX + "!!not base64!!",
        lambda r: REF_PREFIX,
        lambda r: r[len(REF_PREFIX) :],  # not a ref at all
    ],
)
def test_an_altered_ref_does_not_open_and_the_error_does_not_quote_it(tamper):
    refs = derived_refs(new_key())
    bad = tamper(refs.seal(ACCOUNT, IGSID))
    with pytest.raises(LaneRefError) as e:
        refs.open(ACCOUNT, bad)
    assert bad not in str(e.value) and IGSID not in str(e.value)


@hsettings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.from_regex(IGSID_RE, fullmatch=True),
        st.from_regex(COMMENT_ID_RE, fullmatch=True).map("c:{}".format),
    )
)
def test_no_lane_name_looks_like_a_ref_and_every_one_round_trips(lane):
    refs = derived_refs("k" * 44)
    assert not is_ref(lane)  # an older message's plain lane name is never mistaken for a ref
    assert refs.open(ACCOUNT, refs.seal(ACCOUNT, lane)) == lane


def test_a_ref_sealed_under_an_older_secret_key_opens_after_rotation():
    old, new = new_key(), new_key()
    ref = derived_refs(old).seal(ACCOUNT, IGSID)
    assert derived_refs(new, old).open(ACCOUNT, ref) == IGSID
    assert derived_refs(new, old).seal(ACCOUNT, IGSID) == derived_refs(new).seal(ACCOUNT, IGSID)


# --- the key kept in Redis -----------------------------------------------------------------------


def test_processes_without_a_secret_key_share_one_random_key_created_once(rdb, key_prefix):
    a, _ = stored_refs(rdb, key_prefix)
    b, _ = stored_refs(rdb, key_prefix)
    ref = a.seal(ACCOUNT, IGSID)  # creates P:laneref (SET NX)
    stored = rdb.get(Keys(key_prefix).laneref)
    assert stored and b.open(ACCOUNT, ref) == IGSID  # the other process reads the same key
    assert b.seal(ACCOUNT, IGSID) == ref and rdb.get(Keys(key_prefix).laneref) == stored


def test_the_redis_key_is_read_once_not_on_every_seal(rdb, key_prefix):
    calls = []
    stored = StoredKey(lambda: calls.append(1) or rdb, Keys(key_prefix).laneref, clock=Clock())
    refs = LaneRefs([], stored)
    for i in range(100):
        refs.open(ACCOUNT, refs.seal(ACCOUNT, str(i)))
    assert len(calls) == 1


def test_a_key_replaced_in_redis_is_read_again_when_a_ref_does_not_open(rdb, key_prefix):
    clock = Clock()
    producer, _ = stored_refs(rdb, key_prefix, clock)
    worker, _ = stored_refs(rdb, key_prefix, clock)
    worker.seal(ACCOUNT, IGSID)  # the worker has read (and cached) the first key
    rdb.delete(Keys(key_prefix).laneref)
    clock.t += 5
    ref = producer.seal(ACCOUNT, IGSID)  # a new key is created
    assert worker.open(ACCOUNT, ref) == IGSID


def test_a_worker_with_a_secret_key_opens_refs_of_a_producer_without_one(rdb, key_prefix):
    producer, _ = stored_refs(rdb, key_prefix)
    worker = LaneRefs([derive_key(new_key(), key_prefix)], StoredKey(lambda: rdb, Keys(key_prefix).laneref))
    assert worker.open(ACCOUNT, producer.seal(ACCOUNT, IGSID)) == IGSID
    assert worker.open(ACCOUNT, worker.seal(ACCOUNT, IGSID)) == IGSID


def test_with_a_secret_key_sealing_never_touches_redis(key_prefix):
    def no_redis():
        raise AssertionError("Redis was asked for the key")

    refs = LaneRefs([derive_key(new_key(), key_prefix)], StoredKey(no_redis, Keys(key_prefix).laneref))
    assert refs.open(ACCOUNT, refs.seal(ACCOUNT, IGSID)) == IGSID


# --- what the broker holds -----------------------------------------------------------------------


def _queued(rdb, s) -> list[str]:
    return rdb.lrange(f"{s.key_prefix}:celery:{s.key_prefix}.lanes", 0, -1)


def _assert_no_igsid(raw: str, igsid: str) -> dict:
    """The message as Redis holds it and its decoded body carry no trace of ``igsid``."""
    message = json.loads(raw)
    body = base64.b64decode(message["body"]).decode()
    for text in (raw, body, json.dumps(message["headers"])):
        assert igsid not in text
    args = json.loads(body)[0]
    refs = args[1] if isinstance(args[1], list) else [args[1]]  # process_lanes carries several
    assert args[0] == ACCOUNT and refs and all(is_ref(r) for r in refs)
    return message


def test_a_published_lane_message_carries_a_ref_not_the_igsid(settings, rdb):
    # Given an Outbox publishing through the real Celery publish (Redis broker)
    s = settings.with_overrides(broker_url=None)
    ob = Outbox(settings=s, client=rdb)
    # When it queues jobs for two new lanes of one account (one batch: one message for both lanes)
    ob.send_many(
        [
            {"kind": "text", "recipient": IGSID, "text": "hi"},
            {"kind": "text", "recipient": "55501", "text": "x"},
        ]
    )
    # Then the message shows neither recipient anywhere: body, headers (argsrepr), properties
    raw = _queued(rdb, s)
    assert len(raw) == 1
    _assert_no_igsid(raw[0], IGSID)
    message = _assert_no_igsid(raw[0], "55501")
    assert message["headers"]["task"] == "dmworker.process_lanes"
    assert message["headers"]["argsrepr"].count(REF_PREFIX) == 2
    # And a single new lane is one message for one lane
    ob.send_text("55502", "y")
    single = [m for m in _queued(rdb, s) if m != raw[0]]
    assert (
        len(single) == 1
        and _assert_no_igsid(single[0], "55502")["headers"]["task"] == "dmworker.process_lane"
    )


def test_the_lane_task_result_names_no_recipient(settings, rdb, sandbox):
    # Given a lane with two jobs and a worker that yields after each send
    s = settings.with_overrides(lane_batch=1)
    sandbox.open_window(ACCOUNT, IGSID)
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None)
    ob.send_text(IGSID, "one")
    ob.send_text(IGSID, "two")
    w = LaneWorker(s, LaneStore(s, rdb))
    try:
        # When the lane is visited twice (a yield after one send, then the rest)
        first, second = w.run_lane(ACCOUNT, IGSID).summary(), w.run_lane(ACCOUNT, IGSID).summary()
    finally:
        w.clients.close()
    # Then what Flower would show says what happened, never to whom
    assert first["sent"] == 1 and second["sent"] == 1
    for summary in (first, second):
        assert IGSID not in json.dumps(summary)


# --- real processes ------------------------------------------------------------------------------


@pytest.fixture
def procs(settings):
    groups: list[ProcessGroup] = []

    def make(**env: str) -> ProcessGroup:
        # no dispatcher in the worker: only the lane message under test can start a lane
        g = ProcessGroup(settings.with_overrides(embedded_scheduler=False), extra_env=env)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop_all()


def _send_raw(settings, account: str, second_arg: str) -> None:
    """Publish a lane message exactly as given (an older producer, or a tampered message)."""
    from dmworker.celery_app import TASK, producer_app

    app = producer_app(settings)
    app.send_task(TASK, args=(account, second_arg), queue=Keys(settings.key_prefix).celery_queue)


def _sent_to(sandbox, igsid: str) -> list[dict]:
    return [x for x in sandbox.sends(ACCOUNT) if x["body"]["recipient"].get("id") == igsid]


@pytest.mark.slow
@pytest.mark.parametrize("worker_secret", [False, True], ids=["no-secret-key", "worker-has-secret-key"])
def test_a_worker_process_delivers_through_refs(settings, rdb, sandbox, procs, worker_secret):
    # Given a worker process without a dispatcher (with DMWORKER_SECRET_KEY or not), and a
    # producer without DMWORKER_SECRET_KEY that publishes lane refs
    g = procs(**({"DMWORKER_SECRET_KEY": new_key()} if worker_secret else {}))
    g.start_worker("w1", concurrency=2)
    sandbox.open_window(ACCOUNT, IGSID)
    ob = Outbox(settings=settings, client=rdb)
    # When a job is queued
    job = ob.send_text(IGSID, "through a ref")
    # Then the ref message alone gets it sent
    assert wait_until(lambda: ob.status(job.id).state == "sent", 20), g.log_tail("w1")
    assert [x["body"]["message"]["text"] for x in _sent_to(sandbox, IGSID)] == ["through a ref"]


@pytest.mark.slow
def test_old_form_messages_deliver_and_a_tampered_ref_is_dropped_without_a_crash(
    settings, rdb, sandbox, procs
):
    # Given a worker process without a dispatcher and jobs in two lanes, no message published yet
    g = procs()
    g.start_worker("w1", concurrency=2)
    sandbox.open_windows(ACCOUNT, [IGSID, "55502"])
    ob = Outbox(settings=settings, client=rdb, publish=lambda a, r: None)
    job = ob.send_text(IGSID, "after a tampered ref")
    old = ob.send_text("55502", "old form")
    ref = refs_for(settings, lambda: rdb).seal(ACCOUNT, IGSID)
    tampered = ref[:-2] + ("AA" if ref[-2:] != "AA" else "BB")
    # When a tampered ref and a ref moved to another account arrive
    _send_raw(settings, ACCOUNT, tampered)
    _send_raw(settings, ACCOUNT2, ref)
    log = g.dir / "w1.log"
    assert wait_until(
        lambda: log.read_text(errors="replace").count("lane reference does not open") >= 2, 20
    ), g.log_tail("w1")
    # Then both are dropped: logged without their text, nothing sent, the worker still running
    text = log.read_text(errors="replace")
    assert tampered not in text and ref not in text and IGSID not in text
    assert "Traceback" not in text
    assert g.procs["w1"].poll() is None
    assert ob.status(job.id).state == "queued" and _sent_to(sandbox, IGSID) == []
    # When a message in the older form (a plain IGSID) arrives, then the good ref
    _send_raw(settings, ACCOUNT, "55502")
    _send_raw(settings, ACCOUNT, ref)
    # Then both lanes deliver
    assert wait_until(lambda: ob.status(old.id).state == "sent", 20), g.log_tail("w1")
    assert wait_until(lambda: ob.status(job.id).state == "sent", 20), g.log_tail("w1")
    assert len(_sent_to(sandbox, IGSID)) == 1 and len(_sent_to(sandbox, "55502")) == 1


@pytest.mark.slow
def test_the_dispatcher_publishes_refs_too(settings, rdb, sandbox, procs):
    # Given a follow-up due in 0.3 s, and a scheduler process (it publishes with celery_app.publish)
    s = settings.with_overrides(broker_url=None)
    ob = Outbox(settings=s, client=rdb)
    sandbox.open_window(ACCOUNT, IGSID)
    job = ob.send_text(IGSID, "later", delay=0.3)
    assert _queued(rdb, s) == []
    g = procs()
    g.start_scheduler("sched")
    # When it promotes the follow-up and publishes its lane (no worker reads the queue yet)
    assert wait_until(lambda: len(_queued(rdb, s)) >= 1, 20), g.log_tail("sched")
    # Then the message carries a ref, and a worker delivers through it
    for raw in _queued(rdb, s):
        _assert_no_igsid(raw, IGSID)
    g.start_worker("w1", concurrency=2)
    assert wait_until(lambda: ob.status(job.id).state == "sent", 20), g.log_tail("w1")
