"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium (through Debian's
chromedriver; nothing is downloaded) against ``dmworker web`` served over real HTTP, with real Redis
and the Graph sandbox behind it.

Flows: sign in, find a job by recipient and open its timeline, replay one account's dead letters by
filter (count shown, confirmed, audited), pause and resume an account, and a viewer who cannot act.
Each page is saved as a PNG (``DMWORKER_TEST_SCREENSHOT_DIR``, else the test's tmp dir); the key ones are
in docs/dashboard.md.

CI installs ``chromium`` and ``chromium-driver`` (.ci/run); elsewhere the test is skipped when they
are missing, except when ``CI`` is set, where their absence fails it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ACCOUNT, ACCOUNT2, SCREENSHOT_DIR_VAR
from test_dashboard import ADMIN, ENTRIES, VIEW_A, _dead_letters, send_next
from werkzeug.serving import make_server

from dmworker.accounts import Accounts
from dmworker.audit import AuditLog
from dmworker.crypto import new_key
from dmworker.outbox import Outbox
from dmworker.web import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow]
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytestmark.append(
        pytest.mark.skip(reason="needs Debian's chromium and chromium-driver (apt-get install)")
    )

REGISTERED = "17841400000000055"


@pytest.fixture
def bsettings(settings):
    return settings.with_overrides(api_tokens=ENTRIES, window_policy="trust", secret_keys=(new_key(),))


@pytest.fixture
def server(bsettings, rdb) -> Iterator[str]:
    """``dmworker web`` on a free port over real HTTP (a werkzeug server thread)."""
    app = create_app(bsettings, redis_client=rdb, publish=lambda a, r: None)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture
def shots(tmp_path) -> Path:
    where = Path(os.environ.get(SCREENSHOT_DIR_VAR) or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


def _browser(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, "chromium and chromium-driver are not installed"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser(tmp_path) -> Iterator[Any]:
    driver = _browser(tmp_path)
    yield driver
    driver.quit()


def _shot(driver: Any, shots: Path, name: str) -> None:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, max(700, min(int(height) + 120, 2400)))
    assert driver.save_screenshot(str(shots / f"{name}.png"))


def _deliver(settings: Any, rdb: Any, lane: str, n: int) -> None:
    from dmworker.lanes import LaneStore
    from dmworker.worker import LaneWorker

    store = LaneStore(settings, rdb)
    worker = LaneWorker(settings, store)
    try:
        for _ in range(n):
            outcome = send_next(store, worker, ACCOUNT, lane)
            assert outcome["o"] == "sent", outcome
    finally:
        worker.clients.close()


def _replaced(driver: Any, old: Any) -> None:
    """Wait until the page of element ``old`` has been replaced by a loaded new one (an element of
    the old page may answer "stale" or "does not belong to the document", depending on timing)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(driver, 20).until(gone)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _go(driver: Any, by: str, what: str) -> None:
    """Click the element and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By

    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(by, what).click()
    _replaced(driver, old)


def _sign_in(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/ui/")
    assert "/ui/login" in driver.current_url  # every page asks for a session first
    driver.find_element(By.ID, "token").send_keys(token)
    _go(driver, By.ID, "signin")
    assert driver.current_url.rstrip("/").endswith("/ui"), driver.current_url


def test_an_operator_finds_a_job_replays_dead_letters_and_pauses_an_account(
    server, browser, shots, bsettings, rdb, sandbox, key_prefix
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    # Given jobs of two recipients, a follow-up, dead letters on two accounts, a registered account
    ob = Outbox(settings=bsettings, client=rdb, publish=lambda a, r: None)
    sandbox.open_window(ACCOUNT, "7770001")
    shipped = [ob.send_text("7770001", f"order #{i} shipped") for i in range(3)]
    _deliver(bsettings, rdb, "7770001", len(shipped))  # sent for real through the sandbox
    nudge = ob.send_text("7770001", "how was your order?", delay=86400, key="review-7770001")
    ob.send_text("7770002", "someone else")
    dead = _dead_letters(bsettings, rdb, sandbox, 5)
    _dead_letters(bsettings, rdb, sandbox, 2, account=ACCOUNT2)
    Accounts(bsettings, rdb).add(REGISTERED, "IGAA-registered-token-55", rates={"text": "40/s"})

    # When an admin signs in: the overview lists the accounts
    _sign_in(browser, server, ADMIN)
    assert browser.find_element(By.ID, "accounts").text.count("active") >= 2
    assert browser.find_element(By.ID, "sent-hour").text == "3"
    assert "40/s" in browser.find_element(By.ID, "accounts").text  # the registered account's own limit
    _shot(browser, shots, "overview")

    # ... finds the follow-up by recipient and opens its timeline
    _go(browser, By.LINK_TEXT, "Jobs")
    browser.find_element(By.NAME, "account").send_keys(ACCOUNT)
    browser.find_element(By.NAME, "recipient").send_keys("7770001")
    _go(browser, By.ID, "search")
    links = [a.text for a in browser.find_elements(By.CLASS_NAME, "job-link")]
    assert links[0] == nudge.id and len(links) == 4, links
    assert "4 job(s) match" in browser.find_element(By.ID, "total").text
    _shot(browser, shots, "jobs-search")
    _go(browser, By.LINK_TEXT, nudge.id)
    timeline = browser.find_element(By.ID, "timeline").text
    assert "accepted" in timeline and "scheduled" in timeline
    assert "how was your order?" in browser.find_element(By.ID, "payload").text
    _shot(browser, shots, "job")

    # ... filters the dead letters of one account by error and replays them all
    browser.get(f"{server}/ui/dlq")
    browser.find_element(By.NAME, "account").send_keys(ACCOUNT)
    browser.find_element(By.NAME, "error").send_keys("outside_window")
    browser.find_element(By.NAME, "since").send_keys("1h")
    _go(browser, By.ID, "filter")
    assert browser.find_element(By.ID, "count").text.startswith("5 dead letter(s)")
    _shot(browser, shots, "dlq")
    _go(browser, By.ID, "bulk-replay")
    assert browser.find_element(By.ID, "n").text == "5"  # the count, before anything is done
    assert all(ob.status(j).dead_lettered for j in dead)
    _shot(browser, shots, "dlq-confirm")
    _go(browser, By.ID, "confirm")
    assert "5 dead letters replayed" in browser.find_element(By.ID, "done").text
    assert [ob.status(j).state for j in dead] == ["queued"] * 5
    entry = AuditLog(key_prefix, rdb).latest(1)[0]
    assert (entry.action, entry.account, entry.count) == ("dlq.replay", ACCOUNT, 5)
    _go(browser, By.LINK_TEXT, "Audit")
    assert "dlq.replay" in browser.find_element(By.ID, "audit").text
    _shot(browser, shots, "audit")

    # ... pauses the registered account for 30 minutes, then resumes it, then changes its rate
    browser.get(f"{server}/ui/accounts/{REGISTERED}")
    browser.find_element(By.ID, "minutes").clear()
    browser.find_element(By.ID, "minutes").send_keys("30")
    browser.find_element(By.NAME, "reason").send_keys("maintenance")
    _go(browser, By.ID, "pause")
    assert browser.find_element(By.ID, "account-state").text == "paused"
    assert "maintenance" in browser.find_element(By.ID, "paused").text
    _shot(browser, shots, "account-paused")
    _go(browser, By.ID, "resume")
    assert browser.find_element(By.ID, "account-state").text == "active"
    Select(browser.find_element(By.NAME, "class")).select_by_visible_text("text")
    browser.find_element(By.ID, "rate").send_keys("25/s")
    _go(browser, By.ID, "set-rate")
    assert "text rate set to 25/s" in browser.find_element(By.ID, "done").text
    actions = [e.action for e in AuditLog(key_prefix, rdb).latest(3)]
    assert actions == ["account.rate", "account.resume", "account.pause"]

    # ... and the follow-ups page lists the scheduled one with a cancel button
    browser.get(f"{server}/ui/followups?account={ACCOUNT}")
    assert nudge.id in browser.find_element(By.ID, "followups").text
    _shot(browser, shots, "followups")


def test_a_viewer_sees_but_has_no_controls_and_a_forged_action_is_refused(
    server, browser, shots, bsettings, rdb, sandbox
):
    from selenium.webdriver.common.by import By

    ob = Outbox(settings=bsettings, client=rdb, publish=lambda a, r: None)
    job = ob.send_text("7780001", "see me", delay=3600)
    _dead_letters(bsettings, rdb, sandbox, 1)
    _sign_in(browser, server, VIEW_A)
    assert "viewer" in browser.find_element(By.ID, "who").text
    assert ACCOUNT2 not in browser.find_element(By.ID, "accounts").text  # only its tenant's account
    browser.get(f"{server}/ui/jobs/{job.id}")
    assert browser.find_elements(By.ID, "cancel") == []
    browser.get(f"{server}/ui/dlq?account={ACCOUNT}")
    assert browser.find_elements(By.ID, "bulk-replay") == []
    browser.get(f"{server}/ui/accounts/{ACCOUNT}")
    assert browser.find_elements(By.ID, "pause") == []
    assert "read-only" in browser.find_element(By.ID, "read-only").text
    _shot(browser, shots, "viewer-account")
    # a hand-made form posted from the viewer's own session is refused by role
    old = browser.find_element(By.TAG_NAME, "html")
    browser.execute_script(
        """const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
        const c = document.createElement('input'); c.name = 'csrf';
        c.value = document.querySelector('input[name=csrf]').value; f.appendChild(c);
        document.body.appendChild(f); f.submit();""",
        f"/ui/jobs/{job.id}/cancel",
    )
    _replaced(browser, old)
    assert "can look but not act" in browser.find_element(By.ID, "message").text
    assert ob.status(job.id).state == "scheduled"
    # another tenant's account is out of sight
    browser.get(f"{server}/ui/jobs?account={ACCOUNT2}")
    assert "does not cover" in browser.find_element(By.ID, "message").text
