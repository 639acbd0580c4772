"""Signed callbacks: the signature, backoff with jitter, dead callbacks after the max age (simulated
time), replay, and one slow receiver not delaying another (two real HTTP receivers)."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import ACCOUNT, ACCOUNT2

from dmworker.callbacks import HEADER, backoff_s, sign, verify
from dmworker.callbacks_deliver import Deliverer
from dmworker.callbacks_store import CallbackStore
from dmworker.events import emit
from dmworker.lanes import LaneStore
from dmworker.settings import ConfigError, Settings

SECRET = "whsec-test-0123456789"


class Receiver:
    """A real HTTP receiver in a thread: records every POST; ``answer(n)`` gives the status of the
    n-th request (and may sleep)."""

    def __init__(self, answer: Callable[[int], int] = lambda n: 200) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append((dict(self.headers), body, 0))
                status = outer.answer(n)
                with outer.lock:
                    outer.requests[n] = (dict(self.headers), body, status)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, ok_only: bool = True) -> list[dict[str, Any]]:
        with self.lock:
            got = list(self.requests)
        return [e for _, body, st in got if st and (200 <= st < 300 or not ok_only)
                for e in json.loads(body)["events"]]  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Poster:
    """An injected POST: answers ``status`` and records (url, events)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, list[dict[str, Any]], dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        self.calls.append((url, json.loads(body)["events"], headers))
        return self.status


@pytest.fixture
def cb(settings: Settings, rdb):
    s = settings.with_overrides(callback_url="http://receiver.invalid/hook", callback_secret=SECRET,
                                callback_max_age_s=3600.0)  # fmt: skip
    store = LaneStore(s, rdb)
    made: list[Deliverer] = []

    def make(**kw: Any) -> Deliverer:
        kw.setdefault("url_for", lambda a: None)
        d = Deliverer(store, consumer="t", **kw)
        made.append(d)
        return d

    yield s, store, make
    for d in made:
        d.close()


# ---------------------------------------------------------------------------------- signature
def test_verify_accepts_a_valid_signature_and_rejects_tampering_wrong_secret_and_stale_times():
    body = b'{"events":[{"id":"1/1-0","type":"job.sent"}]}'
    header = sign(body, SECRET, 1_764_064_800)
    now = 1_764_064_800 + 10
    assert verify(body, header, SECRET, now_s=now)
    assert not verify(body.replace(b"sent", b"seen"), header, SECRET, now_s=now)
    assert not verify(body, header, SECRET + "x", now_s=now)
    assert not verify(body, header, SECRET, tolerance_s=300, now_s=1_764_064_800 + 301)
    assert not verify(body, header, SECRET, tolerance_s=300, now_s=1_764_064_800 - 301)
    assert not verify(body, "v1=abc", SECRET, now_s=now) and not verify(body, "", SECRET, now_s=now)
    # a header with two v1 values (secret rotation) passes when either matches
    other = sign(body, "old-secret", 1_764_064_800).split(",")[1]
    assert verify(body, f"{header},{other}", SECRET, now_s=now)


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    rand = random.Random(7)
    for n, ceiling in ((1, 1.0), (2, 2.0), (4, 8.0), (20, 600.0)):
        draws = [backoff_s(n, rand) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling  # spread over the range
    assert backoff_s(3, random.Random(1)) == backoff_s(3, random.Random(1))  # the injected source decides


# ---------------------------------------------------------------------------------- deliverer
def test_a_failing_destination_backs_off_then_a_2xx_acknowledges(cb, rdb):
    s, store, make = cb
    clock, post = Clock(), Poster(500)
    d = make(post=post, clock=clock, rand=random.Random(3))
    eid = emit(store, ACCOUNT, {"type": "account.paused"})
    d.step(wait=True)
    assert len(post.calls) == 1 and post.calls[0][1][0]["id"] == eid
    _url, events, headers = post.calls[0]
    body = json.dumps({"events": events}, separators=(",", ":")).encode()
    assert verify(body, headers[HEADER], SECRET, now_s=clock.now)
    dest = d.dests[s.callback_url]
    assert dest.failures == 1 and clock.now <= dest.next_at <= clock.now + 1.0
    # not before its time
    clock.now = dest.next_at - 0.01
    d.step(wait=True)
    assert len(post.calls) == 1
    clock.now = dest.next_at
    d.step(wait=True)
    assert len(post.calls) == 2 and dest.failures == 2
    post.status = 204
    clock.now = dest.next_at
    d.step(wait=True)
    assert [c[1][0]["id"] for c in post.calls] == [eid, eid, eid]  # same id on every retry
    assert rdb.xpending(store.acct(ACCOUNT).events, "callbacks")["pending"] == 0
    assert CallbackStore(rdb, s.key_prefix, 10**9, 100).counters() == {"delivered": 1, "failed": 2, "dead": 0}


def test_an_event_is_dead_after_the_max_age_and_a_replay_delivers_it_with_its_id(cb, rdb):
    s, store, make = cb
    clock, post = Clock(), Poster(503)
    d = make(post=post, clock=clock, rand=random.Random(5))
    eid = emit(store, ACCOUNT, {"type": "account.reauth_required"})
    d.step(wait=True)
    dead = CallbackStore(rdb, s.key_prefix, 10**9, 100)
    assert dead.list() == []
    clock.now += 3599  # one second short of DMWORKER_CALLBACK_MAX_AGE_S: still retried
    d.step(wait=True)
    assert dead.list() == [] and len(post.calls) == 2
    clock.now += 2
    d.step(wait=True)
    [gone] = dead.list()
    assert gone.id == eid and gone.to == ("default",) and gone.reason == "HTTP 503"
    assert gone.event["type"] == "account.reauth_required"
    assert rdb.xpending(store.acct(ACCOUNT).events, "callbacks")["pending"] == 0  # acknowledged
    assert dead.counters()["dead"] == 1 and dead.size() == 1
    # When an operator replays it and the receiver is back
    assert dead.replay([eid], now_ms=int(clock.now * 1000)) == 1
    post.status = 200
    clock.now += 600
    d.step(wait=True)
    assert post.calls[-1][1][0]["id"] == eid
    assert dead.list() == [] and rdb.zcard(store.keys.events_replay) == 0
    assert rdb.hlen(store.keys.events_dead_data) == 0


def test_purge_and_account_filter_of_dead_callbacks(cb, rdb):
    s, store, make = cb
    clock, post = Clock(), Poster(500)
    d = make(post=post, clock=clock)
    a = emit(store, ACCOUNT, {"type": "account.paused"})
    b = emit(store, ACCOUNT2, {"type": "account.paused"})
    d.step(wait=True)
    clock.now += 4000
    d.step(wait=True)
    dead = CallbackStore(rdb, s.key_prefix, 10**9, 100)
    assert {x.id for x in dead.list()} == {a, b}
    assert [x.id for x in dead.list(ACCOUNT2)] == [b]
    assert dead.purge(ACCOUNT) == 1 and [x.id for x in dead.list()] == [b]


def test_one_slow_receiver_does_not_delay_another_accounts_callbacks(cb, rdb):
    s, store, _make = cb
    slow = Receiver(lambda n: (time.sleep(2.0), 200)[1])
    fast = Receiver()
    s2 = s.with_overrides(callback_url=None, callback_timeout_s=5.0)
    urls = {ACCOUNT: slow.url, ACCOUNT2: fast.url}
    d = Deliverer(LaneStore(s2, rdb), consumer="t", url_for=urls.get)
    stop = threading.Event()
    t = threading.Thread(target=d.run, args=(stop,))
    try:
        t.start()
        emit(store, ACCOUNT, {"type": "account.paused"})
        time.sleep(0.3)  # the slow receiver now holds a POST for 2 s
        t0 = time.monotonic()
        fast_id = emit(store, ACCOUNT2, {"type": "account.paused"})
        while not fast.events() and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert [e["id"] for e in fast.events()] == [fast_id]
        assert took < 1.0, f"the fast receiver waited {took:.2f} s"
        assert not slow.events()  # still in flight at the slow one
    finally:
        stop.set()
        t.join(10)
        slow.close()
        fast.close()
    assert len(slow.events()) == 1  # finished on the way out


def test_a_password_in_the_url_never_reaches_logs_or_errors(cb, rdb, caplog):
    s, store, _make = cb
    with pytest.raises(ConfigError) as e:
        Settings.from_env(
            {"DMWORKER_CALLBACK_URL": "ftp://u:hunter2pw@h/x?token=t0k", "DMWORKER_CALLBACK_SECRET": "x"}
        )
    assert "hunter2pw" not in str(e.value) and "t0k" not in str(e.value)
    with pytest.raises(ConfigError, match="DMWORKER_CALLBACK_SECRET"):
        Settings.from_env({"DMWORKER_CALLBACK_URL": "https://h/x"})
    ok = Settings.from_env(
        {"DMWORKER_CALLBACK_URL": "https://u:hunter2pw@h/x", "DMWORKER_CALLBACK_SECRET": SECRET}
    )
    assert "hunter2pw" not in repr(ok) and SECRET not in repr(ok)
    # a destination that refuses connections: the log names it without its password or query
    s2 = s.with_overrides(callback_url="http://user:hunter2pw@127.0.0.1:9/hook?token=t0k")
    d = Deliverer(LaneStore(s2, rdb), consumer="t", url_for=lambda a: None)
    emit(store, ACCOUNT, {"type": "account.paused"})
    with caplog.at_level(logging.WARNING, logger="dmworker.callbacks"):
        d.step(wait=True)
    d.close()
    text = caplog.text
    assert "127.0.0.1:9/hook" in text
    assert "hunter2pw" not in text and "t0k" not in text and SECRET not in text


def test_the_http_api_lists_and_replays_dead_callbacks_within_the_tokens_scope(cb, rdb):
    from dmworker.web import create_app

    s, _store, _make = cb
    dead = CallbackStore(rdb, s.key_prefix, 10**9, 100)
    for acct, eid in ((ACCOUNT, f"{ACCOUNT}/1-0"), (ACCOUNT2, f"{ACCOUNT2}/1-0")):
        dead.bury({"id": eid, "type": "job.sent", "account": acct}, ["default"], "HTTP 500", 1_000)
    app = create_app(s.with_overrides(api_tokens=("adm", f"p2:producer:{ACCOUNT2}")), redis_client=rdb,
                     publish=lambda a, r: None)  # fmt: skip
    c = app.test_client()
    admin, p2 = {"Authorization": "Bearer adm"}, {"Authorization": "Bearer p2"}
    assert len(c.get("/v1/callbacks/dead", headers=admin).json["dead_callbacks"]) == 2
    mine = c.get("/v1/callbacks/dead", headers=p2).json["dead_callbacks"]
    assert [d["id"] for d in mine] == [f"{ACCOUNT2}/1-0"] and mine[0]["reason"] == "HTTP 500"
    assert c.get(f"/v1/callbacks/dead?account={ACCOUNT}", headers=p2).status_code == 403
    assert c.post("/v1/callbacks/dead/replay", headers=p2).status_code == 403  # every one: admin-wide only
    both = {"ids": [f"{ACCOUNT}/1-0", f"{ACCOUNT2}/1-0"]}
    assert c.post("/v1/callbacks/dead/replay", json=both, headers=p2).json == {"replayed": 1}
    assert [d.id for d in dead.list()] == [f"{ACCOUNT}/1-0"]
    assert c.get("/v1/callbacks/dead?limit=0", headers=admin).status_code == 422
