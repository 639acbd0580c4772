"""Chaos 2: Redis (own redis-server, AOF everysec) stopped mid-run and started again from its files.

SIGTERM: Redis fsyncs the AOF before exiting, so nothing acknowledged may be lost.  SIGKILL: a
crash of the redis-server process; with ``appendfsync everysec`` only writes acknowledged within
about the last second (at most 2 s when the disk stalls) may be lost — and since Redis write()s
the AOF before it replies, a process crash (unlike an OS crash) loses none in practice.
"""

from __future__ import annotations

import time

import pytest
from chaos_helpers import FaultWindow, run_with_redis_fault
from conftest import ACCOUNT

from dmworker.settings import parse_rate

LOSS_WINDOW_S = 2.0  # everysec: ~1 s, up to 2 s when an fsync is slow (Redis postpones the write)


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_redis_restart_keeps_what_was_acknowledged(how, settings, sandbox, own_redis, procs, chaos):
    # Given an own redis-server with AOF everysec, 2 workers, producers at ~40 jobs/s
    srv = own_redis()
    s = settings.with_overrides(
        redis_url=srv.url, max_attempts=20, rates={**settings.rates, "text": parse_rate("1000/s")}
    )
    g = procs(s)
    for name in ("w1", "w2"):
        g.start_worker(name, concurrency=8)
    recipients = [str(720000 + i) for i in range(60)]
    sandbox.open_windows(ACCOUNT, recipients)
    sandbox.set_latency(20)
    down_s = chaos.s(6.0)

    def restart(w: FaultWindow) -> None:
        # When Redis is stopped (SIGTERM) or crashes (SIGKILL) mid-run, and starts again
        w.t_fault = time.time()
        srv.stop() if how == "sigterm" else srv.kill()
        time.sleep(down_s)
        srv.start()
        w.t_back = time.time()

    rep, producers, w, sup = run_with_redis_fault(
        f"redis_restart_{how}",
        s=s,
        srv=srv,
        sandbox=sandbox,
        g=g,
        account=ACCOUNT,
        recipients=recipients,
        fault=restart,
        before_s=chaos.s(5.0),
        after_s=chaos.s(4.0),
    )
    # Then (SIGTERM) nothing acknowledged is lost; (SIGKILL) only jobs acknowledged in the last
    # ~1 s before the crash may be; nothing is reordered or unexpected, the workers recovered alone
    lost = sorted(rep.lost_tokens)
    if how == "sigterm":
        rep.check(dead_expected=0)
    else:
        ages = [w.t_fault - rep.acked_at[t] for t in lost]
        print(f"lost after SIGKILL: {len(lost)}; acknowledged at most {max(ages, default=0):.2f} s before")
        assert all(age <= LOSS_WINDOW_S for age in ages), sorted(ages)[:10]
        rep.check(dead_expected=0, lost_allowed=set(lost))
    errors = [e for p in producers for e in p.errors]
    assert all(e.type == "RedisUnavailableError" and "nothing was queued" in e.message for e in errors)
    # ... and the workers reconnected by themselves (see Supervisor.verdict for the known kombu bug)
    sup.verdict(f"redis restart ({how})")
