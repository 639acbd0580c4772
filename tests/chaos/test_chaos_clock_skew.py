"""Chaos 6: worker processes whose clocks are 10 minutes off: one ahead, one behind, and no other.

A ``sitecustomize.py`` prepended to a worker's PYTHONPATH shifts ``time.time``/``time.time_ns`` of
that process (and writes a marker file proving it).  The rate limiter and the follow-up schedule
run on the Redis server's clock (``TIME`` inside the Lua scripts), so the limit must hold in every
1-s window of the sandbox's record and no follow-up may be sent before it is due.  Only the two
skewed workers run (their embedded dispatchers promote the follow-ups), so every send and every
promotion is made by a process with a wrong clock.
"""

from __future__ import annotations

import os
import time

import pytest
from chaos_helpers import account_run, make_publisher, max_in_window
from conftest import ACCOUNT, ACCOUNT2

from dmworker.outbox import Outbox
from dmworker.settings import parse_rate
from dmworker.testing import wait_until

SITECUSTOMIZE = '''\
"""Test-only: shift this process's wall clock by DMWORKER_TEST_CLOCK_SKEW_S seconds."""
import os
import time

_skew = float(os.environ.get("DMWORKER_TEST_CLOCK_SKEW_S") or 0)
if _skew:
    _real_time, _real_time_ns = time.time, time.time_ns

    def _time():
        return _real_time() + _skew

    def _time_ns():
        return _real_time_ns() + int(_skew * 1_000_000_000)

    time.time, time.time_ns = _time, _time_ns
    _marker = os.environ.get("DMWORKER_TEST_CLOCK_MARKER")
    if _marker:
        with open(f"{_marker}.{os.getpid()}", "w") as _f:
            _f.write(f"{time.time()} {_real_time()}")
'''

RATE, BURST = 40, 5


@pytest.mark.slow
@pytest.mark.chaos
def test_skewed_worker_clocks_keep_the_rate_limit_and_followup_times(
    settings, sandbox, rdb, procs, chaos, tmp_path
):
    # Given 2 workers, one with its clock 10 min ahead, one 10 min behind; 40/s, burst 5
    skew_dir = tmp_path / "skew"
    skew_dir.mkdir()
    (skew_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    s = settings.with_overrides(rates={**settings.rates, "text": parse_rate(f"{RATE}/s")}, rate_burst=BURST)
    g = procs(s)
    pythonpath = os.pathsep.join([str(skew_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for name, skew in (("w_ahead", 600), ("w_behind", -600)):
        g.start_worker(
            name,
            concurrency=8,
            extra_env={
                "PYTHONPATH": pythonpath,
                "DMWORKER_TEST_CLOCK_SKEW_S": str(skew),
                "DMWORKER_TEST_CLOCK_MARKER": str(tmp_path / name),
            },
        )
    recipients = [str(760000 + i) for i in range(100)]
    f_recipients = [str(761000 + i) for i in range(30)]
    sandbox.open_windows(ACCOUNT, recipients)
    sandbox.open_windows(ACCOUNT2, f_recipients)
    ob = Outbox(settings=s, client=rdb, publish=make_publisher(s))

    def written() -> bool:  # each skewed worker wrote "<its clock> <real clock>" (not just created the file)
        files = list(tmp_path.glob("w_*.*"))
        return len(files) == 2 and all(len(f.read_text().split()) == 2 for f in files)

    assert wait_until(written, 20), "the skewed workers did not start"
    for name, skew in (("w_ahead", 600), ("w_behind", -600)):
        shown, real = map(float, next(tmp_path.glob(f"{name}.*")).read_text().split())
        assert abs(shown - real - skew) < 1, (name, shown - real)
    time.sleep(1.0)
    # When 400 jobs (1,200 in the long mode) are queued at once for account A, and follow-ups due
    # in 2-8 s for account B (its own limiter, no backlog: each is sent as soon as it is due)
    n_jobs, n_follow = chaos.n(400), chaos.n(60)
    per = n_jobs // len(recipients)
    expected = {r: [f"{r}#{n}" for n in range(per)] for r in recipients}
    ob.send_many(
        [{"kind": "text", "recipient": r, "text": f"{r}#{n}"} for n in range(per) for r in recipients]
    )
    follow = {}
    for i in range(n_follow):
        r = f_recipients[i % len(f_recipients)]
        job = ob.send_text(r, f"follow-{i}", delay=2.0 + 6.0 * i / n_follow, account=ACCOUNT2)
        follow[f"follow-{i}"] = job
        expected.setdefault(r, []).append(f"follow-{i}")
    total = n_jobs + n_follow
    assert wait_until(lambda: len(sandbox.sends()) >= total, total / RATE * 2 + 30, 0.5), g.log_tail(
        "w_ahead", 20
    )
    time.sleep(1.0)
    sends = sandbox.sends()
    # Then no 1-second window of the sandbox's record holds more than rate + burst sends ...
    worst = max_in_window([x["t_ms"] for x in sends if x["account"] == ACCOUNT])
    # ... no follow-up was sent before its due time (Redis clock), and each was sent once
    early, lag = [], []
    for text, job in follow.items():
        t = [x["t_ms"] for x in sends if x["body"]["message"]["text"] == text]
        assert len(t) == 1, (text, t)
        due = ob.status(job.id).due_ms
        assert due is not None
        lag.append(t[0] - due)
        if t[0] < due:
            early.append((text, t[0] - due))
    rep = account_run(
        "clock_skew",
        expected,
        sends,
        set(),
        set(),
        max_per_1s_window=worst,
        limit=f"{RATE}/s+{BURST}",
        followups_early=len(early),
        followup_lag_ms_max=round(max(lag)),
        followup_lag_ms_min=round(min(lag)),
    )
    rep.check(dead_expected=0)
    assert worst <= RATE + BURST, worst
    assert early == [], early
    assert sorted(lag)[int(len(lag) * 0.9)] < 60_000, sorted(lag)  # promoted on time, not 10 min late
    assert all(p.poll() is None for p in g.procs.values())
