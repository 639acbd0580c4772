"""Job ids and the status a producer reads back (:class:`JobStatus`)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .lifecycle import STATES, normalize

__all__ = ["STATES", "Job", "JobError", "JobStatus", "WindowInfo", "new_job_id"]

_counter_lock = threading.Lock()
_counter = 0


def new_job_id(account: str, n: int = 1) -> list[str]:
    """``n`` fresh job ids ``<account>.<time><counter><random>[-<step>]`` sorting in creation order.

    The ids of one call share a base and end in ``-00``, ``-01``, ... so that the steps of a
    sequence sort in order even when they are scheduled at the same due time.
    """
    global _counter
    with _counter_lock:
        _counter = (_counter + 1) % 0xFFFF
        c = _counter
    base = f"{account}.{int(time.time() * 1000):012x}{c:04x}{os.urandom(5).hex()}"
    if n == 1:
        return [base]
    return [f"{base}-{i:02d}" for i in range(n)]


@dataclass(frozen=True)
class JobError:
    """The last error of a job: Graph ``code``/``subcode`` when Meta gave them."""

    kind: str
    message: str
    code: int | None = None
    subcode: int | None = None
    fbtrace_id: str | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class JobStatus:
    """What a producer can know about a job.  Times are epoch milliseconds (Redis clock)."""

    id: str
    account: str
    recipient: str
    state: str
    attempts: int
    created_ms: int
    updated_ms: int
    due_ms: int | None = None
    sent_ms: int | None = None
    next_attempt_ms: int | None = None
    message_id: str | None = None
    last_error: JobError | None = None
    key: str | None = None
    dead_lettered: bool = False
    kind: str | None = None
    expires_at_ms: int | None = None
    ended_ms: int | None = None
    lane: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_redis(cls, job_id: str, account: str, status_json: str, job_json: str | None) -> JobStatus:
        """A producer's view of a status record (``lane`` is where it queues: ``c:<id>`` for a
        private reply, whose ``recipient`` is the comment id as given)."""
        st: dict[str, Any] = dict(normalize(json.loads(status_json)))
        err = st.get("error")
        lane = str(st.get("lane", ""))
        kind = None
        if job_json:
            try:
                kind = json.loads(job_json).get("kind")
            except ValueError:
                kind = None
        return cls(
            id=job_id,
            account=account,
            recipient=lane[2:] if kind == "private_reply" and lane.startswith("c:") else lane,
            state=st["state"],
            attempts=int(st.get("attempts", 0)),
            created_ms=int(st.get("created_ms", 0)),
            updated_ms=int(st.get("updated_ms", 0)),
            due_ms=_int(st.get("due_ms")),
            sent_ms=_int(st.get("sent_ms")),
            next_attempt_ms=_int(st.get("next_attempt_ms")) if st["state"] == "waiting" else None,
            message_id=st.get("message_id"),
            last_error=JobError(
                kind=str(err.get("kind", "error")),
                message=str(err.get("message", "")),
                code=_int(err.get("code")),
                subcode=_int(err.get("subcode")),
                fbtrace_id=err.get("fbtrace_id"),
                http_status=_int(err.get("http_status")),
            )
            if isinstance(err, dict)
            else None,
            key=st.get("key"),
            dead_lettered=bool(st.get("dead_lettered")),
            kind=kind,
            expires_at_ms=_int(st.get("expires_at_ms")),
            ended_ms=_int(st.get("ended_ms")),
            lane=lane,
            raw=st,
        )

    @property
    def timeline(self) -> list[list[Any]]:
        """The job's history ``[ms, what, detail(, count)]``, oldest first (see Outbox.timeline)."""
        history = self.raw.get("history")
        return [list(h) for h in history] if isinstance(history, list) else []

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the HTTP API and the CLI print this)."""
        out: dict[str, Any] = {
            "id": self.id,
            "account": self.account,
            "recipient": self.recipient,
            "kind": self.kind,
            "state": self.state,
            "attempts": self.attempts,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "due_ms": self.due_ms,
            "sent_ms": self.sent_ms,
            "next_attempt_ms": self.next_attempt_ms,
            "message_id": self.message_id,
            "key": self.key,
            "dead_lettered": self.dead_lettered,
            "expires_at_ms": self.expires_at_ms,
            "ended_ms": self.ended_ms,
            "seen_ms": _int(self.raw.get("seen_ms")),
            "timeline": self.timeline,
            "last_error": None,
        }
        if self.last_error is not None:
            out["last_error"] = dict(self.last_error.__dict__)
        return out


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass(frozen=True)
class Job:
    """A handle on an accepted job (``ids`` has every step of a sequence; ``id`` is the first)."""

    id: str
    ids: tuple[str, ...]
    account: str
    recipient: str
    due_ms: int | None
    duplicate: bool = False


@dataclass(frozen=True)
class WindowInfo:
    """The messaging window of one user.  Times are epoch milliseconds (Redis clock)."""

    recipient: str
    open: bool
    last_user_message_ms: int | None
    closes_at_ms: int | None
    human_agent_open: bool
    human_agent_closes_at_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
