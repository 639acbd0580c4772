"""``InstagramClient``: one synchronous, pooled HTTP client of the Instagram Graph API.

The token travels only in an ``Authorization: Bearer`` header: never in a URL (so urllib3's DEBUG
lines, which print URLs, cannot show it), never in a log line, never in an exception
(:func:`~dmworker.graph.errors.map_error` redacts). Redirects are not followed. Every failure
(non-2xx, timeout, connection error, 2xx without the expected JSON) raises a
:class:`~dmworker.graph.errors.GraphError` subclass.

HTTP goes through urllib3 (the library under ``requests``) directly: one pool per client, the
proxy and CA bundle read from the environment once, as ``requests`` reads them. A ``requests``
session's per-call machinery (merging settings, preparing, hooks, cookies) cost a worker about
260 µs of CPU per send, more than half of the HTTP call (docs/benchmarks.md). A caller that passes
its own ``requests.Session`` (its adapters, proxies, certificates) is served through it instead.

    with InstagramClient(token) as client:
        result = client.messaging.send_text("1784...", "Hello")
        for conv in client.conversations.list(limit=50):
            ...
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import certifi
import requests
import urllib3
from urllib3 import exceptions as u3ex
from urllib3.exceptions import MaxRetryError

from ..settings import Settings, token_fingerprint
from .conversations import Conversations
from .errors import GraphError, map_error
from .messaging import Messaging
from .usage import EMPTY_USAGE, Usage, parse_usage

DEFAULT_BASE_URL = "https://graph.instagram.com/v25.0"
log = logging.getLogger("dmworker.graph")


@dataclass(frozen=True)
class GraphReply:
    """A successful (2xx, JSON object) answer: its parsed body, usage headers and status."""

    data: dict[str, Any]
    usage: Usage = EMPTY_USAGE
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


class _BearerAuth(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer <token>`` to one prepared request; its repr hides the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return f"<BearerAuth {token_fingerprint(self._token)}>"


class InstagramClient:
    """A client of one account's Graph API: ``.messaging`` (Send API) and ``.conversations``.

    Args:
        access_token: the Instagram user (or Page) access token; sent only as a Bearer header.
        base_url: scheme, host and version, e.g. ``https://graph.instagram.com/v25.0``.
        account_id: the IG user / Page id in paths, or ``"me"``.
        session: a ``requests.Session`` to use (not closed by :meth:`close`); default: an own
            urllib3 pool (``pool_size`` connections per host, no retries, no redirects, no
            cookies; ``HTTPS_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE`` as ``requests`` reads them).
        connect_timeout_s / read_timeout_s: seconds, applied to every call.
        pool_size: the most connections kept open per host.

    Raises:
        ValueError: for an empty token, a base URL without scheme and host, or non-positive numbers.
    """

    def __init__(
        self,
        access_token: str,
        base_url: str = DEFAULT_BASE_URL,
        account_id: str = "me",
        session: requests.Session | None = None,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        pool_size: int = 64,
    ) -> None:
        if not isinstance(access_token, str) or not access_token.strip():
            raise ValueError("access_token must be a non-empty string")
        base = urlsplit(base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
        if not (connect_timeout_s > 0 and read_timeout_s > 0 and pool_size >= 1):
            raise ValueError("timeouts must be > 0 seconds and pool_size >= 1")
        if not account_id or "/" in account_id:
            raise ValueError(f"account_id must be an id or 'me', got {account_id!r}")
        self._token = access_token
        self._auth = _BearerAuth(access_token)
        self.base_url = base_url.rstrip("/")
        self.account_id = account_id
        self.timeout: tuple[float, float] = (connect_timeout_s, read_timeout_s)
        self._session = session
        self._pool = _pool_manager(pool_size, self.base_url) if session is None else None
        self._u3_timeout = urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s)
        self._headers = {"Accept": "application/json", "Authorization": f"Bearer {access_token}"}
        self.messaging = Messaging(self)
        self.conversations = Conversations(self)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        account_id: str | None = None,
        session: requests.Session | None = None,
        path_id: str = "me",
    ) -> InstagramClient:
        """A client of one configured account (default: the default account), with the settings'
        graph URL, timeouts and pool size. ``path_id`` is the id in paths: ``"me"`` (the token's own
        account, right for Instagram and Page tokens alike) or the account's numeric id.

        Raises:
            ConfigError: when the account is not configured.
        """
        acct = settings.account(account_id)
        return cls(
            acct.access_token,
            base_url=settings.graph_url_for(acct.account_id),
            account_id=path_id,
            session=session,
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            pool_size=settings.http_pool_size,
        )

    @classmethod
    def for_account(
        cls, settings: Settings, account_id: str | None = None, session: requests.Session | None = None
    ) -> InstagramClient:
        """The client of one configured account as the workers use it: the Graph host of its login
        (or its own ``graph_url``) and its id in paths — the Page id for Facebook Login
        (``/<page id>/messages``, ``/<page id>/conversations``), else the Instagram account id.

        Raises:
            ConfigError: when the account is not configured.
        """
        acct = settings.account(account_id)
        return cls.from_settings(settings, acct.account_id, session, path_id=acct.path_id)

    def __repr__(self) -> str:
        return (
            f"InstagramClient(base_url={self.base_url!r}, account_id={self.account_id!r}, "
            f"token=<redacted {token_fingerprint(self._token)}>)"
        )

    def close(self) -> None:
        """Close the own connection pool (a session passed in is left open for its owner)."""
        if self._pool is not None:
            self._pool.clear()

    def __enter__(self) -> InstagramClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def url(self, *segments: str) -> str:
        """``base_url`` joined with path segments, each percent-quoted (an id cannot escape its segment)."""
        return "/".join([self.base_url, *(quote(str(s), safe="!$&'()*+,;=:@") for s in segments)])

    def same_origin(self, url: str) -> bool:
        """True when ``url`` has the scheme and host of ``base_url`` (safe to send the token to)."""
        a, b = urlsplit(url), urlsplit(self.base_url)
        return (a.scheme.lower(), a.netloc.lower()) == (b.scheme.lower(), b.netloc.lower())

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> GraphReply:
        """One call: ``body`` is sent as JSON; timeouts ``(connect_timeout_s, read_timeout_s)``.

        ``url`` must be on ``base_url``'s host; an ``access_token`` in its query is dropped.

        Returns the parsed 2xx JSON object with its usage headers.

        Raises:
            GraphError: the subclass chosen by :func:`~dmworker.graph.errors.map_error` for any
                non-2xx answer, timeout, connection failure, or 2xx without a JSON object
                (:class:`~dmworker.graph.errors.OutcomeUnknownError`).
            ValueError: ``url`` is on another host, or ``body`` is not JSON-serialisable.
        """
        if not self.same_origin(url):
            raise ValueError("refusing to send the token to a URL outside base_url's host")
        url = _without_token(url)
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        started = time.monotonic()
        if self._pool is None:
            status, headers, raw = self._via_session(method, url, params, data)
        else:
            status, headers, raw = self._via_pool(method, url, params, data)
        log.debug("%s %s -> %d (%.0f ms)", method, urlsplit(url).path, status, _ms(started))
        if 200 <= status < 300:
            try:
                payload = json.loads(raw)
            except (ValueError, RecursionError):
                payload = None
            if isinstance(payload, dict) and "error" not in payload:
                return GraphReply(payload, parse_usage(headers), status, headers)
        raise map_error(status=status, headers=headers, body=raw, secrets=(self._token,))

    def _via_pool(
        self, method: str, url: str, params: Mapping[str, str] | None, data: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One exchange on the own urllib3 pool: (status, headers, body), or a mapped GraphError."""
        assert self._pool is not None
        if params:
            url += ("&" if urlsplit(url).query else "?") + urlencode(params)
        headers = self._headers if data is None else {**self._headers, "Content-Type": "application/json"}
        started = time.monotonic()
        error: GraphError | None = None
        try:
            resp = self._pool.request(
                method,
                url,
                body=data,
                headers=headers,
                timeout=self._u3_timeout,
                retries=False,
                redirect=False,
            )
        except (u3ex.HTTPError, OSError) as exc:
            error = map_error(exc=exc, sent=_maybe_sent_u3(exc), secrets=(self._token,))
        if error is not None:  # raised outside the except block: no chained urllib3 objects
            log.debug("%s %s failed after %.0f ms: %r", method, urlsplit(url).path, _ms(started), error)
            raise error
        return resp.status, resp.headers, resp.data

    def _via_session(
        self, method: str, url: str, params: Mapping[str, str] | None, data: bytes | None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One exchange through the caller's ``requests.Session``: (status, headers, body)."""
        assert self._session is not None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        error: GraphError | None = None
        try:
            resp = self._session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                auth=self._auth,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except OSError as exc:  # requests' exceptions are OSErrors
            error = map_error(exc=exc, sent=_maybe_sent(exc), secrets=(self._token,))
        if error is not None:
            log.debug("%s %s failed after %.0f ms: %r", method, urlsplit(url).path, _ms(started), error)
            raise error
        with resp:
            return resp.status_code, resp.headers, resp.content


def _pool_manager(pool_size: int, base_url: str) -> urllib3.PoolManager:
    """The client's own pool: the proxy (``HTTP(S)_PROXY``, ``NO_PROXY``) and the CA bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else certifi's) read once, as ``requests`` does;
    no retries, no redirects, no cookies."""
    proxies = requests.utils.get_environ_proxies(base_url)
    proxy = proxies.get(urlsplit(base_url).scheme) or proxies.get("all")
    ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
    kw: dict[str, Any] = {
        "num_pools": 4,
        "maxsize": pool_size,
        "retries": False,
        "cert_reqs": "CERT_REQUIRED",
    }
    kw["ca_cert_dir" if os.path.isdir(ca) else "ca_certs"] = ca
    if proxy:
        return urllib3.ProxyManager(proxy, **kw)
    return urllib3.PoolManager(**kw)


def _maybe_sent_u3(exc: BaseException) -> bool:
    """Could the request have reached the server before urllib3's ``exc``? Not when connecting,
    the TLS handshake or the proxy failed, nor for a bad URL; yes when the answer timed out or the
    connection broke after the request may have been written."""
    if isinstance(exc, (u3ex.ConnectTimeoutError, u3ex.SSLError, u3ex.ProxyError, u3ex.LocationValueError)):
        return False
    return isinstance(exc, (u3ex.ReadTimeoutError, u3ex.ProtocolError, u3ex.DecodeError, OSError))


def _maybe_sent(exc: BaseException) -> bool:
    """Could the request have reached the server before ``exc``? (With 0 retries urllib3 wraps
    connect-phase failures in ``MaxRetryError``; failures after writing arrive as protocol errors.)"""
    if isinstance(
        exc,
        (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError, requests.exceptions.ProxyError),
    ):
        return False
    if isinstance(
        exc,
        (
            requests.exceptions.ReadTimeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ),
    ):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        return not (exc.args and isinstance(exc.args[0], MaxRetryError))
    return False


def _without_token(url: str) -> str:
    parts = urlsplit(url)
    if "access_token" not in parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "access_token"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
