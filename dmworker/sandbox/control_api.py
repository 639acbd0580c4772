"""The control endpoints ``/_sandbox/<op>`` (JSON in, JSON out) that drive the sandbox over HTTP.

POST with a JSON object body (GET with query parameters works too). A bad argument answers HTTP 400
``{"error": "..."}``; an unknown operation 404. Bodies are never logged (``add_token`` carries a
token).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from .graph import JSON, Answer
from .state import SandboxState, now_ms

PREFIX = "/_sandbox/"
INBOUND_KINDS = ("message", "postback", "reaction")


def _ok(payload: Any = None) -> Answer:
    return Answer(200, json.dumps({"ok": True} if payload is None else payload).encode(), content_type=JSON)


def _fail(status: int, message: str) -> Answer:
    return Answer(status, json.dumps({"error": message}).encode(), content_type=JSON)


class ControlApi:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.ops: dict[str, Callable[..., Any]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }

    def handle(self, method: str, path: str, query: str, body: bytes) -> Answer:
        op = self.ops.get(path[len(PREFIX) :].strip("/"))
        if op is None:
            return _fail(404, f"no control operation {path!r}; known: {', '.join(sorted(self.ops))}")
        try:
            args = json.loads(body) if body else {}
            if not isinstance(args, dict):
                return _fail(400, "the body must be a JSON object")
            if query:
                pairs = parse_qsl(query, keep_blank_values=True)
                args.update({k: (None if v == "" else v) for k, v in pairs})
            return _ok(op(**args))
        except (TypeError, ValueError, KeyError) as exc:
            return _fail(400, f"{type(exc).__name__}: {exc}")

    # each op_<name> is the endpoint /_sandbox/<name>; its return value is the JSON answer
    def op_health(self) -> Any:
        return {"ok": True, "t_ms": now_ms()}

    def op_reset(self) -> None:
        self.state.reset()

    def op_add_token(
        self,
        token: str,
        account: str,
        login: str = "instagram",
        page_id: str | None = None,
        issued_s: float | None = None,
        expires_s: float | None = None,
    ) -> None:
        self.state.add_token(
            str(token),
            str(account),
            str(login),
            None if page_id is None else str(page_id),
            _num(issued_s),
            _num(expires_s),
        )

    def op_set_clock(self, offset_s: float = 0.0) -> Any:
        """Move the token clock (expiry, the 24 h refresh rule) ``offset_s`` seconds from the wall clock."""
        self.state.clock_offset_s = float(offset_s)
        return {"token_now_s": self.state.token_now_s()}

    def op_revoke_token(self, token: str) -> None:
        self.state.revoke_token(str(token))

    def op_open_window(self, account: str, igsid: str, at_ms: float | None = None) -> Any:
        mids = self.state.open_windows(str(account), [str(igsid)], _num(at_ms))
        return {"mid": mids[str(igsid)]}

    def op_open_windows(self, account: str, igsids: list[str], at_ms: float | None = None) -> Any:
        if not isinstance(igsids, list):
            raise TypeError("igsids must be a list")
        return {"opened": len(self.state.open_windows(str(account), [str(i) for i in igsids], _num(at_ms)))}

    def op_add_comment(
        self, account: str, comment_id: str, from_igsid: str, at_ms: float | None = None
    ) -> None:
        self.state.add_comment(str(account), str(comment_id), str(from_igsid), _num(at_ms))

    def op_inbound(
        self,
        account: str,
        sender: str,
        text: str = "hi",
        kind: str = "message",
        at_ms: float | None = None,
        payload: str | None = None,
        reply_to: str | None = None,
        reaction: str = "love",
        mid: str | None = None,
    ) -> Any:
        """A user writes (message), taps (postback) or reacts: opens the window; returns the webhook."""
        if kind not in INBOUND_KINDS:
            raise ValueError(f"kind must be one of {INBOUND_KINDS}")
        account, sender = str(account), str(sender)
        t = now_ms() if at_ms is None else float(at_ms)
        new_mid = self.state.open_windows(account, [sender], t, text, add_message=kind == "message")[sender]
        event: dict[str, Any] = {"sender": {"id": sender}, "recipient": {"id": account}, "timestamp": int(t)}
        if kind == "message":
            event["message"] = {"mid": new_mid, "text": text}
            if reply_to:
                event["message"]["reply_to"] = {"mid": reply_to}
        elif kind == "postback":
            event["postback"] = {"mid": new_mid, "title": text, "payload": payload or text}
        else:
            event["reaction"] = {"mid": mid or new_mid, "action": "react", "reaction": reaction, "emoji": "❤"}
        webhook = {"object": "instagram", "entry": [{"id": account, "time": int(t), "messaging": [event]}]}
        return {"mid": new_mid, "event": event, "webhook": webhook}

    def op_sends(self, account: str | None = None, since: int = 0, limit: int = 20_000) -> Any:
        return self.state.read("sends", account, int(since), int(limit))

    def op_requests(self, account: str | None = None, since: int = 0, limit: int = 20_000) -> Any:
        return self.state.read("requests", account, int(since), int(limit))

    def op_set_latency(self, ms: float) -> None:
        self.state.latency_ms = max(0.0, float(ms))

    def op_set_slow(self, ms: float) -> None:
        self.state.slow_ms = max(0.0, float(ms))

    def op_set_enforce_windows(self, enabled: bool) -> None:
        self.state.enforce_windows = enabled not in (False, "false", "0", 0)

    def op_set_faults(
        self,
        account: str | None = None,
        error_rate: float = 0.0,
        kinds: list[str] | str = "5xx,transient",
        seed: int | None = None,
        next_n: int | None = None,
        slow_ms: float = 2000.0,
    ) -> None:
        names = tuple(kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
        with self.state.lock:
            self.state.gate.set_faults(
                None if account is None else str(account),
                float(error_rate),
                names,
                None if seed is None else int(seed),
                None if next_n is None else int(next_n),
                float(slow_ms),
            )

    def op_set_rate_limit(self, account: str, per_s: int | None) -> None:
        with self.state.lock:
            self.state.gate.set_rate_limit(str(account), None if per_s is None else int(per_s))

    def op_throttle(
        self, account: str, seconds: float, code: int = 4, retry_after_s: float | None = None
    ) -> None:
        with self.state.lock:
            self.state.gate.throttle(
                str(account), float(seconds), int(code), _num(retry_after_s), time.monotonic()
            )

    def op_stats(self) -> Any:
        return self.state.stats()


def _num(value: Any) -> float | None:
    return None if value is None else float(value)
