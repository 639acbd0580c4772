"""A batch stays in order when Redis's script cache is empty and another client loads the scripts
while the batch's pipeline runs (a fresh or restarted Redis: workers and producers reload at once).

Each EVALSHA of a non-transactional pipeline runs on its own: before the fix, the calls queued before
the other client's ``SCRIPT LOAD`` failed with NOSCRIPT, the later ones ran, and the pipeline's retry
appended the first ones after them: a recipient's first messages were sent after its last ones (seen
as 200 of 460 messages reordered in the clock-skew chaos run on a loaded machine).

The moment is made exact by a TCP relay between the producer and a redis-server of this test's own
(the test flushes that server's script cache, no other): the relay passes the pipeline's first
script call, waits for Redis's answer to it, lets the other client load the script, then passes the
rest.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from conftest import ACCOUNT, ACCOUNT2
from ha_servers import PlainRedis, redis_server_binary

from dmworker import scripts
from dmworker.dispatcher import Dispatcher
from dmworker.keys import Keys
from dmworker.outbox import Outbox
from dmworker.settings import Settings

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server binary found")

RECIPIENTS = [str(880000 + i) for i in range(50)]
PER = 4
CALL = b"$7\r\nEVALSHA\r\n"


class Relay:
    """Relays TCP to ``port``; when armed, a client stream that holds two script calls is passed up
    to the second one, then ``midway()`` runs once Redis has answered, then the rest is passed."""

    def __init__(self, port: int, midway: Callable[[], None]) -> None:
        self.port, self.midway = port, midway
        self.armed = threading.Event()
        self.fired = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.server.getsockname()[1]}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            answered = threading.Event()
            threading.Thread(target=self._down, args=(upstream, client, answered), daemon=True).start()
            threading.Thread(target=self._up, args=(client, upstream, answered), daemon=True).start()

    def _down(self, src: socket.socket, dst: socket.socket, answered: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                answered.set()
                dst.sendall(data)

    def _up(self, src: socket.socket, dst: socket.socket, answered: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                first = data.find(CALL)
                second = data.find(CALL, first + 1) if first >= 0 else -1
                if not self.armed.is_set() or second < 0:
                    dst.sendall(data)
                    continue
                self.armed.clear()
                cut = data.rfind(b"*", 0, second)  # the start of the second call's command
                answered.clear()
                dst.sendall(data[:cut])
                answered.wait(10)  # Redis ran what came before (NOSCRIPT, or the script)
                self.midway()
                self.fired += 1
                dst.sendall(data[cut:])

    def close(self) -> None:
        self.server.close()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[PlainRedis]:
    with PlainRedis() as r:
        yield r


@contextlib.contextmanager
def producer_behind_relay(
    own_redis: PlainRedis, settings: Settings, loads: str
) -> Iterator[tuple[redis.Redis, Relay, Outbox]]:
    """A direct client (another process: a worker), a relay that makes it load script ``loads``
    midway once armed, and an Outbox (own key prefix) that talks to Redis through the relay."""
    direct = redis.Redis.from_url(own_redis.url, decode_responses=True)
    relay = Relay(own_redis.node.port, lambda: direct.script_load(scripts.source(loads)))
    try:
        s = settings.with_overrides(redis_url=relay.url, key_prefix=f"dmwt{uuid.uuid4().hex[:10]}")
        client = redis.Redis.from_url(relay.url, decode_responses=True)
        yield direct, relay, Outbox(settings=s, client=client, publish=lambda a, r: None)
    finally:
        relay.close()


def test_a_batch_keeps_each_recipients_order_when_the_scripts_are_loaded_midway(
    own_redis: PlainRedis, settings: Settings
) -> None:
    with producer_behind_relay(own_redis, settings, "enqueue") as (direct, relay, ob):
        # Given an empty script cache (as after a restart), and a worker that loads the enqueue
        # script while the producer's pipeline runs, after its first script call
        direct.script_flush()
        relay.armed.set()
        # When a batch queues 4 messages for each of 50 recipients, message n of everyone first
        jobs = ob.send_many(
            [{"kind": "text", "recipient": r, "text": f"{r}#{i}"} for i in range(PER) for r in RECIPIENTS]
        )
        assert relay.fired == 1
        # Then each recipient's lane holds its messages in the order they were given
        ids: dict[str, list[str]] = {}
        for job in jobs:
            ids.setdefault(job.recipient, []).append(job.id)
        k = Keys(ob.settings.key_prefix).account(ACCOUNT)
        broken = [r for r in RECIPIENTS if direct.lrange(k.lane(r), 0, -1) != ids[r]]
        assert broken == [], f"{len(broken)} of {len(RECIPIENTS)} lanes out of order, e.g. {broken[:3]}"


def test_a_dispatcher_pass_publishes_every_accounts_lanes_when_the_scripts_are_loaded_midway(
    own_redis: PlainRedis, settings: Settings
) -> None:
    # Before the fix the pass ran every account's ``dispatch`` again after a NOSCRIPT: the accounts
    # whose call had run (after the other client's load) had admitted their lanes already, so their
    # second call answered none and their Celery messages waited two dispatch graces (60 s).
    with producer_behind_relay(own_redis, settings, "dispatch") as (direct, relay, ob):
        # Given two accounts with a queued lane each whose Celery message was lost (two graces ago)
        ob.send_many(
            [{"kind": "text", "account": a, "recipient": "4711", "text": "hi"} for a in (ACCOUNT, ACCOUNT2)]
        )
        published: list[tuple[str, str]] = []
        d = Dispatcher(ob.store, lambda a, lane: published.append((a, lane)), name="t")
        sec, usec = direct.time()
        later = int(sec) * 1000 + int(usec) // 1000 + 2 * ob.settings.dispatch_grace_ms + 1000
        # and an empty script cache, with a worker that loads the dispatch script while the pass's
        # pipeline runs, after its first account's call
        direct.script_flush()
        relay.armed.set()
        # When one dispatcher pass runs
        d.tick(now_ms=later)
        assert relay.fired == 1
        # Then both accounts' lanes are published by that pass
        assert sorted(a for a, _lane in published) == sorted([ACCOUNT, ACCOUNT2]), published
