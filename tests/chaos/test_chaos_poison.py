"""Chaos 5: poison jobs in the middle of a recipient's lane.

Looking for a job that makes the send path raise a non-Graph exception (the ``except Exception``
"poison" branch of ``dmworker.service.send``) found none: ``load_job`` refuses every malformed
stored job with a ValidationError, the body builders raise ValueError (dead-lettered as
``invalid_request``), and the client maps every server answer — non-JSON 200, JSON array, bad
gzip, header line too long, 150 headers, bad status line, broken chunking, a usage header of
1e300 — to a GraphError (see docs/reliability.md).  So the two real poison paths are used:

1. a stored job ``load_job`` refuses (written by a newer producer: schema ``v: 2``), put into the
   lane with ``LaneStore.enqueue`` and a hand-made JSON: dead-lettered at once, ``invalid_job``;
2. a valid job whose every send gets HTTP 200 with an HTML body (a test-only proxy in front of the
   sandbox): the client raises OutcomeUnknownError inside the send path; retried up to
   DMWORKER_MAX_ATTEMPTS, then dead-lettered with ``outcome_unknown``.

Both must leave the recipient's later jobs delivered, in order.
"""

from __future__ import annotations

import json
import time

import pytest
from chaos_helpers import GraphProxy, account_run, all_final, make_publisher, pending_summary
from conftest import ACCOUNT

from dmworker.admin import DeadLetters
from dmworker.jobs import new_job_id
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.testing import wait_until


@pytest.mark.chaos
def test_poison_jobs_are_dead_lettered_and_the_lane_goes_on(settings, sandbox, rdb, procs, chaos):
    # Given a worker whose Graph API goes through a proxy that answers "POISON" sends with HTML
    proxy = GraphProxy(sandbox.url)
    try:
        s = settings.with_overrides(
            graph_url=proxy.url + "/v25.0", max_attempts=4, backoff_base_ms=50, backoff_cap_ms=200
        )
        g = procs(s)
        g.start_worker("w1", concurrency=4)
        publish = make_publisher(s)
        ob = Outbox(settings=s, client=rdb, publish=publish)
        store = LaneStore(s, rdb)
        recipients = [str(750000 + i) for i in range(chaos.n(3))]
        sandbox.open_windows(ACCOUNT, recipients)
        expected: dict[str, list[str]] = {r: [] for r in recipients}
        bad_schema, bad_answer = {}, {}
        # When each recipient gets: a job, a stored job from a newer producer (v 2), a job, a job
        # whose every send is answered with HTML, two more jobs
        for r in recipients:
            for n in range(6):
                tok = f"{r}#{n}"
                expected[r].append(tok)
                if n == 1:
                    jid = new_job_id(ACCOUNT)[0]
                    raw = json.dumps(
                        {
                            "v": 2,
                            "id": jid,
                            "account": ACCOUNT,
                            "recipient": r,
                            "kind": "text",
                            "args": {"text": tok},
                            "created_ms": int(time.time() * 1000),
                            "due_ms": None,
                            "key": None,
                            "cancel_on_reply": False,
                            "idem": None,
                            "seq": None,
                            "priority": "high",
                        }
                    )
                    res = store.enqueue(ACCOUNT, r, [(jid, raw, "text")])
                    if res.publish:
                        publish(ACCOUNT, r)
                    bad_schema[tok] = jid
                elif n == 3:
                    bad_answer[tok] = ob.send_text(r, f"POISON {tok}").id
                else:
                    ob.send_text(r, tok)
        ids = [i for r in recipients for i in rdb.lrange(store.acct(ACCOUNT).lane(r), 0, -1)]
        done = wait_until(
            lambda: (
                all_final(rdb, s, ACCOUNT, list(bad_schema.values()) + list(bad_answer.values()))
                and len(sandbox.sends(ACCOUNT)) >= 4 * len(recipients)
            ),
            60,
            0.2,
        )
        assert done, pending_summary(rdb, s, ACCOUNT, ids) + "\n" + g.log_tail("w1", 20)
        time.sleep(0.5)
        # Then the refused stored job is dead-lettered at once, reason invalid_job ...
        for jid in bad_schema.values():
            st = ob.status(jid)
            assert st.state == "failed" and st.dead_lettered and st.attempts == 1, st
            assert st.last_error is not None and st.last_error.kind == "invalid_job", st.last_error
            assert "unsupported schema version 2" in st.last_error.message, st.last_error.message
        # ... the job the client cannot get an answer for is tried max_attempts times, then dead-lettered
        for jid in bad_answer.values():
            st = ob.status(jid)
            assert st.state == "failed" and st.dead_lettered and st.attempts == s.max_attempts, st
            assert st.last_error is not None and st.last_error.kind == "outcome_unknown", st.last_error
            assert f"gave up after {s.max_attempts} attempts" in st.last_error.message, st.last_error.message
        assert proxy.poisoned == s.max_attempts * len(bad_answer)
        listed = {d.id: d for d in DeadLetters(store).list(ACCOUNT, 1000)}
        assert set(bad_schema.values()) | set(bad_answer.values()) == set(listed)
        # ... and every other job of these recipients was delivered once, in order
        sends = sandbox.sends(ACCOUNT)
        dead = set(bad_schema) | {t for t in bad_answer}
        rep = account_run(
            "poison",
            expected,
            [x for x in sends if not x["body"]["message"]["text"].startswith("POISON")],
            dead,
            set(),
            poison_jobs=len(dead),
            attempts_of_bad_answer=s.max_attempts,
            proxy_poisoned=proxy.poisoned,
        )
        rep.check(dead_expected=len(dead))
        for r in recipients:
            got = [x["body"]["message"]["text"] for x in sends if x["recipient"] == r]
            assert got == [f"{r}#{n}" for n in (0, 2, 4, 5)], got
    finally:
        proxy.close()
