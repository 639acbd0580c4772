"""Chaos 3: Redis unreachable for 10 s, while producers enqueue and workers send.

``freeze``: the own redis-server is SIGSTOPped for 10 s, then SIGCONTinued (connections stay open,
nothing answers).  ``down``: it is stopped and started again on the same port 10 s later
(connections refused).  Producers get :class:`RedisUnavailableError` (or, with dmworker's default
client and its 30 s socket timeout, simply wait out a 10 s freeze); the worker processes must
reconnect by themselves and deliver everything accepted, in order.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from chaos_helpers import FaultWindow, Producer, make_publisher, run_with_redis_fault
from conftest import ACCOUNT
from redis.backoff import NoBackoff
from redis.retry import Retry

from dmworker.outbox import Outbox
from dmworker.settings import parse_rate


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("how", ["freeze", "down"])
def test_redis_unreachable_for_10s_workers_reconnect(how, settings, sandbox, own_redis, procs, chaos):
    # Given an own redis-server, 2 workers, 2 producers on dmworker's default Redis client, and
    # one "fail fast" producer: a Redis client and a Celery publisher with 1 s socket timeouts and
    # no retries (else its publish, after an enqueue just before the freeze, waits out the freeze)
    srv = own_redis()
    s = settings.with_overrides(
        redis_url=srv.url, max_attempts=20, rates={**settings.rates, "text": parse_rate("1000/s")}
    )
    g = procs(s)
    for name in ("w1", "w2"):
        g.start_worker(name, concurrency=8)
    recipients = [str(730000 + i) for i in range(60)]
    fast_recipients = [str(739000 + i) for i in range(10)]
    sandbox.open_windows(ACCOUNT, recipients + fast_recipients)
    sandbox.set_latency(20)
    fast_client = redis.Redis.from_url(
        srv.url,
        decode_responses=True,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    stop_fast = threading.Event()
    fast = Producer(
        Outbox(settings=s, client=fast_client, publish=make_publisher(s, socket_timeout_s=1.0)),
        fast_recipients,
        10.0,
        stop_fast,
        name="fast",
    )
    outage_s = 10.0

    def outage(w: FaultWindow) -> None:
        # When Redis stops answering for 10 s
        w.t_fault = time.time()
        if how == "freeze":
            srv.freeze()
            time.sleep(outage_s)
            srv.thaw()
        else:
            srv.stop()
            time.sleep(outage_s)
            srv.start()
        w.t_back = time.time()
        stop_fast.set()  # the fast producer stops with the others (its stop event is its own)

    rep, producers, _, sup = run_with_redis_fault(
        f"redis_unreachable_{how}",
        s=s,
        srv=srv,
        sandbox=sandbox,
        g=g,
        account=ACCOUNT,
        recipients=recipients,
        fault=outage,
        before_s=chaos.s(4.0),
        after_s=chaos.s(5.0),
        extra_producers=[fast],
    )
    # Then producers got a clear RedisUnavailableError saying that nothing was queued ...
    errors = [e for p in producers for e in p.errors]
    assert fast.errors, "the fail-fast producer never saw Redis unavailable"
    if how == "down":
        assert all(p.errors for p in producers), [len(p.errors) for p in producers]
    for e in errors:
        assert e.type == "RedisUnavailableError", e
        assert "nothing was queued" in e.message, e.message
    # ... every accepted job was delivered once (duplicates only of sends in doubt), in order
    rep.check(dead_expected=0)
    ghosts = sum(len(p.ghosts) for p in producers)
    print(
        f"{how}: producer errors {len(errors)} (fail-fast {len(fast.errors)}); "
        f"retries that found the job already queued despite the error: {ghosts}; "
        f"longest enqueue call {max(p.max_call_s for p in producers):.1f} s"
    )
    # ... and the worker processes reconnected by themselves (none exited)
    sup.verdict(f"redis unreachable ({how})")
