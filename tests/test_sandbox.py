"""The Graph API sandbox over real HTTP: auth, validation, windows, throttles, faults, records, paging."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dmworker.sandbox import SandboxControl, SandboxError, SandboxProcess, SandboxServer

TOKEN, ACCOUNT = "IGAAsandbox-test-token-secret-00001", "17841400000000101"
TOKEN2, ACCOUNT2 = "IGAAsandbox-test-token-secret-00002", "17841400000000102"
USER = "900000000000101"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@pytest.fixture(scope="module")
def srv() -> Iterator[SandboxServer]:
    server = SandboxServer(tokens={TOKEN: ACCOUNT, TOKEN2: ACCOUNT2}).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def ctl(srv: SandboxServer) -> SandboxControl:
    srv.control.reset()
    return srv.control


@pytest.fixture
def post(srv: SandboxServer, http: requests.Session, ctl: SandboxControl) -> Any:
    def send(
        body: dict[str, Any], token: str | None = TOKEN, path: str = "/v25.0/me/messages", **kw: Any
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http.post(srv.url + path, json=body, headers=headers, timeout=kw.pop("timeout", 5), **kw)

    return send


@pytest.fixture
def get(srv: SandboxServer, http: requests.Session, ctl: SandboxControl) -> Any:
    def fetch(path_or_url: str, token: str = TOKEN, **params: Any) -> requests.Response:
        url = path_or_url if path_or_url.startswith("http") else srv.url + path_or_url
        return http.get(url, params=params, headers={"Authorization": f"Bearer {token}"}, timeout=5)

    return fetch


def text(recipient: str = USER, t: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"recipient": {"id": recipient}, "message": {"text": t}, **extra}


def error(resp: requests.Response) -> dict[str, Any]:
    err = resp.json()["error"]
    assert err["fbtrace_id"].startswith("A") and isinstance(err["message"], str) and err["type"]
    return dict(err)


# ---- auth ---------------------------------------------------------------------------------------
def test_auth_bearer_query_and_path_variants(
    ctl: SandboxControl, post: Any, srv: SandboxServer, http: requests.Session
) -> None:
    ctl.open_window(ACCOUNT, USER)
    for path in ("/v25.0/me/messages", "/v22.0/me/messages", "/me/messages", f"/v25.0/{ACCOUNT}/messages"):
        resp = post(text(), path=path)
        assert resp.status_code == 200, resp.text
        assert resp.json()["recipient_id"] == USER and resp.json()["message_id"].startswith("aWdf")
    resp = http.post(f"{srv.url}/v25.0/me/messages", params={"access_token": TOKEN}, json=text(), timeout=5)
    assert resp.status_code == 200
    other = post(text(), path=f"/v25.0/{ACCOUNT2}/messages")
    assert other.status_code == 400 and error(other)["code"] == 100
    assert len({s["message_id"] for s in ctl.sends()}) == 5
    assert TOKEN not in json.dumps(ctl.requests())  # tokens are never recorded


def test_unknown_revoked_and_missing_token_are_190(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    bad = post(text(), token="IGAAnot-a-known-token")
    assert bad.status_code == 400
    assert error(bad) | {"fbtrace_id": ""} == {
        "message": "Invalid OAuth access token - Cannot parse access token",
        "type": "OAuthException",
        "code": 190,
        "is_transient": False,
        "fbtrace_id": "",
    }
    assert error(post(text(), token=None))["code"] == 190
    ctl.revoke_token(TOKEN)
    revoked = error(post(text()))
    assert (revoked["code"], revoked["error_subcode"]) == (190, 460)
    ctl.add_token("IGAAnew-token-for-account-1", ACCOUNT)
    assert post(text(), token="IGAAnew-token-for-account-1").status_code == 200
    assert [r["error_code"] for r in ctl.requests()] == [190, 190, 190, None]
    assert ctl.sends()[0]["account"] == ACCOUNT


# ---- validation ---------------------------------------------------------------------------------
R = {"recipient": {"id": USER}}
IMG = {"type": "image", "payload": {"url": "https://example.com/a.png"}}
PB = {"type": "postback", "title": "Go", "payload": "p"}


def qr(title: str = "t", **extra: Any) -> dict[str, Any]:
    return {"content_type": "text", "title": title, "payload": "p", **extra}


def tpl(**payload: Any) -> dict[str, Any]:
    return {**R, "message": {"attachment": {"type": "template", "payload": payload}}}


GOOD = [
    ("text", {**R, "message": {"text": "é" * 500}}),
    ("text", {**R, "message": {"text": "hi"}, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}),
    ("text", {**R, "message": {"text": "hi"}, "reply_to": {"mid": "aWdfX"}}),
    ("media", {**R, "message": {"attachment": IMG}}),
    ("media", {**R, "message": {"attachment": {"type": "video", "payload": {"attachment_id": "123"}}}}),
    ("media", {**R, "message": {"attachments": [IMG] * 10}}),
    ("like_heart", {**R, "message": {"attachment": {"type": "like_heart"}}}),
    ("media_share", {**R, "message": {"attachment": {"type": "MEDIA_SHARE", "payload": {"id": "1790"}}}}),
    (
        "quick_replies",
        {
            **R,
            "messaging_type": "RESPONSE",
            "message": {
                "text": "pick",
                "quick_replies": [qr("x" * 20), {"content_type": "user_phone_number"}],
            },
        },
    ),
    (
        "generic_template",
        tpl(
            template_type="generic",
            elements=[
                {
                    "title": "t" * 80,
                    "subtitle": "s",
                    "image_url": "https://e.x/i",
                    "default_action": {"type": "web_url", "url": "https://e.x"},
                    "buttons": [PB],
                }
            ],
        ),
    ),
    (
        "button_template",
        tpl(
            template_type="button",
            text="b" * 640,
            buttons=[{"type": "web_url", "url": "https://e.x", "title": "Open"}],
        ),
    ),
    ("react", {**R, "sender_action": "react", "payload": {"message_id": "aWdfM", "reaction": "love"}}),
    ("unreact", {**R, "sender_action": "unreact", "payload": {"message_id": "aWdfM"}}),
    ("typing_on", {**R, "sender_action": "typing_on"}),
    ("typing_off", {**R, "sender_action": "typing_off"}),
    ("mark_seen", {**R, "sender_action": "mark_seen"}),
]
BAD = [
    {"message": {"text": "no recipient"}},
    {**R},
    {**R, "message": {"text": "x"}, "sender_action": "typing_on"},
    {**R, "message": {"text": ""}},
    {**R, "message": {"text": "é" * 501}},  # 1002 UTF-8 bytes
    {**R, "message": {"text": "x", "attachment": IMG}},
    {**R, "message": {"text": "x", "bogus": 1}},
    {**R, "message": {"text": "x"}, "tag": "CONFIRMED_EVENT_UPDATE"},
    {**R, "message": {"attachment": {"type": "image", "payload": {}}}},
    {**R, "message": {"attachment": {"type": "image", "payload": {"url": "not a url"}}}},
    {**R, "message": {"attachment": {"type": "gif", "payload": {"url": "https://e.x/a.gif"}}}},
    {**R, "message": {"attachment": {"type": "MEDIA_SHARE", "payload": {}}}},
    {**R, "message": {"attachments": [IMG] * 11}},
    {**R, "message": {"text": "q", "quick_replies": []}},
    {**R, "message": {"text": "q", "quick_replies": [qr()] * 14}},
    {**R, "message": {"text": "q", "quick_replies": [qr("x" * 21)]}},
    {**R, "message": {"text": "q", "quick_replies": [{"content_type": "text", "title": "no payload"}]}},
    tpl(template_type="generic", elements=[]),
    tpl(template_type="generic", elements=[{"title": "t" * 81, "subtitle": "s"}]),
    tpl(template_type="generic", elements=[{"title": "only a title"}]),
    tpl(template_type="generic", elements=[{"title": "t", "buttons": [PB] * 4}]),
    tpl(template_type="button", text="b" * 641, buttons=[PB]),
    tpl(template_type="button", text="b", buttons=[PB] * 4),
    tpl(template_type="button", text="b", buttons=[{"type": "web_url", "title": "t"}]),
    tpl(template_type="button", text="b", buttons=[{**PB, "title": "x" * 21}]),
    {**R, "sender_action": "react", "payload": {}},
    {**R, "sender_action": "typing_on", "messaging_type": "RESPONSE"},
    {**R, "sender_action": "wave"},
    {"recipient": {"comment_id": "c1"}, "sender_action": "typing_on"},
    {"recipient": {"comment_id": "c1"}, "message": {"attachment": IMG}},
]


def test_good_bodies_are_accepted_with_their_kind(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    for kind, body in GOOD:
        resp = post(body)
        assert resp.status_code == 200, (kind, resp.text)
        assert ("message_id" in resp.json()) == (
            kind not in ("react", "unreact", "typing_on", "typing_off", "mark_seen")
        )
    assert [s["kind"] for s in ctl.sends()] == [kind for kind, _ in GOOD]


@pytest.mark.parametrize("body", BAD, ids=range(len(BAD)))
def test_bad_bodies_are_code_100(ctl: SandboxControl, post: Any, body: dict[str, Any]) -> None:
    ctl.open_window(ACCOUNT, USER)
    resp = post(body)
    assert resp.status_code == 400
    assert error(resp)["code"] == 100 and "(#100)" in error(resp)["message"]
    assert ctl.sends() == []


def test_form_body_with_json_values(ctl: SandboxControl, srv: SandboxServer, http: requests.Session) -> None:
    ctl.open_window(ACCOUNT, USER)
    form = {
        "recipient": json.dumps({"id": USER}),
        "message": json.dumps({"text": "old style"}),
        "access_token": TOKEN,
    }
    resp = http.post(f"{srv.url}/v25.0/me/messages", timeout=5, data=form)
    assert resp.status_code == 200, resp.text
    assert ctl.sends()[0]["body"] == {"recipient": {"id": USER}, "message": {"text": "old style"}}


# ---- windows and private replies ----------------------------------------------------------------
def test_windows_24h_and_human_agent_7d(ctl: SandboxControl, post: Any) -> None:
    human = {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    never = error(post(text("111")))
    assert (never["code"], never["error_subcode"], never["message"]) == (
        10,
        2534022,
        "This message is sent outside of allowed window.",
    )
    now = time.time() * 1000
    ctl.open_window(ACCOUNT, "222", at_ms=now - 23 * HOUR_MS)
    ctl.open_window(ACCOUNT, "333", at_ms=now - 25 * HOUR_MS)
    ctl.open_window(ACCOUNT, "444", at_ms=now - 8 * DAY_MS)
    assert post(text("222")).status_code == 200
    assert post({"recipient": {"id": "222"}, "sender_action": "typing_on"}).status_code == 200
    assert error(post(text("333")))["error_subcode"] == 2534022
    assert error(post({"recipient": {"id": "333"}, "sender_action": "mark_seen"}))["code"] == 10
    assert post(text("333", **human)).status_code == 200
    assert error(post(text("444", **human)))["error_subcode"] == 2534022
    assert error(post(text("222"), token=TOKEN2))["code"] == 10  # windows are per account
    ctl.set_enforce_windows(False)
    assert post(text("111")).status_code == 200
    assert [s["recipient"] for s in ctl.sends()] == ["222", "222", "333", "111"]


def test_private_reply_once_within_7_days(ctl: SandboxControl, post: Any) -> None:
    reply = {"recipient": {"comment_id": "c-1"}, "message": {"text": "thanks!"}}
    unknown = error(post(reply))
    assert (unknown["code"], unknown["error_subcode"]) == (100, 33)
    ctl.add_comment(ACCOUNT, "c-1", from_igsid="555")
    ok = post(reply)
    assert ok.status_code == 200 and ok.json()["recipient_id"] == "555"
    again = error(post(reply))
    assert (again["code"], again["error_subcode"]) == (100, 2534025)
    ctl.add_comment(ACCOUNT, "c-old", from_igsid="556", at_ms=time.time() * 1000 - 8 * DAY_MS)
    old = error(post({"recipient": {"comment_id": "c-old"}, "message": {"text": "late"}}))
    assert (old["code"], old["error_subcode"]) == (10, 2534022)
    sends = ctl.sends()
    assert [(s["recipient"], s["kind"]) for s in sends] == [("comment:c-1", "private_reply")]
    assert error(post(text("555")))["code"] == 10  # a private reply does not open the window


def test_inbound_opens_window_and_returns_webhook(ctl: SandboxControl, post: Any) -> None:
    got = ctl.inbound(ACCOUNT, "777", text="hello there")
    entry = got["webhook"]["entry"][0]
    assert got["webhook"]["object"] == "instagram" and entry["id"] == ACCOUNT
    assert entry["messaging"][0]["message"] == {"mid": got["mid"], "text": "hello there"}
    assert post(text("777")).status_code == 200
    ctl.inbound(ACCOUNT, "778", kind="postback", payload="BUY")
    assert post(text("778")).status_code == 200


# ---- throttles, rate limits, faults, slow mode --------------------------------------------------
def usage(resp: requests.Response, account: str = ACCOUNT) -> tuple[dict[str, Any], dict[str, Any]]:
    app = json.loads(resp.headers["X-App-Usage"])
    biz = json.loads(resp.headers["X-Business-Use-Case-Usage"])[account][0]
    return app, biz


def test_throttle_window_and_retry_after(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    ctl.throttle(ACCOUNT, 0.4)
    resp = post(text())
    err = error(resp)
    assert (resp.status_code, err["code"], err["is_transient"]) == (400, 4, True)
    assert usage(resp)[1]["estimated_time_to_regain_access"] == 0 and "Retry-After" not in resp.headers
    assert error(post(text(), token=TOKEN2))["code"] == 10  # not throttled: the other account's window
    time.sleep(0.45)
    assert post(text()).status_code == 200
    ctl.throttle(ACCOUNT, 30, code=429, retry_after_s=7)
    resp = post(text())
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7" and error(resp)["code"] == 4
    ctl.throttle(ACCOUNT, 150, code=80002)
    resp = post(text())
    assert error(resp)["code"] == 80002 and usage(resp)[1]["estimated_time_to_regain_access"] == 2
    assert usage(resp)[1]["call_count"] == 100
    assert len(ctl.sends()) == 1 and [r["status"] for r in ctl.requests()] == [400, 400, 200, 429, 400]
    with pytest.raises(SandboxError):
        ctl.throttle(ACCOUNT, 1, code=999)


def test_rate_limit_sliding_second_is_code_4(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    ctl.set_rate_limit(ACCOUNT, 5)
    answers = [post(text()) for _ in range(6)]
    assert [r.status_code for r in answers] == [200] * 5 + [400]
    assert error(answers[-1])["code"] == 4
    assert [usage(r)[0]["call_count"] for r in answers[:5]] == [20, 40, 60, 80, 100]
    assert usage(answers[-1])[1]["call_count"] >= 100
    ctl.open_window(ACCOUNT2, USER)
    assert post(text(), token=TOKEN2).status_code == 200  # the other account is not limited
    time.sleep(1.05)
    assert post(text()).status_code == 200
    assert len(ctl.sends(ACCOUNT)) == 6


def test_faults_next_n_and_kinds(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    ctl.set_faults(ACCOUNT, next_n=2)
    first, second, third = post(text()), post(text()), post(text())
    e1, e2 = error(first), error(second)
    assert (first.status_code, e1["code"], e1["is_transient"]) == (500, 1, True)
    assert (second.status_code, e2["code"], e2["is_transient"]) == (400, 2, True)
    assert third.status_code == 200
    ctl.set_faults(ACCOUNT, next_n=2, kinds=["503", "disconnect"])
    html = post(text())
    assert html.status_code == 503 and html.headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.ConnectionError):
        post(text())
    assert post(text()).status_code == 200
    assert len(ctl.sends()) == 2
    assert [(r["status"], r["fault"]) for r in ctl.requests()] == [
        (500, "5xx"),
        (400, "transient"),
        (200, None),
        (503, "503"),
        (0, "disconnect"),
        (200, None),
    ]


def test_random_faults_are_reproducible_with_a_seed(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    runs = []
    for _ in range(2):
        ctl.set_faults(error_rate=0.5, seed=42)
        runs.append([post(text()).status_code for _ in range(20)])
    assert runs[0] == runs[1] and 200 in runs[0] and {500, 400} & set(runs[0])
    ctl.set_faults()  # off
    assert all(post(text()).status_code == 200 for _ in range(5))


def test_slow_mode_records_the_send_the_client_timed_out_on(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    ctl.set_slow(400)
    with pytest.raises(requests.ReadTimeout):
        post(text(t="late"), timeout=0.1)
    assert [s["body"]["message"]["text"] for s in ctl.sends()] == ["late"]
    ctl.set_slow(0)
    ctl.set_faults(ACCOUNT, next_n=1, kinds=["slow"], slow_ms=300)
    started = time.monotonic()
    assert post(text()).status_code == 200 and time.monotonic() - started >= 0.29


def test_latency_is_added(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    ctl.set_latency(100)
    started = time.monotonic()
    post(text())
    assert time.monotonic() - started >= 0.099
    ctl.reset()  # back to the start-up latency (none): far below the 1 s it would take if it stayed
    ctl.set_latency(1000)
    ctl.reset()
    started = time.monotonic()
    post(text())
    assert time.monotonic() - started < 0.9


# ---- records ------------------------------------------------------------------------------------
def test_records_keep_arrival_order_and_filter(ctl: SandboxControl, post: Any) -> None:
    users = ["1001", "1002", "1003"]
    ctl.open_windows(ACCOUNT, users)
    ctl.open_windows(ACCOUNT2, users)
    for i in range(4):
        for u in users:
            post(text(u, f"{u}-{i}"), token=TOKEN if i % 2 == 0 else TOKEN2)
    post(text("9999"))  # rejected: no window
    sends = ctl.sends()
    assert [s["body"]["message"]["text"] for s in sends] == [f"{u}-{i}" for i in range(4) for u in users]
    assert [s["seq"] for s in sends] == sorted(s["seq"] for s in sends)
    assert [s["t_ms"] for s in sends] == sorted(s["t_ms"] for s in sends)
    assert set(sends[0]) >= {"seq", "t_ms", "account", "recipient", "kind", "body", "message_id"}
    assert [s["account"] for s in ctl.sends(ACCOUNT2)] == [ACCOUNT2] * 6
    assert ctl.sends(since=sends[9]["seq"]) == sends[10:]
    reqs = ctl.requests()
    assert len(reqs) == 13 and reqs[-1]["error_code"] == 10 and reqs[-1]["recipient"] == "9999"
    assert reqs[0]["path"] == "/v25.0/me/messages" and reqs[0]["kind"] == "text"
    stats = ctl.stats()
    assert stats["sends"] == 12 and stats["requests"] == 13 and stats["sends_by_kind"] == {"text": 12}


# ---- conversations ------------------------------------------------------------------------------
def test_conversations_paging_follows_next_until_absent(ctl: SandboxControl, get: Any, post: Any) -> None:
    now = time.time() * 1000
    users = [f"20{i:02d}" for i in range(7)]
    for i, u in enumerate(users):
        ctl.open_window(ACCOUNT, u, at_ms=now - (10 - i) * 60_000)
    ctl.open_window(ACCOUNT2, "3000")
    post(text(users[0]))  # now the most recently updated
    expected = [users[0], *reversed(users[1:])]
    page = get(
        "/v25.0/me/conversations", platform="instagram", fields="id,updated_time,participants", limit=3
    ).json()
    seen, pages = [], 0
    while True:
        pages += 1
        seen.extend(page["data"])
        assert set(page["paging"]["cursors"]) == {"before", "after"}
        if "next" not in page["paging"]:
            break
        page = get(page["paging"]["next"]).json()
    assert pages == 3
    assert [c["participants"]["data"][1]["id"] for c in seen] == expected  # newest first
    assert all(c["updated_time"].endswith("+0000") for c in seen)
    times = [c["updated_time"] for c in seen]
    assert times == sorted(times, reverse=True)
    one = get("/v25.0/me/conversations", user_id=users[3], fields="id,participants").json()
    assert len(one["data"]) == 1 and "next" not in one["paging"]
    assert {p["id"] for p in one["data"][0]["participants"]["data"]} == {ACCOUNT, users[3]}
    assert len({c["id"] for c in seen}) == 7
    assert seen[0]["id"] == get("/v25.0/me/conversations", user_id=expected[0]).json()["data"][0]["id"]
    assert error(get("/v25.0/me/conversations", after="not-a-cursor"))["code"] == 100


def test_conversation_messages_and_message(ctl: SandboxControl, get: Any, post: Any) -> None:
    inbound_mid = ctl.open_window(ACCOUNT, USER)
    mids = [post(text(t=f"m{i}")).json()["message_id"] for i in range(3)]
    conv_id = get("/v25.0/me/conversations", user_id=USER).json()["data"][0]["id"]
    conv = get(f"/v25.0/{conv_id}", fields="messages{id,created_time,from,to,message}").json()
    msgs = conv["messages"]["data"]
    assert conv["id"] == conv_id and [m["id"] for m in msgs] == [*reversed(mids), inbound_mid]
    assert [m["message"] for m in msgs] == ["m2", "m1", "m0", "hi"]
    assert msgs[0]["from"]["id"] == ACCOUNT and msgs[0]["to"]["data"][0]["id"] == USER
    assert msgs[-1]["from"]["id"] == USER
    one = get(f"/v25.0/{mids[1]}", fields="id,created_time,from,to,message").json()
    assert one == msgs[1]
    assert get(f"/v25.0/{mids[1]}").json() == {"id": mids[1], "created_time": msgs[1]["created_time"]}
    for missing in ("aWdfbm9uZQ", conv_id):
        err = error(get(f"/v25.0/{missing}", token=TOKEN2))  # another account's objects do not exist
        assert (err["code"], err["error_subcode"]) == (100, 33)
    for i in range(25):
        post(text(t=f"more{i}"))
    page = get(f"/v25.0/{conv_id}", fields="messages{id,message}").json()["messages"]
    assert len(page["data"]) == 20 and page["data"][0]["message"] == "more24" and "next" in page["paging"]
    rest = get(page["paging"]["next"]).json()
    assert [m for m in rest["data"] if "message" in m] == [] and len(rest["data"]) == 9
    assert "next" not in rest["paging"]
    assert error(get(f"/v25.0/{mids[0]}", fields="id,message"))["code"] == 100  # older than the 20 newest


def test_usage_headers_on_success_and_error(ctl: SandboxControl, post: Any) -> None:
    ctl.open_window(ACCOUNT, USER)
    for resp in (post(text()), post(text("nobody"))):
        app, biz = usage(resp)
        assert set(app) == {"call_count", "total_time", "total_cputime"} and app["call_count"] == 0
        assert biz == {
            "type": "instagram",
            "call_count": 0,
            "total_cputime": 0,
            "total_time": 0,
            "estimated_time_to_regain_access": 0,
        }


def test_control_rejects_bad_arguments(ctl: SandboxControl) -> None:
    with pytest.raises(SandboxError, match="fault kinds"):
        ctl.set_faults(error_rate=0.1, kinds=["explode"])
    with pytest.raises(SandboxError, match="no control operation"):
        ctl.call("explode")


# ---- the sandbox in another process -------------------------------------------------------------
def test_sandbox_process_survives_kill_and_restarts_on_the_same_port() -> None:
    proc = SandboxProcess(tokens={TOKEN: ACCOUNT})
    proc.start()
    try:
        port = proc.port
        assert port > 0 and proc.url == f"http://127.0.0.1:{port}"
        with requests.Session() as http:
            proc.control.open_window(ACCOUNT, USER)

            def send():
                return http.post(
                    f"{proc.url}/v25.0/me/messages",
                    json=text(),
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=5,
                )

            assert send().status_code == 200
            proc.kill()
            with pytest.raises(requests.ConnectionError):
                send()
            proc.start()
            assert proc.port == port
            assert proc.control.sends() == []  # a new process: state is gone
            proc.control.open_window(ACCOUNT, USER)
            assert send().status_code == 200
    finally:
        assert proc.stop() == 0
