"""The operator's dashboard over HTTP (Flask's test client, real Redis, the Graph sandbox for sends):
sign-in, sessions, CSRF, roles, tenant scoping, search from the index, bulk dead-letter actions with
their audit entries, account controls.  The same flows in a real browser: test_dashboard_browser.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import ACCOUNT, ACCOUNT2, TOKEN

from dmworker.audit import AuditLog
from dmworker.crypto import new_key
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.web import create_app
from dmworker.worker import LaneWorker

ADMIN = "admin-token-0123456789abcdef"
PROD_A = "producer-a-token-0123456789ab"
VIEW_A = "viewer-a-token-0123456789abcd"
ENTRIES = (ADMIN, f"{PROD_A}:producer:{ACCOUNT}", f"{VIEW_A}:viewer:{ACCOUNT}")


@pytest.fixture
def dsettings(settings):
    return settings.with_overrides(api_tokens=ENTRIES, window_policy="trust", secret_keys=(new_key(),))


@pytest.fixture
def app(dsettings, rdb):
    return create_app(dsettings, redis_client=rdb, publish=lambda a, r: None)


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def sign_in(app: Any, token: str) -> Any:
    client = app.test_client()
    page = client.get("/ui/login")
    resp = client.post("/ui/login", data={"token": token, "csrf": _csrf(page.get_data(as_text=True))})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return client


def _post(client: Any, path: str, page: str, **data: Any) -> Any:
    html = client.get(page).get_data(as_text=True)
    return client.post(path, data={"csrf": _csrf(html), **data})


def send_next(store: LaneStore, worker: LaneWorker, account: str, lane: str) -> dict[str, Any]:
    """Take the lane's next job (moving the injected clock past a limiter or hold wait), send it
    through the sandbox for real, record the outcome; returns the outcome."""
    now = store._redis_now_ms()
    for _ in range(50):
        step = store.step(account, lane, "w", acquire=True, token=TOKEN, now_ms=now)
        if step.action == "job":
            break
        assert step.action == "wait", step
        now = max(now + 1, step.until_ms or now + 100)
    assert step.action == "job", step
    outcome = worker.execute(account, lane, step)
    store.step(
        account, lane, "w", acquire=False, prev_id=step.job_id, outcome=outcome, token=TOKEN, now_ms=now
    )
    return outcome


def _dead_letters(dsettings, rdb, sandbox, n: int, account: str = ACCOUNT) -> list[str]:
    """``n`` jobs of ``account`` sent for real and refused by the sandbox (no window): dead letters."""
    sandbox.set_enforce_windows(True)
    ob = Outbox(settings=dsettings, client=rdb, publish=lambda a, r: None)
    store = LaneStore(dsettings, rdb)
    worker = LaneWorker(dsettings, store)
    ids = []
    try:
        for i in range(n):
            lane = f"55500{i:02d}"
            job = ob.send_text(lane, f"refused {i}", account=account)
            send_next(store, worker, account, lane)
            assert ob.status(job.id).dead_lettered
            ids.append(job.id)
    finally:
        worker.clients.close()
    return ids


def test_every_page_needs_a_session_and_a_bad_token_is_refused(app):
    client = app.test_client()
    for path in ("/ui/", "/ui/jobs", "/ui/dlq", "/ui/followups", "/ui/audit", f"/ui/accounts/{ACCOUNT}"):
        resp = client.get(path)
        assert resp.status_code == 302 and "/ui/login" in resp.headers["Location"], path
    page = client.get("/ui/login")
    bad = client.post("/ui/login", data={"token": "nope", "csrf": _csrf(page.get_data(as_text=True))})
    assert bad.status_code == 401 and "not valid" in bad.get_data(as_text=True)
    # the login form itself is protected: no matching double-submit value, no session
    other = app.test_client()
    forged = other.post("/ui/login", data={"token": ADMIN, "csrf": "guess"})
    assert forged.status_code == 403 and not forged.headers.get("Set-Cookie", "").startswith("dmw_ui=")


def test_the_session_cookie_is_httponly_strict_and_holds_no_token(app, rdb, key_prefix):
    client = app.test_client()
    page = client.get("/ui/login")
    resp = client.post("/ui/login", data={"token": ADMIN, "csrf": _csrf(page.get_data(as_text=True))})
    cookie = next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("dmw_ui="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert ADMIN not in cookie
    keys = list(rdb.scan_iter(match=f"{key_prefix}:ui:session:*"))
    assert len(keys) == 1 and ADMIN not in str(rdb.hgetall(keys[0]))
    overview = client.get("/ui/")
    assert overview.status_code == 200
    assert "default-src 'none'" in overview.headers["Content-Security-Policy"]
    assert overview.headers["Cache-Control"] == "no-store"
    # signing out ends the session in Redis
    _post(client, "/ui/logout", "/ui/")
    assert not list(rdb.scan_iter(match=f"{key_prefix}:ui:session:*"))
    assert client.get("/ui/").status_code == 302


def test_a_form_without_the_sessions_csrf_value_is_refused(app, dsettings, rdb):
    client = sign_in(app, ADMIN)
    resp = client.post(f"/ui/accounts/{ACCOUNT}/pause", data={"minutes": "5", "csrf": "forged"})
    assert resp.status_code == 403
    resp = client.post(f"/ui/accounts/{ACCOUNT}/pause", data={"minutes": "5"})
    assert resp.status_code == 403
    # another site posting with the right value (a stolen page) is refused by its Origin
    html = client.get(f"/ui/accounts/{ACCOUNT}").get_data(as_text=True)
    resp = client.post(
        f"/ui/accounts/{ACCOUNT}/pause",
        data={"minutes": "5", "csrf": _csrf(html)},
        headers={"Origin": "https://evil.example"},
    )
    assert resp.status_code == 403
    assert not rdb.exists(LaneStore(dsettings, rdb).acct(ACCOUNT).pause)


def test_find_a_job_by_recipient_state_key_and_message_id(app, dsettings, rdb):
    ob = Outbox(settings=dsettings, client=rdb, publish=lambda a, r: None)
    mine = [ob.send_text("4440001", f"m{i}") for i in range(3)]
    ob.send_text("4440002", "other recipient")
    nudge = ob.send_text("4440001", "later", delay=3600, key="nudge-1")
    client = sign_in(app, ADMIN)
    html = client.get(f"/ui/jobs?account={ACCOUNT}&recipient=4440001").get_data(as_text=True)
    found = re.findall(r'class="job-link">([^<]+)<', html)
    assert found == [nudge.id, *[j.id for j in reversed(mine)]]
    html = client.get(f"/ui/jobs?account={ACCOUNT}&recipient=4440001&state=scheduled").get_data(as_text=True)
    assert re.findall(r'class="job-link">([^<]+)<', html) == [nudge.id]
    html = client.get("/ui/jobs?key=nudge-1").get_data(as_text=True)  # every account of the token
    assert re.findall(r'class="job-link">([^<]+)<', html) == [nudge.id]
    job = client.get(f"/ui/jobs/{nudge.id}").get_data(as_text=True)
    assert "accepted" in job and "scheduled" in job and "later" in job


def test_a_viewer_sees_but_cannot_act_and_a_tenant_sees_only_its_accounts(app, dsettings, rdb):
    ob = Outbox(settings=dsettings, client=rdb, publish=lambda a, r: None)
    a_job = ob.send_text("4450001", "for A", delay=600)
    b_job = ob.send_text("4450002", "for B", delay=600, account=ACCOUNT2)
    viewer = sign_in(app, VIEW_A)
    page = viewer.get(f"/ui/jobs/{a_job.id}").get_data(as_text=True)
    assert 'id="cancel"' not in page and "for A" in page
    html = viewer.get("/ui/").get_data(as_text=True)
    resp = viewer.post(f"/ui/jobs/{a_job.id}/cancel", data={"csrf": _csrf(html)})
    assert resp.status_code == 403
    assert ob.status(a_job.id).state == "scheduled"
    assert viewer.get(f"/ui/jobs/{b_job.id}").status_code == 404  # another tenant's job: not found
    assert viewer.get(f"/ui/jobs?account={ACCOUNT2}").status_code == 403
    assert ACCOUNT2 not in viewer.get("/ui/").get_data(as_text=True)
    producer = sign_in(app, PROD_A)
    assert _post(producer, f"/ui/jobs/{b_job.id}/cancel", "/ui/").status_code == 404
    assert _post(producer, f"/ui/jobs/{a_job.id}/cancel", "/ui/").status_code == 302
    assert ob.status(a_job.id).state == "cancelled" and ob.status(b_job.id).state == "scheduled"


def test_bulk_replay_by_filter_shows_the_count_asks_and_is_audited(app, dsettings, rdb, sandbox, key_prefix):
    ids = _dead_letters(dsettings, rdb, sandbox, 4)
    other = _dead_letters(dsettings, rdb, sandbox, 1, account=ACCOUNT2)
    client = sign_in(app, PROD_A)
    listing = client.get(f"/ui/dlq?account={ACCOUNT}&error=outside_window&since=1h").get_data(as_text=True)
    assert "<b>4</b> dead letter(s) match" in listing
    confirm = client.get(f"/ui/dlq/bulk?action=replay&account={ACCOUNT}&error=outside_window&since=1h")
    text = confirm.get_data(as_text=True)
    assert 'id="n">4<' in text  # the count, before anything is done
    assert all(Outbox(settings=dsettings, client=rdb).status(i).dead_lettered for i in ids)
    done = client.post(
        "/ui/dlq/bulk",
        data={
            "csrf": _csrf(text),
            "action": "replay",
            "account": ACCOUNT,
            "error": "outside_window",
            "since": "1h",
            "expected": "4",
        },
    )
    assert done.status_code == 302 and "4+dead+letters+replayed" in done.headers["Location"]
    ob = Outbox(settings=dsettings, client=rdb)
    assert [ob.status(i).state for i in ids] == ["queued"] * 4
    assert ob.status(other[0]).dead_lettered  # the other account's dead letter is untouched
    entry = AuditLog(key_prefix, rdb).latest(1)[0]
    assert (entry.action, entry.account, entry.count, entry.role) == ("dlq.replay", ACCOUNT, 4, "producer")
    assert entry.filter["error"] == "outside_window" and entry.filter["since"] == "1h"
    assert "dlq.replay" in client.get("/ui/audit").get_data(as_text=True)


def test_bulk_purge_removes_the_matching_dead_letters_and_their_index_entries(app, dsettings, rdb, sandbox):
    ids = _dead_letters(dsettings, rdb, sandbox, 3)
    client = sign_in(app, ADMIN)
    text = client.get(f"/ui/dlq/bulk?action=purge&account={ACCOUNT}").get_data(as_text=True)
    assert 'id="n">3<' in text
    client.post("/ui/dlq/bulk", data={"csrf": _csrf(text), "action": "purge", "account": ACCOUNT})
    k = LaneStore(dsettings, rdb).acct(ACCOUNT)
    assert rdb.zcard(k.dlq) == 0
    assert not [m for m in rdb.zrange(k.index, 0, -1) if any(m.endswith(i) for i in ids)]


def test_pause_resume_and_a_live_rate_change_are_audited(app, dsettings, rdb, key_prefix):
    from dmworker.accounts import Accounts

    Accounts(dsettings, rdb).add("17841400000000077", "IGAA-registry-token-77", rates={"text": "50/s"})
    client = sign_in(app, ADMIN)
    acct = "17841400000000077"
    page = f"/ui/accounts/{acct}"
    _post(client, f"{page}/pause", page, minutes="15", reason="maintenance")
    html = client.get(page).get_data(as_text=True)
    assert 'id="account-state">paused<' in html and "maintenance" in html
    _post(client, f"{page}/resume", page)
    assert 'id="account-state">active<' in client.get(page).get_data(as_text=True)
    _post(client, f"{page}/rate", page, **{"class": "text", "rate": "20/s"})
    assert Accounts(dsettings, rdb).get(acct).to_dict()["limits"]["text"] == "20/s"
    _post(client, f"{page}/token", page, token="IGAA-new-token-value-78")
    actions = [e.action for e in AuditLog(key_prefix, rdb).latest(10)]
    assert actions[:4] == ["account.token", "account.rate", "account.resume", "account.pause"]
    assert "IGAA-new-token-value-78" not in str([e.to_dict() for e in AuditLog(key_prefix, rdb).latest(10)])


def test_a_followup_is_found_by_key_and_cancelled_from_its_list(app, dsettings, rdb, key_prefix):
    ob = Outbox(settings=dsettings, client=rdb, publish=lambda a, r: None)
    keep = ob.send_text("4460001", "tomorrow", delay=86400, key="keep-me")
    drop = ob.send_text("4460002", "in an hour", delay=3600, key="drop-me")
    client = sign_in(app, PROD_A)
    listing = client.get(f"/ui/followups?account={ACCOUNT}").get_data(as_text=True)
    assert re.findall(r'class="job-link">([^<]+)<', listing) == [drop.id, keep.id]  # soonest first
    by_key = f"/ui/followups?account={ACCOUNT}&key=drop-me"
    assert re.findall(r'class="job-link">([^<]+)<', client.get(by_key).get_data(as_text=True)) == [drop.id]
    resp = _post(client, f"/ui/followups/{drop.id}/cancel", by_key, back=by_key)
    assert resp.status_code == 302 and "done=cancelled" in resp.headers["Location"]
    assert ob.status(drop.id).state == "cancelled" and ob.status(keep.id).state == "scheduled"
    assert AuditLog(key_prefix, rdb).latest(1)[0].action == "followup.cancel"


def test_with_more_accounts_than_a_search_covers_the_pages_ask_for_one(app, dsettings, rdb):
    from dmworker import dashboard

    store = LaneStore(dsettings, rdb)
    rdb.sadd(store.keys.accounts, *[f"1799{i:011d}" for i in range(dashboard.MAX_SEARCH_ACCOUNTS + 1)])
    client = sign_in(app, ADMIN)
    for path in ("/ui/dlq", "/ui/followups"):
        resp = client.get(path)
        assert resp.status_code == 200, path
        assert "name one" in resp.get_data(as_text=True)
    assert client.get("/ui/jobs?recipient=123").status_code == 400  # an explicit search says why
    assert client.get(f"/ui/dlq?account={ACCOUNT}").status_code == 200
