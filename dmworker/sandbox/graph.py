"""The Graph endpoints: auth, the gate (throttle, rate limit, faults), send, conversations, objects.

:meth:`GraphApp.handle` turns one HTTP request into an :class:`Answer` and records it; the HTTP
layer only reads bytes in and writes the answer out. Any ``/vNN.N/`` prefix (or none) is accepted.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .conversations import DETAIL_LIMIT, Conversation, Conversations, iso, render_message
from .errors import GraphError, invalid, no_object
from .fields import Fields, parse_fields
from .state import SandboxState, fingerprint, now_ms
from .validate import validate_send

JSON = "application/json; charset=UTF-8"
VERSION_RE = re.compile(r"v\d+(?:\.\d+)?")
UNAVAILABLE = (
    b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
    b"<body><h1>503 Service Unavailable</h1><p>Sorry, something went wrong.</p></body></html>"
)
MESSAGE_FIELDS = frozenset({"id", "created_time", "from", "to", "message"})
CONVERSATION_FIELDS = frozenset({"id", "updated_time", "participants", "messages"})
ID_ONLY: Fields = {"id": (None, None)}  # default fields of each node
ID_TIME: Fields = {"id": (None, None), "created_time": (None, None)}
ID_NAME: Fields = {"id": (None, None), "username": (None, None)}


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = JSON
    delay_s: float = 0.0  # sleep this long before answering (slow mode; the send is already recorded)
    disconnect: bool = False  # close the connection without answering


def _form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form or query parameters; values that are JSON objects/lists are decoded (Meta's old style)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if value[:1] in ("{", "["):
            try:
                out[key] = json.loads(value)
                continue
            except ValueError:
                pass
        out[key] = value
    return out


def usage_headers(account: str | None, pct: int, regain_min: int = 0) -> list[tuple[str, str]]:
    headers = [("X-App-Usage", f'{{"call_count":{pct},"total_time":{pct},"total_cputime":{pct}}}')]
    if account is not None:
        headers.append(
            (
                "X-Business-Use-Case-Usage",
                f'{{{json.dumps(account)}:[{{"type":"instagram","call_count":{pct},'
                f'"total_cputime":{pct},"total_time":{pct},'
                f'"estimated_time_to_regain_access":{regain_min}}}]}}',
            )
        )
    return headers


class GraphApp:
    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def handle(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, host: str
    ) -> Answer:
        """Answer one Graph request; ``headers`` has lower-case names."""
        state = self.state
        record: dict[str, Any] = {
            "seq": 0,
            "t_ms": now_ms(),
            "account": None,
            "method": method,
            "path": path,
            "status": 200,
            "error_code": None,
            "error_subcode": None,
            "kind": None,
            "recipient": None,
            "fault": None,
            "token_fp": None,
        }
        if path.rstrip("/").endswith("/refresh_access_token"):
            record["kind"] = "refresh"  # recorded as such even when the token is refused
        pct, regain, delay_s, extra = 0, 0, 0.0, []
        try:
            if state.latency_ms > 0:
                time.sleep(state.latency_ms / 1000.0)
            params = _form(parse_qsl(query)) if query else {}
            data, body_error = self._body(headers, body) if method == "POST" else ({}, None)
            auth = headers.get("authorization") or ""
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            in_query, in_body = params.pop("access_token", None), data.pop("access_token", None)
            token = token or in_query or in_body
            record["token_fp"] = fingerprint(token) if token else None
            account = record["account"] = state.account_for(token)
            verdict = state.check(account)
            pct, record["fault"] = verdict.pct, verdict.fault
            if verdict.error is not None:
                raise verdict.error
            if verdict.fault == "disconnect":
                record["status"] = 0
                state.record_request(record)
                return Answer(0, b"", disconnect=True)
            if verdict.fault == "503":
                record["status"] = 503
                state.record_request(record)
                return Answer(503, UNAVAILABLE, usage_headers(account, pct), "text/html; charset=utf-8")
            delay_s = verdict.slow_ms / 1000.0
            if body_error is not None:
                raise body_error
            payload = self._route(method, path, params, data, account, record, host, query, token or "")
            status, out = 200, json.dumps(payload).encode()
        except GraphError as err:
            status, out, extra = err.status, err.body(), err.headers
            record["error_code"], record["error_subcode"] = err.code, err.subcode
            if err.pct is not None:
                pct = err.pct
            regain = err.regain_min
        record["status"] = status
        state.record_request(record)
        delay_s = max(delay_s, state.slow_ms / 1000.0)
        return Answer(status, out, usage_headers(record["account"], pct, regain) + extra, delay_s=delay_s)

    @staticmethod
    def _body(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], GraphError | None]:
        if not body:
            return {}, None
        ctype = (headers.get("content-type") or "").lower()
        try:
            if "x-www-form-urlencoded" in ctype:
                return _form(parse_qsl(body.decode("utf-8"), keep_blank_values=True)), None
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return {}, invalid("the request body is not valid JSON")
        if not isinstance(data, dict):
            return {}, invalid("the body must be a JSON object")
        return data, None

    def _route(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        data: dict[str, Any],
        account: str,
        record: dict[str, Any],
        host: str,
        query: str,
        token: str,
    ) -> dict[str, Any]:
        segs = [s for s in path.split("/") if s]
        prefix = ""
        if segs and VERSION_RE.fullmatch(segs[0]):
            prefix = "/" + segs.pop(0)
        info = self.state.info_of(token)
        # a Page token (Facebook Login) names the Page in paths, an Instagram token the IG account
        me = ("me", info.page_id) if info.login == "facebook" else ("me", account)
        if method == "GET" and segs == ["refresh_access_token"]:
            record["kind"] = "refresh"
            if params.get("grant_type") != "ig_refresh_token":
                raise invalid("grant_type must be ig_refresh_token")
            return self.state.refresh_token(token)
        if method == "POST" and len(segs) == 2 and segs[1] == "messages":
            if segs[0] not in me:
                raise no_object(segs[0], method)
            return self._send(account, {**params, **data}, record)
        if method != "GET" or not 1 <= len(segs) <= 2:
            raise no_object(segs[0] if segs else "", method)
        base = f"http://{host}{prefix}"
        token_q = dict(kv for kv in parse_qsl(query) if kv[0] == "access_token")
        if segs[-1] == "conversations" and len(segs) == 2 and segs[0] in me:
            return self._conversations(account, params, base, token_q)
        fields = parse_fields(params.get("fields", ""))
        with self.state.lock:
            if len(segs) == 2 and segs[1] == "messages":
                conv = self.state.find_object(account, segs[0])
                if not isinstance(conv, Conversation):
                    raise no_object(segs[0])
                return self._messages_edge(
                    conv, fields or ID_TIME, _limit(params, 20), params.get("after"), base, token_q
                )
            if len(segs) == 2:
                raise no_object(segs[0])
            if segs[0] in me:
                me_obj = {"id": account, "user_id": account, "username": self.state.account_name(account)}
                return {k: v for k, v in me_obj.items() if k in (fields or ID_NAME)}
            obj = self.state.find_object(account, segs[0])
            if isinstance(obj, Conversation):
                return self._conversation(obj, fields or ID_ONLY, base, token_q)
            _check_fields(fields, MESSAGE_FIELDS, "IGMessage")
            if obj.conv.messages[-DETAIL_LIMIT:][0].t_ms > obj.t_ms:
                raise invalid("only the 20 most recent messages of a conversation can be read in detail")
            names = set(fields or ("id", "created_time"))
            return render_message(obj, names, self.state.account_name(account))

    def _send(self, account: str, data: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        rec = data.get("recipient")
        if isinstance(rec, dict):
            record["recipient"] = (
                f"comment:{rec['comment_id']}"
                if "comment_id" in rec
                else str(rec["id"])
                if "id" in rec
                else None
            )
        spec = validate_send(data)
        record["kind"] = spec.kind
        return self.state.commit_send(account, spec, data, record["token_fp"], record["path"])

    def _conversations(
        self, account: str, params: dict[str, Any], base: str, token_q: dict[str, str]
    ) -> dict[str, Any]:
        if params.get("platform", "instagram") != "instagram":
            raise invalid("platform must be instagram")
        fields = parse_fields(params.get("fields", "")) or ID_ONLY
        _check_fields(fields, CONVERSATION_FIELDS, "IGConversation")
        limit = _limit(params, 25)
        with self.state.lock:
            try:
                convs, cursors, has_next = self.state.conversations.page(
                    account, params.get("user_id"), params.get("after"), params.get("before"), limit
                )
            except ValueError:
                raise invalid("the paging cursor is not valid") from None
            data = [self._conversation(c, fields, base, token_q) for c in convs]
        paging: dict[str, Any] = {"cursors": cursors}
        if has_next:
            query = {k: v for k, v in params.items() if k not in ("after", "before") and isinstance(v, str)}
            paging["next"] = f"{base}/me/conversations?" + urlencode(
                {**query, **token_q, "limit": str(limit), "after": cursors["after"]}
            )
        return {"data": data, "paging": paging}

    def _conversation(
        self, conv: Conversation, fields: dict[str, Any], base: str, token_q: dict[str, str]
    ) -> dict[str, Any]:
        _check_fields(fields, CONVERSATION_FIELDS, "IGConversation")
        out: dict[str, Any] = {"id": conv.id}
        if "updated_time" in fields:
            out["updated_time"] = iso(conv.updated_ms)
        if "participants" in fields:
            out["participants"] = {
                "data": [
                    {"username": self.state.account_name(conv.account), "id": conv.account},
                    {"username": f"user_{conv.igsid}", "id": conv.igsid},
                ]
            }
        if "messages" in fields:
            sub, limit = fields["messages"]
            out["messages"] = self._messages_edge(conv, sub or ID_TIME, limit or 20, None, base, token_q)
        return out

    def _messages_edge(
        self,
        conv: Conversation,
        fields: dict[str, Any],
        limit: int,
        after: str | None,
        base: str,
        token_q: dict[str, str],
    ) -> dict[str, Any]:
        _check_fields(fields, MESSAGE_FIELDS, "IGMessage")
        try:
            chosen, cursors, has_next = Conversations.message_page(conv, after, limit)
        except ValueError:
            raise invalid("the paging cursor is not valid") from None
        name = self.state.account_name(conv.account)
        data = [
            render_message(m, set(fields), name) if rank < DETAIL_LIMIT else {"id": m.mid}
            for rank, m in chosen
        ]
        paging: dict[str, Any] = {"cursors": cursors}
        if has_next:
            query = {
                "fields": ",".join(sorted(fields)),
                **token_q,
                "limit": str(limit),
                "after": cursors["after"],
            }
            paging["next"] = f"{base}/{conv.id}/messages?" + urlencode(query)
        return {"data": data, "paging": paging}


def _limit(params: dict[str, Any], default: int) -> int:
    raw = params.get("limit", default)
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise invalid("limit must be an integer") from None
    if not 1 <= limit <= 100:
        raise invalid("limit must be between 1 and 100")
    return limit


def _check_fields(fields: dict[str, Any], allowed: frozenset[str], node: str) -> None:
    for name in fields:
        if name not in allowed:
            raise GraphError(
                400, 100, f"(#100) Tried accessing nonexisting field ({name}) on node type ({node})"
            )
