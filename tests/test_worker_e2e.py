"""Real worker processes over real Redis and the sandbox: delivery, order, faults, SIGKILL."""

from __future__ import annotations

import random
import time

import pytest
from conftest import ACCOUNT

from dmworker.admin import DeadLetters
from dmworker.outbox import Outbox
from dmworker.testing import Accounting, ProcessGroup, wait_until


@pytest.fixture
def procs(settings):
    groups: list[ProcessGroup] = []

    def make(s=None, **env):
        g = ProcessGroup(s or settings, extra_env=env)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop_all()


@pytest.mark.slow
def test_a_sequence_is_delivered_in_order_with_the_typing_pause(settings, sandbox, rdb, procs):
    # Given one worker and an open window
    g = procs()
    g.start_worker("w1", concurrency=4)
    sandbox.open_window(ACCOUNT, "5001")
    ob = Outbox(settings=settings, client=rdb, publish=_publisher(settings))
    # When a sequence typing(1 s) -> text -> quick replies is queued
    job = (
        ob.sequence("5001")
        .typing(seconds=1)
        .text("Here is your answer!")
        .quick_replies(
            text="Anything else?", replies=[{"content_type": "text", "title": "No", "payload": "no"}]
        )
        .enqueue()
    )
    assert wait_until(lambda: ob.status(job.ids[-1]).state == "sent", 20), g.log_tail("w1")
    # Then the sandbox got typing_on, then the text at least 1 s later, then the quick replies
    sends = sandbox.sends(ACCOUNT)
    assert [s["kind"] for s in sends] == ["typing_on", "text", "quick_replies"]
    assert sends[0]["body"] == {"recipient": {"id": "5001"}, "sender_action": "typing_on"}
    assert sends[1]["body"] == {"recipient": {"id": "5001"}, "message": {"text": "Here is your answer!"}}
    assert sends[1]["t_ms"] - sends[0]["t_ms"] >= 1000
    st = ob.status(job.ids[1])
    assert st.state == "sent" and st.message_id == sends[1]["message_id"] and st.attempts == 1


def _publisher(settings):
    """A publish function bound to a Celery app configured for ``settings`` (in this process)."""
    from celery import Celery

    from dmworker.redisconn import broker_url

    app = Celery("dmworker-test-producer", set_as_current=False)
    url = broker_url(settings)
    app.conf.update(broker_url=url, task_serializer="json", accept_content=["json"])
    if url.startswith("redis"):
        app.conf.broker_transport_options = {"global_keyprefix": f"{settings.key_prefix}:celery:"}
    queue = f"{settings.key_prefix}.lanes"

    def publish(account: str, recipient: str) -> None:
        app.send_task("dmworker.process_lane", (account, recipient), queue=queue)

    return publish


@pytest.mark.slow
def test_2000_jobs_3_workers_faults_and_sigkill_lose_nothing_and_keep_order(settings, sandbox, rdb, procs):
    # Given 3 worker processes, a sandbox failing ~7% of sends with 5xx / transient errors
    s = settings.with_overrides(
        max_attempts=20, rates={**settings.rates, "text": settings.rates["text"].__class__(5000, 1)}
    )
    g = procs(s)
    for name in ("w1", "w2", "w3"):
        g.start_worker(name, concurrency=8)
    recipients = [str(700000 + i) for i in range(100)]
    sandbox.open_windows(ACCOUNT, recipients)
    sandbox.set_faults(error_rate=0.07, kinds=["5xx", "transient"], seed=7)
    ob = Outbox(settings=s, client=rdb, publish=_publisher(s))
    # When 2,000 jobs (20 per recipient, interleaved) are queued while workers are killed
    expected: dict[str, list[str]] = {r: [] for r in recipients}
    items = []
    for n in range(20):
        for r in recipients:
            tok = f"{r}#{n}"
            expected[r].append(tok)
            items.append({"kind": "text", "recipient": r, "text": tok})
    random.seed(3)
    jobs = []
    in_flight_at_kills = 0
    for start in range(0, len(items), 200):
        jobs += ob.send_many(items[start : start + 200])
        if start in (600, 1200):
            time.sleep(0.3)
            victim = "w2" if start == 600 else "w3"
            g.kill(victim)
            sts = rdb.hvals(f"{s.key_prefix}:{{{ACCOUNT}}}:st")
            in_flight_at_kills += sum(1 for v in sts if '"state":"sending"' in v)
            g.start_worker(victim, concurrency=8)
    ids = [j.id for j in jobs]

    def finished() -> bool:
        states = [ob.status(i).state for i in ids[-300:]]
        return all(x in ("sent", "failed") for x in states)

    assert wait_until(finished, 120, 0.5), g.log_tail("w1")
    assert wait_until(lambda: all(ob.status(i).state in ("sent", "failed") for i in ids), 60, 0.5)
    # Then, per job: nothing lost, nothing reordered, nothing unexpected, duplicates only from kills
    delivered = [(x["recipient"], x["body"]["message"]["text"]) for x in sandbox.sends(ACCOUNT)]
    dead = {ob.status(d.id).id for d in DeadLetters(ob.store).list(ACCOUNT, 10_000)}
    dead_tokens = {items[ids.index(i)]["text"] for i in dead}
    acc = Accounting(expected, delivered, dead_tokens)
    print("accounting:", acc, "in flight at kills:", in_flight_at_kills)
    assert acc.lost == 0 and acc.reordered == 0 and acc.unexpected == 0, str(acc)
    assert acc.duplicated <= in_flight_at_kills, str(acc)
    assert acc.dead == 0, str(acc)
    assert any(x["status"] >= 500 or x.get("error_code") == 2 for x in sandbox.requests(ACCOUNT)), (
        "the sandbox injected no faults"
    )


@pytest.mark.slow
def test_the_plain_celery_command_runs_dmworkers_app(settings, sandbox, rdb, tmp_path):
    # Given a worker started with Celery's own command line (so Flower and the usual tooling apply)
    import os
    import subprocess
    import sys

    from dmworker.testing import settings_to_env

    env = {**os.environ, **settings_to_env(settings, str(tmp_path / "accounts.json"))}
    log = open(tmp_path / "celery.log", "wb")  # noqa: SIM115
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dmworker.celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "4",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        sandbox.open_window(ACCOUNT, "5101")
        ob = Outbox(settings=settings, client=rdb, publish=_publisher(settings))
        job = ob.send_text("5101", "via celery -A")
        # Then it delivers like `dmworker worker`
        assert wait_until(lambda: ob.status(job.id).state == "sent", 30), (
            tmp_path / "celery.log"
        ).read_text()
    finally:
        p.terminate()
        p.wait(timeout=30)
        log.close()
