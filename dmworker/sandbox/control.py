"""The Python client of the sandbox's control endpoints (``/_sandbox/...``), over HTTP.

Works the same against a :class:`~dmworker.sandbox.SandboxServer` in this process or a
:class:`~dmworker.sandbox.SandboxProcess`. Close it (or use ``with``) to release its connections.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import requests


class SandboxError(RuntimeError):
    """A control call was refused (bad argument, unknown operation)."""


class SandboxControl:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: str, **args: Any) -> Any:
        """POST ``args`` as JSON to ``/_sandbox/<op>``; the decoded answer."""
        resp = self._session.post(f"{self.url}/_sandbox/{op}", json=args, timeout=self.timeout_s)
        payload = resp.json()
        if resp.status_code != 200:
            raise SandboxError(f"{op}: {payload.get('error', resp.text)}")
        return payload

    def health(self) -> dict[str, Any]:
        return dict(self.call("health"))

    def reset(self) -> None:
        """Forget records, windows, comments, conversations, faults, throttles, limits, slow mode.

        Keeps tokens (un-revoking revoked ones); the token clock, latency and window enforcement
        return to their start-up values.
        """
        self.call("reset")

    def add_token(
        self,
        token: str,
        account_id: str,
        login: str = "instagram",
        page_id: str | None = None,
        issued_s: float | None = None,
        expires_s: float | None = None,
    ) -> None:
        """Accept ``token`` for ``account_id``. ``login="facebook"``: a Page token of ``page_id``
        (sends go to ``/<page_id>/messages``). ``issued_s``/``expires_s`` (epoch s on the token
        clock): expired tokens answer code 190 (subcode 463); refresh needs 24 h of age."""
        self.call(
            "add_token",
            token=token,
            account=account_id,
            login=login,
            page_id=page_id,
            issued_s=issued_s,
            expires_s=expires_s,
        )

    def set_clock(self, offset_s: float) -> float:
        """Run the token clock ``offset_s`` seconds ahead of the wall clock (simulated days); its now."""
        return float(self.call("set_clock", offset_s=offset_s)["token_now_s"])

    def refreshes(self, account: str | None = None) -> list[dict[str, Any]]:
        """The ``GET /refresh_access_token`` requests (accepted or refused) of ``account``."""
        return [r for r in self.requests(account) if r.get("kind") == "refresh"]

    def revoke_token(self, token: str) -> None:
        self.call("revoke_token", token=token)

    def open_window(self, account: str, igsid: str, at_ms: float | None = None) -> str:
        """A simulated inbound message from ``igsid``, at ``at_ms`` (epoch ms, default now); its mid."""
        return str(self.call("open_window", account=account, igsid=igsid, at_ms=at_ms)["mid"])

    def open_windows(self, account: str, igsids: Iterable[str], at_ms: float | None = None) -> int:
        return int(self.call("open_windows", account=account, igsids=list(igsids), at_ms=at_ms)["opened"])

    def add_comment(self, account: str, comment_id: str, from_igsid: str, at_ms: float | None = None) -> None:
        self.call("add_comment", account=account, comment_id=comment_id, from_igsid=from_igsid, at_ms=at_ms)

    def inbound(
        self, account: str, sender: str, text: str = "hi", kind: str = "message", **extra: Any
    ) -> dict[str, Any]:
        """A user message/postback/reaction: opens the window. Returns ``{"mid", "event", "webhook"}``
        where ``webhook`` is the webhook body Meta would POST (graph-api.md §7).
        Extra keywords: ``at_ms``, ``payload`` (postback), ``reply_to`` (a mid), ``reaction``, ``mid``."""
        return dict(self.call("inbound", account=account, sender=sender, text=text, kind=kind, **extra))

    def _read(self, op: str, account: str | None, since: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.call(op, account=account, since=since)
            out.extend(page["items"])
            since = page["next_since"]
            if not page["more"]:
                return out

    def sends(self, account: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Accepted sends with ``seq > since``, in arrival order: ``{"seq", "t_ms", "account",
        "recipient", "kind", "body", "message_id", "token_fp", "path"}``."""
        return self._read("sends", account, since)

    def requests(self, account: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Every Graph request with ``seq > since`` (rejected ones too): ``{"seq", "t_ms", "account",
        "method", "path", "status", "error_code", "error_subcode", "kind", "recipient", "fault",
        "token_fp"}`` (``token_fp``: the fingerprint of the token it carried; ``kind`` "refresh"
        for token refreshes)."""
        return self._read("requests", account, since)

    def set_latency(self, ms: float) -> None:
        self.call("set_latency", ms=ms)

    def set_slow(self, ms: float) -> None:
        self.call("set_slow", ms=ms)

    def set_enforce_windows(self, enabled: bool) -> None:
        self.call("set_enforce_windows", enabled=enabled)

    def set_faults(
        self,
        account: str | None = None,
        error_rate: float = 0.0,
        kinds: Iterable[str] = ("5xx", "transient"),
        seed: int | None = None,
        next_n: int | None = None,
        slow_ms: float = 2000.0,
    ) -> None:
        """Faults for ``account`` (None: any account without its own plan). ``next_n``: exactly the
        next N requests fail, taking ``kinds`` in turn; else each fails with ``error_rate``. Kinds:
        "5xx", "transient", "slow" (answer after ``slow_ms``), "disconnect", "503" (HTML body)."""
        self.call(
            "set_faults",
            account=account,
            error_rate=error_rate,
            kinds=list(kinds),
            seed=seed,
            next_n=next_n,
            slow_ms=slow_ms,
        )

    def set_rate_limit(self, account: str, per_s: int | None) -> None:
        """At most ``per_s`` calls of ``account`` in any sliding second (None or 0: no limit)."""
        self.call("set_rate_limit", account=account, per_s=per_s)

    def throttle(
        self, account: str, seconds: float, code: int = 4, retry_after_s: float | None = None
    ) -> None:
        """For the next ``seconds`` every request of ``account`` answers throttle error ``code``
        (4, 17, 32, 341, 368, 613, 80002, 80006, or 429 for HTTP 429 with Retry-After)."""
        self.call("throttle", account=account, seconds=seconds, code=code, retry_after_s=retry_after_s)

    def stats(self) -> dict[str, Any]:
        return dict(self.call("stats"))
