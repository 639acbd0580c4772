"""Everything the sandbox remembers, behind one lock: tokens, windows, comments, records, limits.

Each public method takes the lock for a short, bounded time; JSON encoding and sleeping happen
outside it. Wall-clock milliseconds (``time.time()``) date windows and records; the rate limit and
throttles use the monotonic clock.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .conversations import Conversations, b64
from .errors import already_replied, bad_token, invalid, no_object, outside_window
from .limits import Gate, Verdict
from .records import PAGE, RecordLog
from .validate import SendSpec

DAY_MS = 86_400_000
WINDOW_MS = DAY_MS
HUMAN_AGENT_MS = 7 * DAY_MS
COMMENT_MS = 7 * DAY_MS
TOKEN_LIFETIME_S = 60 * 86_400  # a long-lived Instagram Login token, and each refreshed one
MIN_REFRESH_AGE_S = 86_400  # Meta refreshes only tokens at least 24 h old
_NONCE = os.urandom(4).hex()  # message ids stay unique across sandbox restarts


def now_ms() -> float:
    return time.time() * 1000.0


def fingerprint(token: str) -> str:
    """The token's fingerprint as dmworker computes it (records never hold a token)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class TokenInfo:
    """What the sandbox knows of one token. Times are epoch seconds on the token clock."""

    account: str
    login: str = "instagram"  # or "facebook": a Page token
    page_id: str | None = None
    issued_s: float | None = None
    expires_s: float | None = None  # None: never expires


class SandboxState:
    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        latency_ms: float = 0.0,
        enforce_windows: bool = True,
        max_requests: int | None = 1_000_000,
    ) -> None:
        self.lock = threading.Lock()
        self.tokens: dict[str, str] = dict(tokens or {})
        self.token_info: dict[str, TokenInfo] = {}
        self.clock_offset_s = 0.0  # the token clock: wall clock + offset (simulated days)
        self.revoked: set[str] = set()
        self.initial = (float(latency_ms), bool(enforce_windows))
        self.sends = RecordLog()
        self.requests = RecordLog(cap=max_requests)
        self.conversations = Conversations()
        self.gate = Gate()
        self._ids = itertools.count(1)
        self.started_ms = now_ms()
        self.reset()

    def reset(self) -> None:
        """Forget records, windows, comments, conversations, faults, throttles, limits, slow mode.

        Keeps the tokens (added and refreshed ones too) and un-revokes revoked ones; the token clock,
        latency and window enforcement go back to the values the sandbox was started with.
        """
        with self.lock:
            self.revoked.clear()
            self.clock_offset_s = 0.0
            self.latency_ms, self.enforce_windows = self.initial
            self.slow_ms = 0.0
            self.windows: dict[tuple[str, str], float] = {}
            self.comments: dict[tuple[str, str], dict[str, Any]] = {}
            self.sends.clear()
            self.sends_by_account: Counter[str] = Counter()
            self.requests.clear()
            self.conversations.clear()
            self.gate.reset()

    # ---- tokens -------------------------------------------------------------------------------
    def add_token(
        self,
        token: str,
        account: str,
        login: str = "instagram",
        page_id: str | None = None,
        issued_s: float | None = None,
        expires_s: float | None = None,
    ) -> None:
        """Accept ``token`` for ``account``; a ``facebook`` token is a Page token of ``page_id``."""
        if login not in ("instagram", "facebook"):
            raise ValueError("login must be instagram or facebook")
        if login == "facebook" and not page_id:
            raise ValueError("a facebook (Page) token needs page_id")
        with self.lock:
            self.tokens[token] = str(account)
            self.token_info[token] = TokenInfo(str(account), login, page_id, issued_s, expires_s)
            self.revoked.discard(token)

    def revoke_token(self, token: str) -> None:
        with self.lock:
            self.revoked.add(token)

    def token_now_s(self) -> float:
        return time.time() + self.clock_offset_s

    def info_of(self, token: str) -> TokenInfo:
        """What is known of an accepted token (defaults for tokens given at start)."""
        return self.token_info.get(token) or TokenInfo(self.tokens[token])

    def account_for(self, token: str | None) -> str:
        """The token's account, or raise the code 190 answer (unknown, revoked or expired)."""
        if not token:
            raise bad_token(missing=True)
        account = self.tokens.get(token)
        if account is None:
            raise bad_token()
        if token in self.revoked:
            raise bad_token(revoked=True)
        info = self.token_info.get(token)
        if info is not None and info.expires_s is not None and self.token_now_s() >= info.expires_s:
            raise bad_token(expired=True)
        return account

    def refresh_token(self, token: str) -> dict[str, Any]:
        """``GET /refresh_access_token``: a new 60-day token for an Instagram Login token that is
        at least 24 h old and not expired (``account_for`` has refused revoked and expired ones)."""
        with self.lock:
            info = self.info_of(token)
            now = self.token_now_s()
            if info.login != "instagram":
                raise invalid("only Instagram user access tokens can be refreshed here")
            if info.issued_s is not None and now - info.issued_s < MIN_REFRESH_AGE_S:
                raise invalid("the access token must be at least 24 hours old to be refreshed")
            new = "IGAAsbx" + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")
            self.tokens[new] = info.account
            self.token_info[new] = TokenInfo(info.account, "instagram", None, now, now + TOKEN_LIFETIME_S)
        return {"access_token": new, "token_type": "bearer", "expires_in": TOKEN_LIFETIME_S}

    def account_name(self, account: str) -> str:
        return f"sandbox_{account}"

    # ---- inbound side -------------------------------------------------------------------------
    def new_mid(self, account: str) -> str:
        return b64(f"ig_message_item:1:IGMessageId:{account}:{_NONCE}{next(self._ids):x}")

    def open_windows(
        self,
        account: str,
        igsids: list[str],
        at_ms: float | None = None,
        text: str = "hi",
        add_message: bool = True,
    ) -> dict[str, str]:
        """Simulated inbound user messages: (re)open each window as of ``at_ms`` (default now).

        ``at_ms`` sets the user's last message time (it may move a window back into the past).
        Returns {igsid: inbound message id}.
        """
        t = now_ms() if at_ms is None else float(at_ms)
        out = {}
        with self.lock:
            for igsid in igsids:
                self.windows[(account, str(igsid))] = t
                mid = self.new_mid(account)
                if add_message:
                    self.conversations.add(account, str(igsid), mid, t, False, text)
                out[str(igsid)] = mid
        return out

    def add_comment(self, account: str, comment_id: str, from_igsid: str, at_ms: float | None) -> None:
        t = now_ms() if at_ms is None else float(at_ms)
        with self.lock:
            comment = {"from": str(from_igsid), "at_ms": t, "replied": False}
            self.comments[(account, str(comment_id))] = comment

    # ---- Graph requests -----------------------------------------------------------------------
    def check(self, account: str) -> Verdict:
        with self.lock:
            return self.gate.check(account, time.monotonic())

    def usage_pct(self, account: str) -> int:
        with self.lock:
            return self.gate.usage_pct(account, time.monotonic())

    def commit_send(
        self,
        account: str,
        spec: SendSpec,
        body: dict[str, Any],
        token_fp: str | None = None,
        path: str | None = None,
    ) -> dict[str, str]:
        """Apply window and private-reply rules, record the send; the success body, or raise."""
        with self.lock:
            t = now_ms()
            if spec.comment_id is not None:
                igsid = self._private_reply(account, spec.comment_id, t)
                recipient = f"comment:{spec.comment_id}"
            else:
                igsid = recipient = spec.recipient_id or ""
                if self.enforce_windows:
                    last = self.windows.get((account, igsid))
                    limit = HUMAN_AGENT_MS if spec.human_agent else WINDOW_MS
                    if last is None or t - last > limit:
                        raise outside_window()
            mid = None if spec.is_action else self.new_mid(account)
            self.sends.append(
                {
                    "seq": 0,
                    "t_ms": t,
                    "account": account,
                    "recipient": recipient,
                    "kind": spec.kind,
                    "body": body,
                    "message_id": mid,
                    "token_fp": token_fp,
                    "path": path,
                }
            )
            self.sends.counts[spec.kind] += 1
            self.sends_by_account[account] += 1
            if mid is None:
                return {"recipient_id": igsid}
            self.conversations.add(account, igsid, mid, t, True, spec.text)
            return {"recipient_id": igsid, "message_id": mid}

    def _private_reply(self, account: str, comment_id: str, t: float) -> str:
        comment = self.comments.get((account, comment_id))
        if comment is None:
            if self.enforce_windows:
                raise no_object(comment_id, "post")
            comment = {"from": f"commenter_{comment_id}", "at_ms": t, "replied": False}
            self.comments[(account, comment_id)] = comment
        if comment["replied"]:
            raise already_replied(comment_id)
        if self.enforce_windows and t - comment["at_ms"] > COMMENT_MS:
            raise outside_window()
        comment["replied"] = True
        return str(comment["from"])

    def record_request(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(record)
            self.requests.counts[str(record["status"])] += 1

    # ---- reading back -------------------------------------------------------------------------
    def read(self, which: str, account: str | None, since: int, limit: int = PAGE) -> dict[str, Any]:
        log = self.sends if which == "sends" else self.requests
        with self.lock:
            items, last = log.since(int(since), account, min(int(limit), PAGE))
            more = bool(log.items) and last < log.items[-1]["seq"]
        return {"items": items, "next_since": last, "more": more}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "sends": len(self.sends.items),
                "requests": len(self.requests.items),
                "sends_by_kind": dict(self.sends.counts),
                "requests_by_status": dict(self.requests.counts),
                "sends_by_account": dict(self.sends_by_account),
                "windows": len(self.windows),
                "comments": len(self.comments),
                "conversations": len(self.conversations.by_id),
                "tokens": len(self.tokens),
                "revoked": len(self.revoked),
                "latency_ms": self.latency_ms,
                "slow_ms": self.slow_ms,
                "enforce_windows": self.enforce_windows,
                "uptime_s": (now_ms() - self.started_ms) / 1000,
            }

    def find_object(self, account: str, obj_id: str) -> Any:
        """The conversation or message ``obj_id`` of ``account`` (call with the lock held)."""
        conv = self.conversations.by_id.get(obj_id)
        if conv is not None and conv.account == account:
            return conv
        msg = self.conversations.messages.get(obj_id)
        if msg is not None and msg.conv.account == account:
            return msg
        raise no_object(obj_id)
