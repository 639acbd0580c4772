"""Many accounts on one cluster, at the scripts' level with an injected clock: admission per account
(messages outstanding plus lanes held within a budget), priorities between lanes, the in-flight cap,
timeouts pausing one account, and dispatch costs that follow what is due."""

from __future__ import annotations

import pytest

from dmworker.dispatcher import Dispatcher
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import AccountConfig, Settings, parse_rate

A, B = "17841400000000001", "17841400000000002"
T0 = 1_800_000_000_000


@pytest.fixture
def fsettings(redis_url: str, key_prefix: str) -> Settings:
    ten = {"text": parse_rate("10/s")}
    return Settings.from_env({}).with_overrides(
        redis_url=redis_url,
        key_prefix=key_prefix,
        default_account=A,
        accounts={A: AccountConfig(A, "tok-a", rates=ten), B: AccountConfig(B, "tok-b", rates=ten)},
        window_policy="trust",
        rates={**Settings().rates, "text": parse_rate("10/s"), "media": parse_rate("10/s")},
    )


@pytest.fixture
def env(fsettings, rdb):
    published: list[tuple[str, str]] = []
    clock = {"now": T0}
    ob = Outbox(
        settings=fsettings,
        client=rdb,
        publish=lambda a, r: published.append((a, r)),
        clock=lambda: clock["now"],
    )
    return LaneStore(fsettings, rdb), ob, published, clock


def _finish(store: LaneStore, account: str, lane: str, now: int) -> None:
    """A worker takes the lane's message, sends its one job, and the lane empties."""
    step = store.step(account, lane, f"w{lane}", acquire=True, now_ms=now)
    assert step.action == "job", step
    done = store.step(
        account,
        lane,
        f"w{lane}",
        acquire=False,
        prev_id=step.job_id,
        outcome={"o": "sent", "mid": "m"},
        now_ms=now,
    )
    assert done.action == "empty", done


def test_a_backlog_puts_at_most_its_budget_of_messages_ahead_of_another_account(env, fsettings):
    store, ob, published, _clock = env
    assert fsettings.admit_budget(A) == 10  # what A can send in a second at 10/s
    # Given account A broadcasts to 50 recipients
    ob.send_many([{"kind": "text", "recipient": f"{7000 + i}", "text": "sale"} for i in range(50)])
    # Then only its budget of lanes is published; the rest wait, due, for a dispatcher
    assert len([p for p in published if p[0] == A]) == 10
    k = store.acct(A)
    assert store.redis.zcount(k.ready, "-inf", T0) == 40
    # And B's message is published at once: A's backlog is not ahead of it
    ob.send_text("8000", "hi", account=B)
    assert published[-1] == (B, "8000")
    # When a dispatcher runs while A's ten messages are still outstanding, it admits nothing more
    d = store.dispatch(A, now_ms=T0 + 5)
    assert d.lanes == [] and d.next_ms == T0 + 5 + fsettings.admit_poll_ms
    # When workers take and finish seven of them, the dispatcher still waits (it admits a backlog
    # in groups of eight: one Celery message) ...
    mine = [r for a, r in published if a == A]
    for i, lane in enumerate(mine[:7]):
        _finish(store, A, lane, T0 + 150 * (i + 1))  # within A's 10/s
    assert store.dispatch(A, now_ms=T0 + 1100).lanes == []
    # ... and admits eight when the eighth is done
    _finish(store, A, mine[7], T0 + 1200)
    assert len(store.dispatch(A, now_ms=T0 + 1250).lanes) == 8


def test_high_priority_lanes_are_admitted_before_normal_and_low(env):
    store, ob, published, _clock = env
    ob.send_many(
        [{"kind": "text", "recipient": f"{7100 + i}", "text": "sale"} for i in range(30)], priority="low"
    )
    normal = ob.send_text("7200", "hello")
    high = ob.send_text("7300", "your order", priority="high")
    assert (A, "7300") not in published  # the budget is taken by the broadcast
    mine = [r for a, r in published if a == A]
    _finish(store, A, mine[0], T0 + 1)
    _finish(store, A, mine[1], T0 + 1)
    # two places free up: the high lane first, then the normal one, before any low lane
    assert store.dispatch(A, now_ms=T0 + 2).lanes == ["7300", "7200"]
    assert ob.status(high.id).raw["priority"] == "h" and "priority" not in ob.status(normal.id).raw


def test_a_lane_takes_the_priority_of_its_most_urgent_waiting_job(env):
    store, ob, _published, _clock = env
    k = store.acct(A)
    ob.send_many(
        [{"kind": "text", "recipient": f"{7400 + i}", "text": "x"} for i in range(12)], priority="low"
    )
    assert store.redis.zscore(k.readyl, "7411") is not None  # waiting, low
    ob.send_text("7411", "answer", priority="high")  # the same recipient now has an urgent job
    assert store.redis.zscore(k.readyl, "7411") is None and store.redis.zscore(k.readyh, "7411") is not None


def test_lanes_held_by_workers_count_against_the_budget(env, fsettings):
    store, _ob, published, _clock = env
    s = fsettings.with_overrides(max_in_flight=4)
    store, ob = (
        LaneStore(s, store.redis),
        Outbox(
            settings=s, client=store.redis, publish=lambda a, r: published.append((a, r)), clock=lambda: T0
        ),
    )
    assert s.admit_budget(A) == 4
    ob.send_many([{"kind": "text", "recipient": f"{7500 + i}", "text": "x"} for i in range(4)])
    for i in range(4):  # four workers take them and hang in their sends
        assert store.step(A, f"{7500 + i}", f"w{i}", acquire=True, now_ms=T0 + 1).action == "job"
    ob.send_text("7600", "more")
    assert (A, "7600") not in published and store.dispatch(A, now_ms=T0 + 2).lanes == []
    # after the holders' leases run out (presumed dead) the lane is admitted
    later = T0 + 1 + s.lease_ms + 1
    assert "7600" in store.dispatch(A, now_ms=later).lanes


def test_repeated_timeouts_pause_that_account_only(env):
    store, ob, _published, _clock = env
    jobs = [ob.send_text(f"{7700 + i}", "x") for i in range(5)]
    ob.send_text("7800", "fine", account=B)
    timeout = {
        "o": "retry",
        "delay_ms": 10,
        "timeout": True,
        "err": {"kind": "outcome_unknown", "message": "ReadTimeout: read timed out"},
    }
    for i, j in enumerate(jobs):
        lane = f"{7700 + i}"
        assert store.step(A, lane, "w", acquire=True, now_ms=T0 + 200 * i).job_id == j.id
        store.step(A, lane, "w", acquire=False, prev_id=j.id, outcome=timeout, now_ms=T0 + 200 * i + 100)
    pause = store.redis.hgetall(store.acct(A).pause)
    assert pause["reason"] == "timeouts" and int(pause["until"]) == T0 + 900 + 30_000
    assert store.step(B, "7800", "w", acquire=True, now_ms=T0 + 1000).action == "job"  # B goes on


def test_a_dispatcher_pass_visits_only_the_accounts_with_something_due(env, fsettings, rdb):
    store, _ob, _published, _clock = env
    # 2,000 accounts that once had a job, now all idle
    rdb.sadd(store.keys.accounts, *[f"1784155{i:010d}" for i in range(2000)])
    d = Dispatcher(store, lambda a, r: None)
    for _ in range(10):  # the first passes backfill P:due once (an upgrade) and visit each once
        d.tick(now_ms=T0)
    before = sum(int(v["calls"]) for v in rdb.info("commandstats").values())
    res = d.tick(now_ms=T0 + 2)
    after = sum(int(v["calls"]) for v in rdb.info("commandstats").values())
    assert res.published == 0 and after - before <= 6, after - before  # a claim and a ZRANGE, not 2,000


def test_a_full_backlog_refuses_an_enqueue_with_429_and_the_other_account_still_enqueues(env, fsettings, rdb):
    from test_http_api import TOKENS, make_api

    from dmworker.errors import BacklogFullError

    s = fsettings.with_overrides(max_backlog_s=2.0)  # 10/s for 2 s: 20 due jobs at most
    store = LaneStore(s, rdb)
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None, clock=lambda: T0)
    assert s.backlog_limit(A) == 20
    ob.send_many([{"kind": "text", "recipient": f"{7900 + i}", "text": "x"} for i in range(20)])
    with pytest.raises(BacklogFullError) as e:
        ob.send_text("7999", "one more")
    assert e.value.retry_after_s == pytest.approx(0.1) and e.value.account == A
    with pytest.raises(BacklogFullError):  # a batch: all or nothing
        ob.send_many(
            [
                {"kind": "text", "recipient": "7998", "text": "x"},
                {"kind": "text", "recipient": "7997", "text": "y"},
            ]
        )
    assert rdb.hget(store.acct(A).stats, "due_jobs") == "20"
    ob.send_text("8999", "hi", account=B)  # another account is not affected
    ob.send_text("7999", "later", delay=3600)  # a follow-up counts when it comes due
    api = make_api(s.with_overrides(api_tokens=TOKENS), rdb, [])
    resp = api.post("/v1/messages", {"kind": "text", "recipient": "7996", "text": "z"})
    assert (
        resp.status_code == 429
        and resp.headers["Retry-After"] == "1"
        and resp.json["error"] == "backlog_full"
    )
    # when a job is sent, there is room for one more
    _finish(store, A, "7900", T0 + 1)
    ob.send_text("7995", "now it fits")
    assert rdb.hget(store.acct(A).stats, "due_jobs") == "20"


def test_an_account_can_have_its_own_backlog_bound(tmp_path):
    path = tmp_path / "accounts.json"
    path.write_text(
        '{"17841400000000009": {"access_token": "IGAAx", "rates": {"text": "50/s"}, "max_backlog_s": 60}}'
    )
    s = Settings.from_env({"DMWORKER_ACCOUNTS_FILE": str(path), "DMWORKER_MAX_BACKLOG_S": "3600"})
    assert s.backlog_limit("17841400000000009") == 50 * 60  # its own bound
    assert s.backlog_limit("17841400000000008") == 100 * 3600  # the global one, at the default 100/s
    path.write_text('{"17841400000000009": {"access_token": "IGAAx", "max_backlog_s": "soon"}}')
    with pytest.raises(ValueError, match="max_backlog_s"):
        Settings.from_env({"DMWORKER_ACCOUNTS_FILE": str(path)})


def test_a_lane_still_queued_is_not_published_again_every_grace(env, fsettings):
    store, ob, published, _clock = env
    ob.send_text("7300", "x")
    assert published == [(A, "7300")]
    grace = fsettings.dispatch_grace_ms
    # its message waits in a long queue: one grace later the dispatcher does not publish it again ...
    assert store.dispatch(A, now_ms=T0 + grace + 1).lanes == []
    # ... only once it is presumed lost (two graces without a worker taking it)
    assert store.dispatch(A, now_ms=T0 + 2 * grace + 2).lanes == ["7300"]


def test_a_lane_waiting_for_the_rate_keeps_its_one_slot(env):
    store, ob, _published, _clock = env
    k = store.acct(A)
    lanes = [f"{7400 + i}" for i in range(6)]
    for r in lanes:
        ob.send_text(r, "x")
    got = [store.step(A, r, f"w{r}", acquire=True, now_ms=T0) for r in lanes]
    waiting = [(r, g) for r, g in zip(lanes, got, strict=True) if g.action == "wait"]
    assert waiting and all(g.why == "rate" for _, g in waiting)
    pointer = store.redis.hget(k.limiter, "text:wake")
    r, first = waiting[-1]
    # visited again before its slot: the same slot, and no new reservation pushes the others back
    again = store.step(A, r, f"w{r}", acquire=True, now_ms=T0 + 1)
    assert again.until_ms == first.until_ms and store.redis.hget(k.limiter, "text:wake") == pointer


def test_lanes_sleep_until_the_probe_answers_and_wake_when_it_succeeds(env):
    store, ob, _published, _clock = env
    k = store.acct(A)
    a, b = ob.send_text("7500", "a"), ob.send_text("7501", "b")
    store.redis.hset(k.pause, mapping={"until": T0 - 1, "reason": "throttled"})  # a pause just ended
    probe = store.step(A, "7500", "p", acquire=True, now_ms=T0)
    assert probe.job_id == a.id  # the one probe
    other = store.step(A, "7501", "q", acquire=True, now_ms=T0 + 1)
    assert other.why == "probe" and other.until_ms == T0 + store.settings.lease_ms  # no 250 ms polling
    store.step(A, "7500", "p", acquire=False, prev_id=a.id, outcome={"o": "sent", "mid": "m"}, now_ms=T0 + 50)
    assert store.redis.zscore(k.ready, "7501") == T0 + 50  # woken by the probe's success
    assert store.step(A, "7501", "q", acquire=True, now_ms=T0 + 60).job_id == b.id
