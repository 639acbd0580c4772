"""The dashboard's search index (dmworker.jobindex): written by the Lua scripts at acceptance and on
every change of state, the same members as the Python side computes, gone with the job; searches
answer from it (real Redis, the Graph API sandbox over real HTTP for sends)."""

from __future__ import annotations

import json

import pytest
from conftest import ACCOUNT, TOKEN

from dmworker import jobindex
from dmworker.admin import DeadLetters
from dmworker.lifecycle import normalize

DAY_MS = 86_400_000


@pytest.fixture
def lsettings(settings):
    return settings.with_overrides(window_policy="trust", retention_s=86400, dlq_retention_s=2 * 86400)


def _index(rdb, store) -> set[str]:
    return set(rdb.zrange(store.acct(ACCOUNT).index, 0, -1))


def _expected(rdb, store) -> set[str]:
    """What the Python side says the index must hold: the members of every status record."""
    k = store.acct(ACCOUNT)
    out: set[str] = set()
    for job_id, raw in rdb.hgetall(k.status).items():
        out |= set(jobindex.members(job_id, normalize(json.loads(raw))))
    return out


def _send(store, worker, lane, now_ms):
    step = store.step(ACCOUNT, lane, "w", acquire=True, token=TOKEN, now_ms=now_ms)
    assert step.action == "job", step
    outcome = worker.execute(ACCOUNT, lane, step)
    store.step(
        ACCOUNT, lane, "w", acquire=False, prev_id=step.job_id, outcome=outcome, token=TOKEN, now_ms=now_ms
    )
    return step.job_id


def test_the_index_follows_every_state_and_leaves_with_the_job(outbox, store, worker, sandbox, rdb):
    sandbox.set_enforce_windows(True)
    sandbox.open_window(ACCOUNT, "9201")
    now = store._redis_now_ms()
    a = outbox.send_text("9201", "hello")
    f = outbox.send_text("9201", "later?", delay=3600, key="nudge-9201")
    dead = outbox.send_text("9202", "no window here")  # the sandbox refuses it: outside the window
    assert _index(rdb, store) == _expected(rdb, store)
    k = store.acct(ACCOUNT)
    assert jobindex.page(rdb, k, "s|scheduled|").ids == [f.id]
    assert jobindex.page(rdb, k, "k|nudge-9201|").ids == [f.id]
    assert set(jobindex.page(rdb, k, "s|pending|").ids) == {a.id, dead.id}

    assert _send(store, worker, "9201", now + 1000) == a.id
    _send(store, worker, "9202", now + 1000)
    store.promote(ACCOUNT, [(f.id, "9201")], now_ms=now + 3_600_000 + 1)
    assert _index(rdb, store) == _expected(rdb, store)
    assert outbox.status(dead.id).dead_lettered
    assert jobindex.page(rdb, k, "s|dead|").ids == [dead.id]
    kind = outbox.status(dead.id).last_error.kind
    assert jobindex.page(rdb, k, f"d|{kind}|").ids == [dead.id]
    assert jobindex.page(rdb, k, "s|sent|").ids == [a.id]
    assert jobindex.page(rdb, k, "s|pending|").ids == [f.id]
    assert jobindex.page(rdb, k, "r|9201|").ids == [f.id, a.id]  # newest first

    DeadLetters(store, publish=lambda a_, r_: None).replay(dead.id)
    assert _index(rdb, store) == _expected(rdb, store)
    assert jobindex.page(rdb, k, "s|dead|").ids == []
    assert jobindex.count(rdb, k, "d|") == 0

    # every job ends; past the retention nothing of them is left in the index
    store.end_jobs(ACCOUNT, [f.id, dead.id], now_ms=now + 2 * 3_600_000)
    assert _index(rdb, store) == _expected(rdb, store)
    store.trim(ACCOUNT, now_ms=now + 3 * DAY_MS)
    assert rdb.hlen(k.status) == 0
    assert _index(rdb, store) == set()


def test_pages_are_newest_first_with_a_cursor_and_a_filter(outbox, store, rdb):
    jobs = [outbox.send_text("9301", f"m{i}", delay=60 + i) for i in range(7)]
    k = store.acct(ACCOUNT)
    first = jobindex.page(rdb, k, "r|9301|", limit=3)
    second = jobindex.page(rdb, k, "r|9301|", limit=3, after=first.cursor)
    third = jobindex.page(rdb, k, "r|9301|", limit=3, after=second.cursor)
    got = first.ids + second.ids + third.ids
    assert sorted(got) == sorted(j.id for j in jobs) and len(set(got)) == 7
    assert third.cursor is None
    # a filter that keeps every other job
    keep = {j.id for j in jobs[::2]}
    filtered = jobindex.page(rdb, k, "a|", limit=10, keep=lambda ids: [i in keep for i in ids])
    assert set(filtered.ids) == keep and filtered.cursor is None


def test_a_value_containing_the_separator_does_not_match_a_shorter_one(outbox, store, rdb):
    a = outbox.send_text("9401", "x", delay=60, key="a")
    b = outbox.send_text("9401", "y", delay=60, key="a|b")
    k = store.acct(ACCOUNT)
    assert jobindex.page(rdb, k, "k|a|").ids == [a.id]
    assert jobindex.page(rdb, k, "k|a|b|").ids == [b.id]


def test_purging_dead_letters_removes_their_index_entries(outbox, store, worker, sandbox, rdb):
    sandbox.set_enforce_windows(True)
    now = store._redis_now_ms()
    dead = outbox.send_text("9502", "no window")
    _send(store, worker, "9502", now + 1000)
    assert outbox.status(dead.id).dead_lettered
    DeadLetters(store).purge(ACCOUNT)
    assert not [m for m in _index(rdb, store) if m.endswith("|" + dead.id)]
