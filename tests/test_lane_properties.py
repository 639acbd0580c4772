"""Property tests on a real Redis with an injected clock: the limiter bound, and the lane
invariants (order, single holder) under any interleaving of enqueue/take/succeed/fail/crash/time."""

from __future__ import annotations

import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import AccountConfig, Settings, parse_rate

A = "17841400000000001"
T0 = 1_800_000_000_000


def _settings(redis_url: str, prefix: str, text_rate: str = "1000000/s", burst: int = 1) -> Settings:
    return Settings.from_env({}).with_overrides(
        redis_url=redis_url,
        key_prefix=prefix,
        default_account=A,
        accounts={A: AccountConfig(A, "t")},
        lease_ms=1000,
        rate_burst=burst,
        rates={
            "text": parse_rate(text_rate),
            "media": parse_rate("10/s"),
            "private_reply": parse_rate("750/h"),
            "conversations": parse_rate("2/s"),
        },
    )


def _cleanup(r: redis.Redis, prefix: str) -> None:
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rate=st.sampled_from(["5/s", "50/s", "300/s", "20/m"]),
    burst=st.integers(1, 6),
    gaps=st.lists(st.integers(0, 40), min_size=1, max_size=250),
)
def test_limiter_bound_holds_for_any_request_sequence(redis_url: str, rate: str, burst: int, gaps: list[int]):
    # Given a limiter and any sequence of request times (ms, injected)
    prefix = f"dmwp{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    s = _settings(redis_url, prefix, text_rate=rate, burst=burst)
    store = LaneStore(s, r)
    try:
        t, allowed = T0, []
        for g in gaps:
            t += g
            ok, wait_us = store.limit(A, "text", now_ms=t)
            assert ok or wait_us > 0
            if ok:
                allowed.append(t)
        # Then in every window of length W there are at most rate x W + burst allowed requests
        rr = parse_rate(rate)
        for w_ms in (1, 100, 1000, 60_000):
            bound = rr.count * w_ms / (rr.period_s * 1000) + burst
            j = 0
            for i in range(len(allowed)):
                while allowed[i] - allowed[j] >= w_ms:
                    j += 1
                assert i - j + 1 <= bound + 1e-9, (w_ms, i - j + 1, bound)
    finally:
        _cleanup(r, prefix)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(burst=st.integers(1, 4), gaps=st.lists(st.integers(0, 30), min_size=1, max_size=120))
def test_lane_step_respects_the_same_bound(redis_url: str, burst: int, gaps: list[int]):
    # Given 40 lanes of one account limited to 50/s, stepped at arbitrary times
    prefix = f"dmwp{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    s = _settings(redis_url, prefix, text_rate="50/s", burst=burst)
    store = LaneStore(s, r)
    ob = Outbox(settings=s, client=r, publish=lambda a, rr: None)
    try:
        for i in range(40):
            ob.send_text(str(1000 + i), "x")
        t, sends = T0, []
        for n, g in enumerate(gaps):
            t += g
            step = store.step(A, str(1000 + n % 40), f"w{n}", acquire=True, now_ms=t)
            if step.action == "job":
                sends.append(t)
                store.step(
                    A,
                    str(1000 + n % 40),
                    f"w{n}",
                    acquire=False,
                    prev_id=step.job_id,
                    outcome={"o": "sent", "mid": "m"},
                    now_ms=t,
                )
        # Then no 1-second window holds more than 50 + burst sends
        j = 0
        for i in range(len(sends)):
            while sends[i] - sends[j] >= 1000:
                j += 1
            assert i - j + 1 <= 50 + burst
    finally:
        _cleanup(r, prefix)


class LaneMachine(RuleBasedStateMachine):
    """Workers take, finish, fail and crash on two lanes while the clock moves."""

    redis_url = ""

    @initialize()
    def setup(self) -> None:
        self.prefix = f"dmws{uuid.uuid4().hex[:8]}"
        self.r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.s = _settings(self.redis_url, self.prefix)
        self.store = LaneStore(self.s, self.r)
        self.ob = Outbox(settings=self.s, client=self.r, publish=lambda a, rr: None)
        self.now = T0
        self.order: dict[str, list[str]] = {"1": [], "2": []}  # accepted order per lane
        self.done: set[str] = set()  # finished (sent or failed)
        self.sent: dict[str, list[str]] = {"1": [], "2": []}
        self.holding: dict[str, tuple[str, str, int]] = {}  # holder -> (lane, job, lease end)
        self.gen: dict[str, int] = {"w1": 0, "w2": 0, "w3": 0}  # a restarted worker is a new holder
        self.dead: list[tuple[str, int]] = []  # (lane, lease end) of crashed holders

    def holder(self, worker: str) -> str:
        return f"{worker}#{self.gen[worker]}"

    def teardown(self) -> None:
        _cleanup(self.r, self.prefix)

    def _check_take(self, worker: str, lane: str, job_id: str) -> None:
        # order: the job handed out is the earliest unfinished one of its lane
        pending = [j for j in self.order[lane] if j not in self.done]
        assert pending and job_id == pending[0], (job_id, pending)
        # single holder: nobody else holds this lane with a live lease
        for w, (ln, _, end) in self.holding.items():
            if w != worker and ln == lane:
                assert end <= self.now, f"{w} still holds lane {lane}"
        for ln, end in self.dead:
            if ln == lane:
                assert end <= self.now, f"a crashed holder's lease on lane {lane} is still live"
        self.dead = [d for d in self.dead if d[0] != lane]
        self.holding = {w: h for w, h in self.holding.items() if h[0] != lane}
        self.holding[worker] = (lane, job_id, self.now + self.s.lease_ms)

    @rule(lane=st.sampled_from(["1", "2"]), n=st.integers(1, 3))
    def enqueue(self, lane: str, n: int) -> None:
        for _ in range(n):
            self.order[lane].append(self.ob.send_text(lane, "x").id)

    @rule(worker=st.sampled_from(["w1", "w2", "w3"]), lane=st.sampled_from(["1", "2"]))
    def take(self, worker: str, lane: str) -> None:
        worker = self.holder(worker)
        if worker in self.holding:
            return
        step = self.store.step(A, lane, worker, acquire=True, now_ms=self.now)
        if step.action == "job":
            assert step.job_id is not None
            self._check_take(worker, lane, step.job_id)

    @precondition(lambda self: bool(self.holding))
    @rule(data=st.data(), outcome=st.sampled_from(["sent", "retry", "failed"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        worker = data.draw(st.sampled_from(sorted(self.holding)))
        lane, job_id, _ = self.holding.pop(worker)
        o = {
            "sent": {"o": "sent", "mid": "m"},
            "retry": {"o": "retry", "delay_ms": 50, "err": {"kind": "temporary", "message": "x"}},
            "failed": {"o": "failed", "dead": True, "err": {"kind": "invalid", "message": "x"}},
        }[outcome]
        status_before = self.ob.status(job_id)
        step = self.store.step(A, lane, worker, acquire=False, prev_id=job_id, outcome=o, now_ms=self.now)
        applied = status_before.state == "sending" and self.ob.status(job_id).state != "sending"
        if applied and outcome != "retry":
            self.done.add(job_id)
            if outcome == "sent":
                self.sent[lane].append(job_id)
        if step.action == "job":
            assert step.job_id is not None
            self._check_take(worker, lane, step.job_id)

    @precondition(lambda self: bool(self.holding))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        worker = data.draw(st.sampled_from(sorted(self.holding)))
        lane, _job_id, end = self.holding.pop(worker)
        self.dead.append((lane, end))  # its lease still counts until it expires
        name = worker.split("#")[0]
        self.gen[name] += 1

    @rule(ms=st.sampled_from([1, 60, 500, 1001]))
    def advance(self, ms: int) -> None:
        self.now += ms

    @invariant()
    def sent_in_accepted_order(self) -> None:
        for lane, sent in self.sent.items():
            idx = [self.order[lane].index(j) for j in sent]
            assert idx == sorted(idx), (lane, idx)


@pytest.fixture
def lane_machine(redis_url: str) -> type[LaneMachine]:
    LaneMachine.redis_url = redis_url
    return LaneMachine


def test_lane_state_machine(lane_machine: type[LaneMachine]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        lane_machine,
        settings=settings(
            max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )
