"""Callbacks end to end: real worker processes (one killed with SIGKILL mid-run), the Graph API
sandbox, a real HTTP receiver answering 500 for its first 10 s, and the deliverer reading the
event streams."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import ACCOUNT
from test_callbacks import SECRET, Receiver
from test_worker_e2e import _publisher

from dmworker.callbacks import HEADER, verify
from dmworker.callbacks_deliver import Deliverer
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import Rate
from dmworker.testing import ProcessGroup, wait_until

FAILING_FOR_S = 10.0
FINAL = ("job.sent", "job.failed")


@pytest.mark.slow
def test_1000_sends_every_final_event_arrives_signed_through_500s_and_a_killed_worker(settings, sandbox, rdb):
    # Given 2 workers, 100 recipients of whom 10 have no window (Meta refuses: failed for good)
    s = settings.with_overrides(
        window_policy="trust",
        rates={**settings.rates, "text": Rate(5000, 1)},
        callback_url="http://placeholder.invalid/",
        callback_secret=SECRET,
        callback_timeout_s=2.0,
    )
    g = ProcessGroup(s)
    recipients = [str(810000 + i) for i in range(100)]
    sandbox.open_windows(ACCOUNT, recipients[10:])
    started = time.monotonic()
    receiver = Receiver(lambda n: 500 if time.monotonic() - started < FAILING_FOR_S else 200)
    s = s.with_overrides(callback_url=receiver.url)
    deliverer = Deliverer(LaneStore(s, rdb), consumer="e2e", url_for=lambda a: None, backoff_cap_s=2.0)
    stop = threading.Event()
    thread = threading.Thread(target=deliverer.run, args=(stop,))
    try:
        for name in ("w1", "w2"):
            g.start_worker(name, concurrency=8)
        thread.start()
        ob = Outbox(settings=s, client=rdb, publish=_publisher(s))
        # When 1,000 jobs are queued and one worker is killed with SIGKILL while sending
        jobs, text_of = [], {}
        for batch in range(10):
            items = [{"kind": "text", "recipient": r, "text": f"{r}#{batch}"} for r in recipients]
            for item, job in zip(items, ob.send_many(items), strict=True):
                jobs.append(job.id)
                text_of[job.id] = item["text"]
            if batch == 4:
                assert wait_until(lambda: len(sandbox.sends(ACCOUNT)) > 100, 30), g.log_tail("w2")
                g.kill("w2")
                g.start_worker("w2", concurrency=8)
        assert wait_until(lambda: all(ob.status(j).state in ("sent", "failed") for j in jobs), 60, 0.5), (
            g.log_tail("w1")
        )

        def finals() -> dict[str, list[dict]]:
            out: dict[str, list[dict]] = {}
            for e in receiver.events():
                if e["type"] in FINAL:
                    out.setdefault(e["job_id"], []).append(e)
            return out

        assert wait_until(lambda: len(finals()) == len(jobs), 30, 0.2), f"{len(finals())} of {len(jobs)}"
    finally:
        stop.set()
        thread.join(15)
        g.stop_all()
        receiver.close()

    # Then every job's final event arrived, with one id however often it came, validly signed
    got = finals()
    assert set(got) == set(jobs)
    for events in got.values():
        assert len({e["id"] for e in events}) == 1, events
        assert len({e["type"] for e in events}) == 1, events
    for headers, body, _status in receiver.requests:
        assert verify(body, headers[HEADER], SECRET, tolerance_s=300)
    # the receiver refused for its first 10 s, so events were retried and redelivered
    statuses = [st for _, _, st in receiver.requests]
    assert 500 in statuses and 200 in statuses
    refused = {e["id"] for e in receiver.events(ok_only=False)} - {e["id"] for e in receiver.events()}
    assert not refused  # every event refused once was delivered later
    # message ids are those the sandbox answered; failures are the recipients without a window
    mids: dict[str, set[str]] = {}
    for x in sandbox.sends(ACCOUNT):
        mids.setdefault(x["body"]["message"]["text"], set()).add(x["message_id"])
    sent = {j: e[0] for j, e in got.items() if e[0]["type"] == "job.sent"}
    failed = {j for j, e in got.items() if e[0]["type"] == "job.failed"}
    assert len(failed) == 100 and all(text_of[j].split("#")[0] in recipients[:10] for j in failed)
    assert len(sent) == 900
    for job_id, e in sent.items():
        assert e["message_id"] in mids[text_of[job_id]], job_id
        assert e["message_id"] == ob.status(job_id).message_id
    print(f"requests={len(receiver.requests)} refused={statuses.count(500)} events={len(receiver.events())}")
