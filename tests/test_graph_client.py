"""InstagramClient against the Graph API sandbox (real HTTP): every method's whole body, paging,
errors, and the token never reaching a log line or an exception.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from dmworker.graph import (
    METHODS,
    Conversation,
    GraphError,
    InstagramClient,
    InvalidRequestError,
    Message,
    OutcomeUnknownError,
    OutsideWindowError,
    SendResult,
    TemporaryError,
    ThrottledError,
    TokenInvalidError,
    Usage,
    build_body,
    parse_usage,
)
from dmworker.graph.usage import wait_hint_s
from dmworker.sandbox import SandboxServer
from dmworker.settings import AccountConfig, ConfigError, Settings

ACCOUNT = "17841400000009001"
TOKEN = "IGAAclient-test-token-secret-9001"
USER = "990001"


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    srv = SandboxServer(port=0, tokens={TOKEN: ACCOUNT})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def ctl(server: SandboxServer) -> Any:
    server.control.reset()
    return server.control


@pytest.fixture
def client(server: SandboxServer) -> Iterator[InstagramClient]:
    with InstagramClient(TOKEN, base_url=server.url + "/v25.0", connect_timeout_s=2, read_timeout_s=5) as c:
        yield c


# ----------------------------------------------------------------------------- every method, whole body
TO = {"id": USER}
QUICK = [
    {"content_type": "text", "title": "Order Status", "payload": "order_status"},
    {"content_type": "text", "title": "Return Item", "payload": "return"},
    {"content_type": "user_phone_number"},
]
ELEMENTS = [
    {
        "title": "Product Name",
        "subtitle": "$29.99",
        "image_url": "https://example.com/product.jpg",
        "default_action": {"type": "web_url", "url": "https://shop.com/product"},
        "buttons": [{"type": "web_url", "url": "https://shop.com/product", "title": "View"}],
    }
]
BUTTONS = [
    {"type": "web_url", "url": "https://example.com", "title": "Visit Website"},
    {"type": "postback", "title": "Start Over", "payload": "restart"},
]
IMG = ["https://example.com/a.jpg", "https://example.com/b.jpg", "https://example.com/c.jpg"]
MID = "<mid>"  # replaced by the id of the user's opening message

# (case id, method, recipient, kwargs, expected body, expects a message_id)
CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any], bool]] = [
    (
        "text",
        "send_text",
        USER,
        {"text": "Hello! Thanks for reaching out."},
        {"recipient": TO, "message": {"text": "Hello! Thanks for reaching out."}},
        True,
    ),
    (
        "text-human-agent-reply",
        "send_text",
        USER,
        {"text": "Our team", "human_agent": True, "reply_to": MID},
        {
            "recipient": TO,
            "messaging_type": "MESSAGE_TAG",
            "tag": "HUMAN_AGENT",
            "message": {"text": "Our team"},
            "reply_to": {"mid": MID},
        },
        True,
    ),
    (
        "media-image",
        "send_media",
        USER,
        {"type": "image", "url": IMG[0]},
        {"recipient": TO, "message": {"attachment": {"type": "image", "payload": {"url": IMG[0]}}}},
        True,
    ),
    (
        "media-video",
        "send_media",
        USER,
        {"type": "video", "url": "https://example.com/v.mp4"},
        {
            "recipient": TO,
            "message": {"attachment": {"type": "video", "payload": {"url": "https://example.com/v.mp4"}}},
        },
        True,
    ),
    (
        "media-attachment-id",
        "send_media",
        USER,
        {"type": "audio", "attachment_id": "778899"},
        {
            "recipient": TO,
            "message": {"attachment": {"type": "audio", "payload": {"attachment_id": "778899"}}},
        },
        True,
    ),
    (
        "media-several-images",
        "send_media",
        USER,
        {"urls": IMG},
        {
            "recipient": TO,
            "message": {"attachments": [{"type": "image", "payload": {"url": u}} for u in IMG]},
        },
        True,
    ),
    (
        "like-heart",
        "send_like_heart",
        USER,
        {},
        {"recipient": TO, "message": {"attachment": {"type": "like_heart"}}},
        True,
    ),
    (
        "media-share",
        "send_media_share",
        USER,
        {"post_id": "18000000000000001"},
        {
            "recipient": TO,
            "message": {"attachment": {"type": "MEDIA_SHARE", "payload": {"id": "18000000000000001"}}},
        },
        True,
    ),
    (
        "quick-replies",
        "send_quick_replies",
        USER,
        {"text": "How can I help you?", "replies": QUICK},
        {
            "recipient": TO,
            "messaging_type": "RESPONSE",
            "message": {"text": "How can I help you?", "quick_replies": QUICK},
        },
        True,
    ),
    (
        "generic-template",
        "send_generic_template",
        USER,
        {"elements": ELEMENTS},
        {
            "recipient": TO,
            "message": {
                "attachment": {
                    "type": "template",
                    "payload": {"template_type": "generic", "elements": ELEMENTS},
                }
            },
        },
        True,
    ),
    (
        "button-template",
        "send_button_template",
        USER,
        {"text": "What to do?", "buttons": BUTTONS},
        {
            "recipient": TO,
            "message": {
                "attachment": {
                    "type": "template",
                    "payload": {"template_type": "button", "text": "What to do?", "buttons": BUTTONS},
                }
            },
        },
        True,
    ),
    (
        "private-reply",
        "send_private_reply",
        "cmt-1",
        {"text": "Thanks for your comment!"},
        {"recipient": {"comment_id": "cmt-1"}, "message": {"text": "Thanks for your comment!"}},
        True,
    ),
    (
        "react",
        "react_to_message",
        USER,
        {"message_id": MID, "reaction": "love"},
        {"recipient": TO, "sender_action": "react", "payload": {"message_id": MID, "reaction": "love"}},
        False,
    ),
    (
        "react-default",
        "react_to_message",
        USER,
        {"message_id": MID},
        {"recipient": TO, "sender_action": "react", "payload": {"message_id": MID, "reaction": "love"}},
        False,
    ),
    (
        "unreact",
        "unreact_to_message",
        USER,
        {"message_id": MID},
        {"recipient": TO, "sender_action": "unreact", "payload": {"message_id": MID}},
        False,
    ),
    (
        "typing-on",
        "send_typing_indicator",
        USER,
        {"on": True},
        {"recipient": TO, "sender_action": "typing_on"},
        False,
    ),
    (
        "typing-off",
        "send_typing_indicator",
        USER,
        {"on": False},
        {"recipient": TO, "sender_action": "typing_off"},
        False,
    ),
    ("mark-seen", "mark_seen", USER, {}, {"recipient": TO, "sender_action": "mark_seen"}, False),
]


def _fill(value: Any, mid: str) -> Any:
    if value == MID:
        return mid
    if isinstance(value, dict):
        return {k: _fill(v, mid) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, mid) for v in value]
    return value


def test_cases_cover_every_method() -> None:
    assert {c[1] for c in CASES} == set(METHODS)


@pytest.mark.parametrize("via", ["method", "call"])
@pytest.mark.parametrize(
    ("case", "method", "recipient", "kwargs", "expected", "has_mid"), CASES, ids=[c[0] for c in CASES]
)
def test_every_method_sends_the_contract_body(
    ctl: Any,
    client: InstagramClient,
    via: str,
    case: str,
    method: str,
    recipient: str,
    kwargs: dict[str, Any],
    expected: dict[str, Any],
    has_mid: bool,
) -> None:
    # Given an open window (the user's message has id `mid`) and a fresh comment
    mid = ctl.open_window(ACCOUNT, USER)
    ctl.add_comment(ACCOUNT, "cmt-1", USER)
    kwargs, expected = _fill(kwargs, mid), _fill(expected, mid)
    # When the method is called directly or through the dispatcher
    if via == "method":
        result = getattr(client.messaging, method)(recipient, **kwargs)
    else:
        result = client.messaging.call(method, recipient, **kwargs)
    # Then exactly that body was recorded, and the result is Meta's answer
    sends = ctl.sends(account=ACCOUNT)
    assert len(sends) == 1
    assert sends[0]["body"] == expected
    assert build_body(method, recipient, **kwargs) == expected
    assert isinstance(result, SendResult)
    assert result.recipient_id == USER
    assert result.message_id == sends[0]["message_id"]
    assert (result.message_id is not None) is has_mid
    assert isinstance(result.usage, Usage) and result.usage.call_count_pct is not None


def test_call_refuses_other_names_and_bad_arguments(client: InstagramClient) -> None:
    for name in ("close", "send_body", "_client", "call", "sendText", "__init__"):
        with pytest.raises(ValueError, match="unknown messaging method"):
            client.messaging.call(name, USER, text="x")
    with pytest.raises(ValueError, match="send_text"):
        client.messaging.call("send_text", USER, txt="typo")
    with pytest.raises(ValueError, match="send_text"):
        client.messaging.call("send_text", USER)


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("send_media", {"type": "sticker", "url": "https://x/y.png"}),
        ("send_media", {"type": "image"}),
        ("send_media", {"url": "https://x/a.png", "attachment_id": "1"}),
        ("send_media", {"urls": ["https://x/a.png"]}),
        ("send_media", {"urls": [f"https://x/{i}.png" for i in range(11)]}),
        ("send_media", {"type": "video", "urls": ["https://x/a.mp4", "https://x/b.mp4"]}),
        ("send_quick_replies", {"text": "t", "replies": []}),
        ("send_generic_template", {"elements": {"title": "not a list"}}),
        ("send_button_template", {"text": "t", "buttons": []}),
        ("react_to_message", {"message_id": "m", "reaction": ""}),
    ],
)
def test_bodies_refuse_unbuildable_arguments(method: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_body(method, USER, **kwargs)
    with pytest.raises(ValueError):
        build_body(method, "", **{k: v for k, v in kwargs.items() if k != "type"})


# ----------------------------------------------------------------------------- conversations
def test_conversations_list_follows_every_page(ctl: Any, client: InstagramClient) -> None:
    users = [f"99100{i}" for i in range(7)]
    for u in users:
        ctl.open_window(ACCOUNT, u)
    before = len(ctl.requests(account=ACCOUNT))
    pages = client.conversations.list(limit=3)
    assert not ctl.requests(account=ACCOUNT)[before:]  # lazy: nothing fetched yet
    convs = list(pages)
    assert len(convs) == 7 and len({c.id for c in convs}) == 7
    assert all(isinstance(c, Conversation) and c.updated_at is not None for c in convs)
    times = [c.updated_at for c in convs if c.updated_at is not None]
    assert len(times) == 7 and times == sorted(times, reverse=True)
    gets = [r for r in ctl.requests(account=ACCOUNT)[before:] if r["path"].endswith("/conversations")]
    assert len(gets) == 3 and all(r["status"] == 200 for r in gets)  # 3 + 3 + 1


def test_conversations_list_default_page_size_and_empty(ctl: Any, client: InstagramClient) -> None:
    assert list(client.conversations.list()) == []
    ctl.open_window(ACCOUNT, USER)
    assert len(list(client.conversations.list())) == 1
    with pytest.raises(ValueError):
        client.conversations.list(limit=0)


def test_find_by_user_and_read_messages(ctl: Any, client: InstagramClient) -> None:
    ctl.open_window(ACCOUNT, "991999")
    opening = ctl.open_window(ACCOUNT, USER)
    sent = client.messaging.send_text(USER, "Here is your answer!")
    conv = client.conversations.find_by_user(USER)
    assert conv is not None
    assert client.conversations.find_by_user("123456789") is None
    messages = client.conversations.get_messages(conv.id)
    assert [m.id for m in messages] == [sent.message_id, opening]  # newest first
    assert all(isinstance(m, Message) and m.created_at is not None for m in messages)
    mine, theirs = messages
    assert mine.text == "Here is your answer!" and mine.from_ is not None and mine.from_.id == ACCOUNT
    assert [p.id for p in mine.to] == [USER]
    assert theirs.from_ is not None and theirs.from_.id == USER
    one = client.conversations.get_message(opening)
    assert one == theirs


def test_read_unknown_ids_raise(ctl: Any, client: InstagramClient) -> None:
    with pytest.raises(InvalidRequestError):
        client.conversations.get_message("nope")
    with pytest.raises(ValueError):
        client.conversations.get_messages("")


# ----------------------------------------------------------------------------- errors via the sandbox
def test_sandbox_errors_map(ctl: Any, server: SandboxServer, client: InstagramClient) -> None:
    with pytest.raises(OutsideWindowError) as window:
        client.messaging.send_text(USER, "no window")
    assert window.value.fbtrace_id and window.value.subcode == 2534022
    with (
        InstagramClient("IGAAwrong-token-0000000000000000", base_url=server.url) as bad,
        pytest.raises(TokenInvalidError),
    ):
        bad.messaging.mark_seen(USER)
    ctl.add_comment(ACCOUNT, "cmt-2", USER)
    client.messaging.send_private_reply("cmt-2", "once")
    with pytest.raises(InvalidRequestError):
        client.messaging.send_private_reply("cmt-2", "twice")
    ctl.open_window(ACCOUNT, USER)
    ctl.throttle(ACCOUNT, 30, code=429, retry_after_s=12)
    with pytest.raises(ThrottledError) as throttled:
        client.messaging.send_text(USER, "hi")
    assert throttled.value.retry_after_s is not None and throttled.value.retry_after_s >= 12
    ctl.reset()
    ctl.open_window(ACCOUNT, USER)
    ctl.set_faults(ACCOUNT, next_n=4, kinds=["503", "5xx", "transient", "disconnect"])
    for expected in (TemporaryError, TemporaryError, TemporaryError, OutcomeUnknownError):
        with pytest.raises(expected) as info:
            client.messaging.send_text(USER, "hi")
        assert type(info.value) is expected
    assert client.messaging.send_text(USER, "hi").message_id  # the pool recovers


def test_slow_answer_is_outcome_unknown(ctl: Any, server: SandboxServer) -> None:
    ctl.open_window(ACCOUNT, USER)
    ctl.set_faults(ACCOUNT, next_n=1, kinds=["slow"], slow_ms=1500)
    with (
        InstagramClient(TOKEN, base_url=server.url, read_timeout_s=0.3) as c,
        pytest.raises(OutcomeUnknownError),
    ):
        c.messaging.send_text(USER, "maybe")
    assert len(ctl.sends(account=ACCOUNT)) == 1  # it was delivered after all


# ----------------------------------------------------------------------------- the token stays secret
def test_token_never_in_logs_or_exceptions(
    ctl: Any, server: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "urllib3.connectionpool", "requests", "dmworker", "dmworker.graph"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors: list[GraphError] = []
    ctl.open_window(ACCOUNT, USER)
    with InstagramClient(TOKEN, base_url=server.url + "/v25.0", read_timeout_s=0.3) as c:
        c.messaging.send_text(USER, "hello")
        list(c.conversations.list(limit=1))
        ctl.set_faults(ACCOUNT, next_n=3, kinds=["503", "disconnect", "slow"], slow_ms=1000)
        for _ in range(3):
            with pytest.raises(GraphError) as info:
                c.messaging.send_text(USER, "hello")
            errors.append(info.value)
        with pytest.raises(GraphError) as info:
            c.messaging.send_text("not-open", "x")
        errors.append(info.value)
        assert TOKEN not in repr(c) and TOKEN not in repr(c.messaging) and TOKEN not in repr(vars(c)["_auth"])
    with (
        InstagramClient(TOKEN, base_url="http://127.0.0.1:9/v25.0", connect_timeout_s=0.5) as dead,
        pytest.raises(GraphError) as info,
    ):
        dead.messaging.send_text(USER, "x")
    errors.append(info.value)
    assert {type(e) for e in errors} >= {TemporaryError, OutcomeUnknownError, OutsideWindowError}
    for err in errors:
        for text in (str(err), repr(err), json.dumps(err.to_dict()), *map(str, err.args)):
            assert TOKEN not in text
        assert err.__cause__ is None and err.__context__ is None
    assert any(r.name.startswith("urllib3") for r in caplog.records), "urllib3 DEBUG was not captured"
    assert any(r.name == "dmworker.graph" for r in caplog.records)
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in (record.exc_text or "")
    assert TOKEN not in caplog.text


# ----------------------------------------------------------------------------- client plumbing
def test_own_pool_is_reused_and_closed(ctl: Any, server: SandboxServer) -> None:
    ctl.open_window(ACCOUNT, USER)
    c = InstagramClient(TOKEN, base_url=server.url, pool_size=7)
    assert c._pool is not None
    assert c._pool.connection_pool_kw["maxsize"] == 7
    assert c._pool.connection_pool_kw["retries"].total is False  # no retries: the lane decides
    with c:
        for n in range(3):
            assert c.messaging.send_text(USER, f"pooled {n}").message_id
        assert len(c._pool.pools) == 1  # one host, one pool, one kept-alive connection
        pool = c._pool.connection_from_url(server.url)
        assert pool.num_connections == 1 and pool.num_requests == 3
    assert len(c._pool.pools) == 0  # closed


def test_passed_session_gets_the_header_and_stays_open(ctl: Any, server: SandboxServer) -> None:
    ctl.open_window(ACCOUNT, USER)
    with requests.Session() as session:
        session.headers["Authorization"] = "Bearer something-else"
        with InstagramClient(TOKEN, base_url=server.url, session=session) as c:
            assert c.messaging.send_text(USER, "hi").message_id
        assert c._session is session
        # still usable after the client closed: the owner closes it
        with InstagramClient(TOKEN, base_url=server.url, session=session) as c2:
            c2.messaging.send_typing_indicator(USER)


def test_constructor_refuses_bad_values() -> None:
    for kwargs in (
        {"access_token": ""},
        {"access_token": TOKEN, "base_url": "graph.instagram.com"},
        {"access_token": TOKEN, "read_timeout_s": 0},
        {"access_token": TOKEN, "pool_size": 0},
        {"access_token": TOKEN, "account_id": "a/b"},
    ):
        with pytest.raises(ValueError):
            InstagramClient(**kwargs)


def test_request_refuses_foreign_hosts(client: InstagramClient) -> None:
    with pytest.raises(ValueError):
        client.request("GET", "http://evil.example/v25.0/me")


# ----------------------------------------------------------------------------- paging edge cases
class PagingServer:
    """Pages of conversations whose ``next`` links are odd: foreign host, access_token, repeats."""

    def __init__(self, mode: str) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                after = self.path.split("after=")[1].split("&")[0] if "after=" in self.path else "0"
                page = int(after)
                base = f"http://{self.headers['Host']}/v1"
                nxt = {
                    "foreign": f"http://other.example/v1/me/conversations?after={page + 1}",
                    "token": f"{base}/me/conversations?access_token={TOKEN}&after={page + 1}",
                    "repeat": f"{base}/me/conversations?after=0",
                }[mode]
                conv = {"id": f"c{page}", "updated_time": "2026-11-25T10:00:00+0000"}
                body: dict[str, Any] = {"data": [conv], "paging": {"cursors": {"after": str(page + 1)}}}
                if page < 2:
                    body["paging"]["next"] = nxt
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.mark.parametrize("mode", ["foreign", "token", "repeat"])
def test_paging_next_is_sanitised(mode: str) -> None:
    srv = PagingServer(mode)
    try:
        with InstagramClient(TOKEN, base_url=srv.url) as c:
            if mode == "repeat":
                with pytest.raises(InvalidRequestError):
                    list(c.conversations.list())
                return
            assert [conv.id for conv in c.conversations.list(limit=1)] == ["c0", "c1", "c2"]
    finally:
        srv.stop()
    assert len(srv.paths) == 3
    assert all(TOKEN not in p and p.startswith("/v1/me/conversations?") for p in srv.paths)


# ----------------------------------------------------------------------------- usage headers
def test_usage_headers_parsed_leniently() -> None:
    app = '{"call_count":28,"total_time":25,"total_cputime":91}'
    biz = json.dumps(
        {
            "1784": [
                {
                    "type": "instagram",
                    "call_count": 45,
                    "total_cputime": 3,
                    "total_time": 4,
                    "estimated_time_to_regain_access": 2,
                }
            ]
        }
    )
    u = parse_usage({"x-app-usage": app, "X-Business-Use-Case-Usage": biz})
    assert u.app == {"call_count": 28, "total_time": 25, "total_cputime": 91}
    assert u.business is not None and u.business["1784"][0]["call_count"] == 45
    assert (u.call_count_pct, u.regain_access_s, u.peak_pct) == (45, 120.0, 91)
    for bad in (
        {"X-App-Usage": "{oops"},
        {"X-App-Usage": "[1,2]"},
        {"X-App-Usage": '{"call_count":"x"}'},
        {"X-Business-Use-Case-Usage": '{"1":[{"estimated_time_to_regain_access":"soon"}, 3]}'},
        {"X-Business-Use-Case-Usage": '{"1":{"call_count":1e999}}'},
        {},
        None,
    ):
        u = parse_usage(bad)
        assert u.call_count_pct is None and u.regain_access_s is None
    assert parse_usage({"X-Business-Use-Case-Usage": '{"1":{"call_count":"7"}}'}).call_count_pct == 7
    assert wait_hint_s({"Retry-After": "-5"}) == 0.0


def test_from_settings(ctl: Any, server: SandboxServer) -> None:
    settings = Settings.from_env({}).with_overrides(
        graph_url=server.url + "/v25.0",
        accounts={ACCOUNT: AccountConfig(ACCOUNT, TOKEN)},
        default_account=ACCOUNT,
        http_read_timeout_s=4.0,
        http_pool_size=3,
    )
    ctl.open_window(ACCOUNT, USER)
    with InstagramClient.from_settings(settings) as c:
        assert c.timeout == (settings.http_connect_timeout_s, 4.0)
        assert c.messaging.send_text(USER, "hi").recipient_id == USER
    with pytest.raises(ConfigError):
        InstagramClient.from_settings(settings, "not-configured")


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, recording its target and headers."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Proxy.seen.append((self.path, self.headers.get("Authorization") or ""))
        body = json.dumps({"recipient_id": USER, "message_id": "m_via_proxy"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_own_pool_uses_the_proxy_of_the_environment_and_no_proxy(
    monkeypatch: pytest.MonkeyPatch, ctl: Any, server: SandboxServer
) -> None:
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # a host only the proxy can reach: the request goes to the proxy with its absolute URL
        with InstagramClient(TOKEN, base_url="http://graph.invalid/v25.0") as c:
            assert c.messaging.send_text(USER, "hi").message_id == "m_via_proxy"
        assert _Proxy.seen == [("http://graph.invalid/v25.0/me/messages", f"Bearer {TOKEN}")]
        # NO_PROXY names the sandbox's host: it is called directly
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        ctl.open_window(ACCOUNT, USER)
        with InstagramClient(TOKEN, base_url=server.url) as c:
            assert c.messaging.send_text(USER, "direct").message_id != "m_via_proxy"
        assert len(_Proxy.seen) == 1
    finally:
        proxy.shutdown()
        proxy.server_close()
