"""The one error map (graph-api.md §5), unit by unit and over real HTTP.

The HTTP tests start a tiny ``http.server`` on 127.0.0.1 that answers canned responses
(status, headers, body, optional delay or a dropped connection): real sockets, no mocks.
"""

from __future__ import annotations

import json
import pickle
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from dmworker.graph import (
    GraphError,
    InstagramClient,
    InvalidRequestError,
    OutcomeUnknownError,
    OutsideWindowError,
    PermanentError,
    PermissionDeniedError,
    PermissionError_,
    PolicyBlockedError,
    RecipientUnavailableError,
    TemporaryError,
    ThrottledError,
    TokenInvalidError,
    map_error,
    redact,
)

TOKEN = "IGAAtest-token-secret-value-0001"


# ----------------------------------------------------------------------------- canned server
@dataclass
class Canned:
    status: int = 200
    body: bytes | str = b'{"recipient_id":"1","message_id":"m.1"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # read the request, then close the socket without answering


class CannedServer:
    """Answers ``/case/<name>/...`` with the :class:`Canned` registered under ``name``."""

    def __init__(self) -> None:
        self.cases: dict[str, Canned] = {}
        self.seen: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.seen.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                parts = self.path.split("/")
                canned = server.cases.get(parts[2] if len(parts) > 2 else "", Canned(404, b"no case"))
                if canned.delay_s:
                    server.stopping.wait(canned.delay_s)
                if canned.drop:
                    self.close_connection = True
                    return
                payload = canned.body.encode() if isinstance(canned.body, str) else canned.body
                try:
                    self.send_response(canned.status)
                    for k, v in canned.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (read timeout)
                    pass

            do_GET = do_POST = _answer

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def client(self, case: str, canned: Canned, **kw: Any) -> InstagramClient:
        self.cases[case] = canned
        kw.setdefault("read_timeout_s", 5.0)
        return InstagramClient(TOKEN, base_url=f"{self.url}/case/{case}/v25.0", **kw)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def canned() -> Iterator[CannedServer]:
    srv = CannedServer()
    srv.start()
    yield srv
    srv.stop()


def envelope(
    code: int,
    subcode: int | None = None,
    message: str = "An error",
    transient: bool = False,
    trace: str = "Atrace1",
) -> dict[str, Any]:
    err: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": trace,
        "is_transient": transient,
    }
    if subcode is not None:
        err["error_subcode"] = subcode
    return {"error": err}


PRIVATE = (2534025, 2534039, 2534040)

# Every row of graph-api.md §5 (and the edges around it): id, HTTP status, body, expected class.
ROWS: list[tuple[str, int, dict[str, Any], type[GraphError]]] = [
    ("code1", 500, envelope(1, message="An unknown error occurred", transient=True), TemporaryError),
    ("code1-on-400-not-transient", 400, envelope(1), TemporaryError),
    ("code2", 400, envelope(2, message="Service temporarily unavailable", transient=True), TemporaryError),
    ("code1200", 500, envelope(1200, message="Temporary send message failure"), TemporaryError),
    ("transient-unknown-code", 400, envelope(9007, transient=True), TemporaryError),
    ("unknown-code-on-5xx", 503, envelope(12345), TemporaryError),
    *[
        (f"throttle-{c}", 400, envelope(c, transient=True), ThrottledError)
        for c in (4, 17, 32, 341, 613, 80002, 80006)
    ],
    ("throttle-429-code4", 429, envelope(4), ThrottledError),
    ("policy-368", 400, envelope(368, message="(#368) deemed abusive"), PolicyBlockedError),
    (
        "window",
        400,
        envelope(10, 2534022, "This message is sent outside of allowed window."),
        OutsideWindowError,
    ),
    ("window-403", 403, envelope(10, 2534022), OutsideWindowError),
    ("window-messenger", 400, envelope(10, 2018278), OutsideWindowError),
    ("invalid-param", 400, envelope(100, message="(#100) Invalid parameter"), InvalidRequestError),
    ("invalid-param-33", 400, envelope(100, 33), InvalidRequestError),
    ("no-matching-user", 400, envelope(100, 2018001), RecipientUnavailableError),
    (
        "unavailable-551",
        400,
        envelope(551, 2534014, "This person isn't available right now."),
        RecipientUnavailableError,
    ),
    ("token-190", 400, envelope(190, message="Invalid OAuth access token"), TokenInvalidError),
    *[(f"token-190-{s}", 401, envelope(190, s), TokenInvalidError) for s in (458, 459, 460, 463, 464, 467)],
    (
        "permission-10",
        403,
        envelope(10, message="(#10) Application does not have permission"),
        PermissionDeniedError,
    ),
    *[(f"permission-{c}", 403, envelope(c), PermissionDeniedError) for c in (200, 230, 299)],
    *[(f"private-reply-code-{c}", 400, envelope(c), InvalidRequestError) for c in PRIVATE],
    *[(f"private-reply-subcode-{c}", 400, envelope(100, c), InvalidRequestError) for c in PRIVATE],
    ("private-reply-subcode-on-10", 400, envelope(10, 2534025), InvalidRequestError),
    ("unknown-code-4xx", 400, envelope(12345), InvalidRequestError),
    (
        "code-as-string",
        400,
        {"error": {"code": "190", "error_subcode": "460", "message": "x"}},
        TokenInvalidError,
    ),
]
ROW_IDS = [r[0] for r in ROWS]


# ----------------------------------------------------------------------------- map_error unit
@pytest.mark.parametrize(("name", "status", "body", "cls"), ROWS, ids=ROW_IDS)
def test_map_error_row(name: str, status: int, body: dict[str, Any], cls: type[GraphError]) -> None:
    err = map_error(status=status, body=json.dumps(body).encode())
    assert type(err) is cls
    assert err.code == int(body["error"]["code"])
    sub = body["error"].get("error_subcode")
    assert err.subcode == (int(sub) if sub is not None else None)
    assert err.http_status == status
    assert err.message == body["error"]["message"]
    assert err.fbtrace_id == body["error"].get("fbtrace_id")
    assert err.is_transient is (body["error"].get("is_transient") is True)


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (503, b"<html><body>Service Unavailable</body></html>", TemporaryError),
        (500, b"", TemporaryError),
        (502, None, TemporaryError),
        (408, b"timeout", TemporaryError),
        (404, b"Not Found", InvalidRequestError),
        (400, b'{"foo": 1}', InvalidRequestError),
        (400, b'{"error": "bad"}', InvalidRequestError),
        (302, b"", InvalidRequestError),
        (429, b"slow down", ThrottledError),
        (200, b"OK", OutcomeUnknownError),
        (200, b"[1, 2]", OutcomeUnknownError),
        (None, None, TemporaryError),
    ],
)
def test_map_error_without_usable_body_uses_status(
    status: int | None, body: bytes | None, cls: type[GraphError]
) -> None:
    err = map_error(status=status, body=body)
    assert type(err) is cls
    assert err.code is None and err.http_status == status


@pytest.mark.parametrize(
    ("exc", "sent", "cls"),
    [
        (requests.exceptions.ConnectTimeout("connect timed out"), False, TemporaryError),
        (requests.exceptions.ConnectTimeout("connect timed out"), True, TemporaryError),
        (requests.exceptions.ReadTimeout("read timed out"), False, OutcomeUnknownError),
        (requests.exceptions.ReadTimeout("read timed out"), True, OutcomeUnknownError),
        (requests.exceptions.ConnectionError("refused"), False, TemporaryError),
        (requests.exceptions.ConnectionError("Connection aborted"), True, OutcomeUnknownError),
        (requests.exceptions.ChunkedEncodingError("broken"), True, OutcomeUnknownError),
        (ConnectionResetError(104, "reset"), False, TemporaryError),
        (requests.exceptions.InvalidURL("bad url"), False, InvalidRequestError),
        (requests.exceptions.MissingSchema("no scheme"), False, InvalidRequestError),
    ],
)
def test_map_error_exceptions(exc: BaseException, sent: bool, cls: type[GraphError]) -> None:
    err = map_error(exc=exc, sent=sent)
    assert type(err) is cls
    assert type(exc).__name__ in err.message


def test_tree_says_what_to_do() -> None:
    assert issubclass(OutcomeUnknownError, TemporaryError)
    assert issubclass(PolicyBlockedError, ThrottledError)
    permanent: list[type[GraphError]] = [
        OutsideWindowError,
        RecipientUnavailableError,
        InvalidRequestError,
        PermissionDeniedError,
        TokenInvalidError,
    ]
    assert all(issubclass(cls, PermanentError) for cls in permanent)
    assert all(issubclass(cls, GraphError) for cls in (TemporaryError, ThrottledError, PermanentError))
    assert PermissionError_ is PermissionDeniedError
    kinds = {
        c.kind
        for c in (
            GraphError,
            TemporaryError,
            OutcomeUnknownError,
            ThrottledError,
            PolicyBlockedError,
            PermanentError,
            OutsideWindowError,
            RecipientUnavailableError,
            InvalidRequestError,
            PermissionDeniedError,
            TokenInvalidError,
        )
    }
    assert len(kinds) == 11


def test_repr_str_and_to_dict_carry_code_subcode_and_trace() -> None:
    body = envelope(10, 2534022, "This message is sent outside of allowed window.", trace="Axyz")
    err = map_error(status=400, body=json.dumps(body))
    assert repr(err) == (
        "OutsideWindowError(code=10, subcode=2534022, fbtrace_id='Axyz', http_status=400): "
        "This message is sent outside of allowed window."
    )
    assert str(err) == (
        "This message is sent outside of allowed window. "
        "(code=10, subcode=2534022, fbtrace_id='Axyz', http_status=400)"
    )
    assert err.to_dict() == {
        "kind": "outside_window",
        "code": 10,
        "subcode": 2534022,
        "message": "This message is sent outside of allowed window.",
        "fbtrace_id": "Axyz",
        "http_status": 400,
    }
    json.dumps(err.to_dict())


def test_errors_survive_pickling() -> None:
    err = map_error(status=429, headers={"Retry-After": "12"}, body=json.dumps(envelope(4)))
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ThrottledError
    assert repr(again) == repr(err) and again.retry_after_s == 12.0 and again.code == 4


# ----------------------------------------------------------------------------- wait hints
def buc(regain_min: float, pct: int = 100) -> str:
    entry = {
        "type": "instagram",
        "call_count": pct,
        "total_cputime": 3,
        "total_time": 4,
        "estimated_time_to_regain_access": regain_min,
    }
    return json.dumps({"17841400000000001": [entry]})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"X-Business-Use-Case-Usage": buc(3)}, 180.0),
        ({"X-Business-Use-Case-Usage": buc(0)}, None),
        ({"Retry-After": "30", "X-Business-Use-Case-Usage": buc(1)}, 60.0),
        ({"Retry-After": "garbage", "X-Business-Use-Case-Usage": "{not json"}, None),
        ({}, None),
    ],
)
def test_throttled_retry_after(headers: dict[str, str], expected: float | None) -> None:
    err = map_error(status=400, headers=headers, body=json.dumps(envelope(4, transient=True)))
    assert isinstance(err, ThrottledError)
    assert err.retry_after_s == expected
    assert err.to_dict()["retry_after_s"] == expected


def test_retry_after_as_http_date() -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    err = map_error(status=429, headers={"Retry-After": when})
    assert isinstance(err, ThrottledError) and err.retry_after_s is not None
    assert 100 <= err.retry_after_s <= 121


# ----------------------------------------------------------------------------- redaction
def test_messages_never_carry_the_token() -> None:
    echo = f"Bad token {TOKEN} in https://graph.instagram.com/v25.0/me?access_token={TOKEN}&x=1"
    for err in (
        map_error(status=400, body=json.dumps(envelope(190, message=echo)), secrets=[TOKEN]),
        map_error(status=502, body=f"<html>{echo}</html>", secrets=[TOKEN]),
        map_error(status=200, body=echo, secrets=[TOKEN]),
        map_error(exc=requests.exceptions.ConnectionError(echo), secrets=[TOKEN]),
        map_error(status=400, body=json.dumps(envelope(190, message="x?access_token=OTHERSECRET&y=2"))),
    ):
        for text in (str(err), repr(err), json.dumps(err.to_dict()), err.message):
            assert TOKEN not in text and "OTHERSECRET" not in text
        assert "[redacted]" in err.message


def test_redact_patterns() -> None:
    assert redact("a sEcReT b", ["sEcReT"]) == "a [redacted] b"
    assert redact("u?access_token=abc.def&x=1") == "u?access_token=[redacted]&x=1"
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact("token EAAGm0PX4ZCpsBAKZC1234567890abc end") == "token [redacted] end"
    assert redact("nothing here") == "nothing here"


# ----------------------------------------------------------------------------- over real HTTP
@pytest.mark.parametrize(("name", "status", "body", "cls"), ROWS, ids=ROW_IDS)
def test_http_row(
    canned: CannedServer, name: str, status: int, body: dict[str, Any], cls: type[GraphError]
) -> None:
    with canned.client(name, Canned(status, json.dumps(body))) as client, pytest.raises(GraphError) as info:
        client.messaging.send_text("1784", "hi")
    err = info.value
    assert type(err) is cls
    assert (err.code, err.http_status) == (int(body["error"]["code"]), status)
    assert err.fbtrace_id == body["error"].get("fbtrace_id")
    assert err.__cause__ is None and err.__context__ is None


def test_http_sends_bearer_header_and_no_token_in_url(canned: CannedServer) -> None:
    with canned.client("bearer", Canned(200)) as client:
        result = client.messaging.send_text("1784", "hi")
    assert result.message_id == "m.1"
    req = next(r for r in canned.seen if r["path"].startswith("/case/bearer/"))
    assert req["path"] == "/case/bearer/v25.0/me/messages"
    assert req["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert req["headers"]["Content-Type"] == "application/json"
    assert json.loads(req["body"]) == {"recipient": {"id": "1784"}, "message": {"text": "hi"}}


def test_http_429_with_retry_after(canned: CannedServer) -> None:
    c = Canned(
        429, json.dumps(envelope(4, message="(#4) Application request limit reached")), {"Retry-After": "17"}
    )
    with canned.client("r429", c) as client, pytest.raises(ThrottledError) as info:
        client.messaging.send_text("1784", "hi")
    assert info.value.retry_after_s == 17.0 and info.value.http_status == 429


def test_http_429_without_body(canned: CannedServer) -> None:
    with (
        canned.client("r429bare", Canned(429, b"", {"Retry-After": "3"})) as client,
        pytest.raises(ThrottledError) as info,
    ):
        client.messaging.send_text("1784", "hi")
    assert info.value.retry_after_s == 3.0 and info.value.code is None


def test_http_business_usage_regain_time(canned: CannedServer) -> None:
    c = Canned(400, json.dumps(envelope(80002, transient=True)), {"X-Business-Use-Case-Usage": buc(5)})
    with canned.client("buc", c) as client, pytest.raises(ThrottledError) as info:
        client.messaging.send_text("1784", "hi")
    assert info.value.retry_after_s == 300.0
    assert info.value.usage is not None and info.value.usage.regain_access_s == 300.0
    assert info.value.usage.call_count_pct == 100


def test_http_5xx_with_html_body(canned: CannedServer) -> None:
    c = Canned(502, b"<html><h1>502 Bad Gateway</h1></html>", {"Content-Type": "text/html"})
    with canned.client("html", c) as client, pytest.raises(TemporaryError) as info:
        client.messaging.send_text("1784", "hi")
    assert type(info.value) is TemporaryError and info.value.http_status == 502
    assert "502 Bad Gateway" in info.value.message


def test_http_4xx_with_non_json_body(canned: CannedServer) -> None:
    c = Canned(404, b"Sorry, this page isn't available.", {"Content-Type": "text/plain"})
    with canned.client("plain404", c) as client, pytest.raises(InvalidRequestError) as info:
        client.messaging.send_text("1784", "hi")
    assert info.value.http_status == 404


def test_http_2xx_with_non_json_body_is_outcome_unknown(canned: CannedServer) -> None:
    with (
        canned.client("ok-html", Canned(200, b"<html>ok</html>")) as client,
        pytest.raises(OutcomeUnknownError),
    ):
        client.messaging.send_text("1784", "hi")


def test_http_redirect_is_not_followed(canned: CannedServer) -> None:
    c = Canned(307, b"", {"Location": "http://example.invalid/steal"})
    with canned.client("redirect", c) as client, pytest.raises(InvalidRequestError) as info:
        client.messaging.send_text("1784", "hi")
    assert info.value.http_status == 307


def test_http_read_timeout_after_send_is_outcome_unknown(canned: CannedServer) -> None:
    c = Canned(200, delay_s=4.0)
    started = time.monotonic()
    with canned.client("slow", c, read_timeout_s=0.3) as client, pytest.raises(OutcomeUnknownError) as info:
        client.messaging.send_text("1784", "hi")
    assert time.monotonic() - started < 3.0  # the read timeout ended it, not the server's 4 s
    assert "ReadTimeout" in info.value.message
    assert any(r["path"].startswith("/case/slow/") for r in canned.seen)  # it was sent


def test_http_connection_dropped_after_send_is_outcome_unknown(canned: CannedServer) -> None:
    with canned.client("drop", Canned(drop=True)) as client, pytest.raises(OutcomeUnknownError) as info:
        client.messaging.send_text("1784", "hi")
    assert "Connection aborted" in info.value.message


def test_http_connect_refused_is_temporary() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with (
        InstagramClient(TOKEN, base_url=f"http://127.0.0.1:{port}/v25.0") as client,
        pytest.raises(TemporaryError) as info,
    ):
        client.messaging.send_text("1784", "hi")
    assert type(info.value) is TemporaryError
    assert TOKEN not in repr(info.value)


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full accept queue")
def test_http_connect_timeout_is_temporary() -> None:
    # Given a listener whose accept queue is full: new SYNs are dropped, so connecting times out
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    time.sleep(0.1)
    try:
        with (
            InstagramClient(
                TOKEN, base_url=f"http://127.0.0.1:{port}/v25.0", connect_timeout_s=0.3
            ) as client,
            pytest.raises(TemporaryError) as info,
        ):
            client.messaging.send_text("1784", "hi")
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert type(info.value) is TemporaryError
    assert "ConnectTimeout" in info.value.message


def test_http_error_echoing_token_is_redacted(canned: CannedServer) -> None:
    echo = f"Invalid OAuth access token - Cannot parse access token {TOKEN}"
    with (
        canned.client("echo", Canned(400, json.dumps(envelope(190, message=echo)))) as client,
        pytest.raises(TokenInvalidError) as info,
    ):
        client.messaging.send_text("1784", "hi")
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value)
    assert "[redacted]" in info.value.message
