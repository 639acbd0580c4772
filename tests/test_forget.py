"""Forgetting a person (Meta data-deletion requests) on a real Redis, with sends through the
sandbox: ``Accounts.forget``, ``dmworker forget`` (a real process) and ``DELETE /v1/people/<igsid>``
with the token scopes; afterwards no key, field, member or value under the test prefix holds the
person's IGSID, their comment ids or their texts, and another person's data is untouched."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from conftest import ACCOUNT, ACCOUNT2, TOKEN

from dmworker.accounts import Accounts
from dmworker.errors import JobNotFoundError
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.settings import Settings
from dmworker.testing import settings_to_env
from dmworker.web import create_app
from dmworker.worker import LaneWorker

PERSON, OTHER = "90909090901", "80808080802"
COMMENT, OTHER_COMMENT = "17990000000000011", "17990000000000022"
TEXTS = (
    "dead letter for the person",
    "sent to the person",
    "private reply to the person",
    "queued for the person",
    "follow-up for the person",
    "sequence step for the person",
)
OTHER_TEXTS = ("sent to the other one", "queued for the other one", "reply to the other one")
APP_SECRET = "forget-app-secret-0123456789"
ADMIN = "forget-admin-token-0123456789"
PROD_A = "forget-producer-a-token-012345"
PROD_B = "forget-producer-b-token-012345"
VIEW_A = "forget-viewer-a-token-01234567"


@pytest.fixture
def fsettings(settings: Settings) -> Settings:
    return settings.with_overrides(
        window_policy="trust",
        app_secret=APP_SECRET,
        api_tokens=(
            ADMIN,
            f"{PROD_A}:producer:{ACCOUNT}",
            f"{PROD_B}:producer:{ACCOUNT2}",
            f"{VIEW_A}:viewer:{ACCOUNT}",
        ),
    )


@pytest.fixture
def web(fsettings, rdb):
    return create_app(fsettings, redis_client=rdb, publish=lambda a, r: None).test_client()


def _webhook(web: Any, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    resp = web.post(
        "/webhooks/instagram",
        data=raw,
        headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)


def _user_writes(web: Any, user: str, mid: str) -> None:
    now = int(time.time() * 1000)
    _webhook(
        web,
        {
            "object": "instagram",
            "entry": [
                {
                    "id": ACCOUNT,
                    "time": now,
                    "messaging": [
                        {
                            "sender": {"id": user},
                            "recipient": {"id": ACCOUNT},
                            "timestamp": now,
                            "message": {"mid": mid, "text": "hello"},
                        }
                    ],
                }
            ],
        },
    )


def _user_comments(web: Any, user: str, comment_id: str) -> None:
    now = int(time.time() * 1000)
    _webhook(
        web,
        {
            "object": "instagram",
            "entry": [
                {
                    "id": ACCOUNT,
                    "time": now,
                    "changes": [
                        {
                            "field": "comments",
                            "value": {
                                "id": comment_id,
                                "from": {"id": user, "username": "u"},
                                "text": "nice",
                                "timestamp": now // 1000,
                            },
                        }
                    ],
                }
            ],
        },
    )


def _run(settings: Settings, rdb, lane: str) -> None:
    worker = LaneWorker(settings, LaneStore(settings, rdb))
    try:
        worker.run_lane(ACCOUNT, lane)
    finally:
        worker.clients.close()


def given_two_people(fsettings: Settings, rdb, sandbox: Any, web: Any) -> dict[str, str]:
    """The person: a window, a comment, a dead letter, a sent text, a sent private reply, a queued
    text, a scheduled cancel-on-reply follow-up, a queued sequence. The other one: a window, a
    comment, a sent text, a queued text, a queued private reply. Returns the person's job ids."""
    ob = Outbox(settings=fsettings, client=rdb, publish=lambda a, r: None)
    _user_writes(web, PERSON, "m-forget-1")
    _user_writes(web, OTHER, "m-forget-2")
    _user_comments(web, PERSON, COMMENT)
    _user_comments(web, OTHER, OTHER_COMMENT)
    sandbox.add_comment(ACCOUNT, COMMENT, PERSON)
    sandbox.add_comment(ACCOUNT, OTHER_COMMENT, OTHER)
    jobs = {"dead": ob.send_text(PERSON, TEXTS[0]).id}  # the sandbox window is closed: refused
    _run(fsettings, rdb, PERSON)
    sandbox.open_windows(ACCOUNT, [PERSON, OTHER])
    jobs["sent"] = ob.send_text(PERSON, TEXTS[1]).id
    ob.send_text(OTHER, OTHER_TEXTS[0])
    _run(fsettings, rdb, PERSON)
    _run(fsettings, rdb, OTHER)
    jobs["reply"] = ob.send_private_reply(COMMENT, TEXTS[2]).id
    _run(fsettings, rdb, f"c:{COMMENT}")
    jobs["queued"] = ob.send_text(PERSON, TEXTS[3]).id
    jobs["later"] = ob.send_text(PERSON, TEXTS[4], delay=3600, key="nudge", cancel_on_reply=True).id
    jobs["seq"] = ob.sequence(PERSON).typing(seconds=1).text(TEXTS[5]).enqueue().id
    ob.send_text(OTHER, OTHER_TEXTS[1])
    ob.send_private_reply(OTHER_COMMENT, OTHER_TEXTS[2])
    states = {name: ob.status(i).state for name, i in jobs.items()}
    assert states == {
        "dead": "failed",
        "sent": "sent",
        "reply": "sent",
        "queued": "queued",
        "later": "scheduled",
        "seq": "queued",
    }, states
    assert ob.status(jobs["dead"]).dead_lettered
    return jobs


def stored_text(rdb, prefix: str) -> dict[str, str]:
    """Every key under ``prefix`` -> its name, fields, members and values as one string."""
    out = {}
    for key in rdb.scan_iter(match=f"{prefix}:*", count=1000):
        kind = rdb.type(key)
        if kind == "string":
            parts = [rdb.get(key) or ""]
        elif kind == "hash":
            parts = [f"{f}={v}" for f, v in rdb.hgetall(key).items()]
        elif kind == "list":
            parts = rdb.lrange(key, 0, -1)
        elif kind == "set":
            parts = sorted(rdb.smembers(key))
        elif kind == "zset":
            parts = [f"{m}={s}" for m, s in rdb.zrange(key, 0, -1, withscores=True)]
        else:
            parts = [f"<{kind}>"]
        out[key] = key + " " + " ".join(parts)
    return out


def leftovers(rdb, prefix: str, needles: tuple[str, ...]) -> list[str]:
    return [f"{n!r} in {key}" for key, text in stored_text(rdb, prefix).items() for n in needles if n in text]


PERSON_NEEDLES = (PERSON, COMMENT, *TEXTS)
_SCHEDULING = (":adm", ":held", ":ready", ":readyh", ":readyl")


def _data(found: list[str]) -> list[str]:
    """``found`` without the lane-scheduling sets (where a lane is, for dispatching: not data),
    sorted (a SCAN's order changes as keys come and go)."""
    return sorted(f for f in found if not f.endswith(_SCHEDULING))


def test_forget_removes_everything_of_the_person_and_nothing_of_another(
    fsettings, rdb, sandbox, web, key_prefix, caplog
):
    # Given two people with windows, comments, and jobs in every state
    jobs = given_two_people(fsettings, rdb, sandbox, web)
    assert leftovers(rdb, key_prefix, PERSON_NEEDLES)  # the scan sees them (the check can fail)
    before_other = leftovers(rdb, key_prefix, (OTHER, OTHER_COMMENT, *OTHER_TEXTS))
    # When the person is forgotten on the account
    accounts = Accounts(fsettings, rdb)
    with caplog.at_level(logging.DEBUG, logger="dmworker"):
        report = accounts.forget(ACCOUNT, PERSON)
    # Then the report counts what went: 3 live jobs cancelled first (the sequence is 2 jobs: 4
    # ended), 7 jobs removed, 1 dead letter, 1 lane (theirs: the private reply's was emptied when
    # it was sent), 1 window, 1 comment, 7 events (3 ended before, 4 cancelled now), nothing in flight
    assert report.to_dict() == {
        "account": ACCOUNT,
        "window": 1,
        "comments": 1,
        "jobs_cancelled": 4,
        "jobs_removed": 7,
        "dead_letters": 1,
        "lanes": 1,
        "events": 7,
        "in_flight": 0,
        "complete": True,
    }
    # And nothing under the prefix holds their IGSID, their comment id or any of their texts
    assert leftovers(rdb, key_prefix, PERSON_NEEDLES) == []
    ob = Outbox(settings=fsettings, client=rdb, publish=lambda a, r: None)
    for job_id in jobs.values():
        with pytest.raises(JobNotFoundError):
            ob.status(job_id)
    # And the follow-up key was released, the other person's data is all there
    assert ob.send_text(PERSON, "a new start", delay=60, key="nudge").id
    # (the other person's lanes may move between the scheduling sets meanwhile: their data may not)
    assert _data(leftovers(rdb, key_prefix, (OTHER, OTHER_COMMENT, *OTHER_TEXTS))) == _data(before_other)
    assert ob.window(OTHER).open
    # And the logs never show the IGSID
    assert PERSON not in caplog.text and "forgot person" in caplog.text
    # And forgetting again removes only what came since (the new follow-up)
    again = accounts.forget(ACCOUNT, PERSON)
    assert (again.jobs_cancelled, again.jobs_removed, again.window, again.lanes) == (1, 1, 0, 0)
    assert leftovers(rdb, key_prefix, (*PERSON_NEEDLES, "a new start")) == []


def test_a_send_in_flight_is_reported_and_forgotten_by_a_second_call(fsettings, rdb, sandbox, key_prefix):
    # Given a job of the person handed to a worker (sending) and one queued behind it
    ob = Outbox(settings=fsettings, client=rdb, publish=lambda a, r: None)
    first = ob.send_text(PERSON, TEXTS[1])
    ob.send_text(PERSON, TEXTS[3])
    store = LaneStore(fsettings, rdb)
    step = store.step(ACCOUNT, PERSON, "w1", acquire=True, token=TOKEN)
    assert step.action == "job" and step.job_id == first.id
    # When the person is forgotten while it is being sent
    accounts = Accounts(fsettings, rdb)
    report = accounts.forget(ACCOUNT, PERSON)
    # Then it is reported in flight (the one behind it is cancelled and removed), its lane kept
    assert (report.in_flight, report.complete, report.jobs_cancelled, report.jobs_removed) == (1, False, 1, 1)
    assert ob.status(first.id).state == "sending"
    assert leftovers(rdb, key_prefix, (TEXTS[3],)) == []
    # When its worker records the outcome, and forget runs again
    store.step(
        ACCOUNT,
        PERSON,
        "w1",
        acquire=False,
        prev_id=first.id,
        outcome={"o": "sent", "mid": "m-x"},
        token=TOKEN,
    )
    again = accounts.forget(ACCOUNT, PERSON)
    # Then nothing of the person is left
    assert again.complete and again.jobs_removed == 1
    assert leftovers(rdb, key_prefix, PERSON_NEEDLES) == []


def test_dmworker_forget_as_a_process(fsettings, rdb, sandbox, web, key_prefix, tmp_path):
    # Given the two people
    given_two_people(fsettings, rdb, sandbox, web)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env.update(
        settings_to_env(fsettings, str(tmp_path / "accounts.json")), DMWORKER_REDIS_URL=fsettings.redis_url
    )
    # When `dmworker forget` runs without --account (every account), then with one
    out = subprocess.run(
        [sys.executable, "-m", "dmworker.cli", "forget", PERSON, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then both accounts were searched, the person's data on the first removed, exit code 0
    assert out.returncode == 0, out.stderr
    reports = {r["account"]: r for r in json.loads(out.stdout)}
    assert set(reports) == {ACCOUNT, ACCOUNT2}
    assert reports[ACCOUNT]["jobs_removed"] == 7 and reports[ACCOUNT2]["jobs_removed"] == 0
    assert PERSON not in out.stderr
    assert leftovers(rdb, key_prefix, PERSON_NEEDLES) == []
    again = subprocess.run(
        [sys.executable, "-m", "dmworker.cli", "forget", PERSON, "--account", ACCOUNT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0 and "nothing stored about this person" in again.stdout, again.stderr


def _delete(web: Any, token: str, query: str = "", igsid: str = PERSON) -> Any:
    return web.delete(f"/v1/people/{igsid}{query}", headers={"Authorization": f"Bearer {token}"})


def test_http_forget_and_who_may_call_it(fsettings, rdb, sandbox, web, key_prefix):
    # Given the two people on account A
    given_two_people(fsettings, rdb, sandbox, web)
    # Then a producer of B, a viewer of A, and a producer of A without an account are refused
    # (403: the request names an account outside the scope, or needs a wider scope), and nothing
    # was removed
    assert _delete(web, PROD_B, f"?account={ACCOUNT}").status_code == 403
    assert _delete(web, VIEW_A, f"?account={ACCOUNT}").status_code == 403
    assert _delete(web, PROD_A).status_code == 403
    assert _delete(web, PROD_A, f"?account={ACCOUNT}", igsid="not-an-igsid").status_code == 422
    assert len(leftovers(rdb, key_prefix, PERSON_NEEDLES)) > 5
    # When the producer of A asks for it on A
    resp = _delete(web, PROD_A, f"?account={ACCOUNT}")
    # Then the person is forgotten there, and the answer says what went
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.json
    assert body["complete"] is True and body["in_flight"] == 0
    assert [(r["account"], r["jobs_removed"], r["dead_letters"]) for r in body["accounts"]] == [
        (ACCOUNT, 7, 1)
    ]
    assert leftovers(rdb, key_prefix, PERSON_NEEDLES) == []
    # And an admin may forget on every account at once
    resp = _delete(web, ADMIN)
    assert resp.status_code == 200 and {r["account"] for r in resp.json["accounts"]} >= {ACCOUNT, ACCOUNT2}
    assert leftovers(rdb, key_prefix, (OTHER, OTHER_COMMENT, *OTHER_TEXTS))
