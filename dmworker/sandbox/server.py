"""The HTTP layer: a threading HTTP/1.1 keep-alive server, and :class:`SandboxServer` (in-process).

One thread per connection (``daemon_threads``); each answer is written in a single ``send`` with
``Content-Length`` and ``TCP_NODELAY`` set, so keep-alive clients never wait on Nagle/delayed-ACK.
Nothing is logged per request; a log line never carries a token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .control import SandboxControl
from .control_api import PREFIX, ControlApi
from .graph import Answer, GraphApp
from .state import SandboxState

log = logging.getLogger("dmworker.sandbox")
MAX_BODY = 16 * 1024 * 1024
MAX_LINE = 65536
MAX_HEADERS = 100
REASONS = {
    0: "",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TOKEN_RE = re.compile(r"(access_token=)[^&\s\"']+|(Bearer\s+)\S+", re.IGNORECASE)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dmworker-sandbox/1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), _TOKEN_RE.sub(r"\1\2[redacted]", format % args))

    def handle_one_request(self) -> None:
        """Read one request with a lean parser (the base class's email-based one costs ~40 us)."""
        try:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                self.close_connection = True
                return
            parts = line.split()
            if len(line) > MAX_LINE or len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self._reject(400, "bad request line")
                return
            method, target, version = (p.decode("latin-1") for p in parts)
            self.command, self.path, self.request_version = method, target, version
            headers: dict[str, str] = {}
            for _ in range(MAX_HEADERS):
                raw = self.rfile.readline(MAX_LINE + 1)
                if raw in (b"\r\n", b"\n", b""):
                    break
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            else:
                self._reject(431, "too many headers")
                return
            connection = headers.get("connection", "").lower()
            self.close_connection = "close" in connection or (
                version == "HTTP/1.0" and "keep-alive" not in connection
            )
            if headers.get("expect", "").lower() == "100-continue":
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = self._body(headers)
            if body is not None:
                self._dispatch(method, target, headers, body)
        except (TimeoutError, ConnectionError):
            self.close_connection = True

    def _body(self, headers: dict[str, str]) -> bytes | None:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline(MAX_LINE).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(MAX_LINE)
        else:
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if 0 <= length <= MAX_BODY:
                return self.rfile.read(length) if length else b""
        self._reject(413, "bad Content-Length or body too large")
        return None

    def _reject(self, status: int, message: str) -> None:
        self.close_connection = True
        self._write(Answer(status, json.dumps({"error": message}).encode()))

    def _dispatch(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        path, _, query = target.partition("?")
        if path.startswith(PREFIX):
            answer = self.server.control_api.handle(method, path, query, body)
        else:
            host = headers.get("host") or f"{self.server.server_name}:{self.server.server_port}"
            answer = self.server.graph.handle(method, path, query, headers, body, host)
        if answer.delay_s > 0:
            time.sleep(answer.delay_s)
        if answer.disconnect:
            self.close_connection = True
            return
        self._write(answer)

    def _write(self, answer: Answer) -> None:
        head = [
            f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Error')}\r\n"
            f"Content-Type: {answer.content_type}\r\nContent-Length: {len(answer.body)}\r\n"
        ]
        for name, value in answer.headers:
            head.append(f"{name}: {value}\r\n")
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        try:
            self.wfile.write("".join(head).encode("latin-1") + answer.body)
        except OSError:
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, addr: tuple[str, int], state: SandboxState) -> None:
        self.state = state
        self.graph = GraphApp(state)
        self.control_api = ControlApi(state)
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:  # no reverse DNS lookup (HTTPServer's getfqdn)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.open_lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.open_lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.open_lock:
            conns = list(self.open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class SandboxServer:
    """The sandbox in this process, serving from a background thread.

    ``start()`` binds (``port=0``: any free port, kept for a later ``start()``), ``url`` is
    ``http://HOST:PORT``, ``control`` a :class:`SandboxControl` on it, ``state`` the live state.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: dict[str, str] | None = None,
        latency_ms: float = 0.0,
        enforce_windows: bool = True,
        max_requests: int | None = 1_000_000,
    ) -> None:
        self.host, self.port = host, port
        self.state = SandboxState(tokens, latency_ms, enforce_windows, max_requests)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._control: SandboxControl | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control(self) -> SandboxControl:
        if self._control is None:
            self._control = SandboxControl(self.url)
        return self._control

    def start(self) -> SandboxServer:
        if self._httpd is not None:
            raise RuntimeError("the sandbox is already running")
        self._httpd = _HTTPServer((self.host, self.port), self.state)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._control is not None:
            self._control.close()
            self._control = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
