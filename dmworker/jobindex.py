"""Find jobs without scanning Redis: the per-account search index the dashboard and operators use.

Every job is indexed when it is accepted and re-indexed on every change of state, in the same Lua
call (``lua/_lifecycle.lua``: ``ix_add``, ``ix_state``, ``ix_del``); its entries leave with it
(retention, dead-letter cap, purge, forgetting a person).  The index is one ZSET per account,
``P:{A}:ix``, every member of score 0 so that lexical ranges select a prefix in O(log n + page)::

    a|<created ms, 13 digits>|<id>            every job, by acceptance time
    r|<lane>|<created>|<id>                   by recipient (the IGSID, or c:<comment id>)
    s|<bucket>|<created>|<id>                 by state (see :data:`BUCKETS`)
    k|<follow-up key>|<created>|<id>          by follow-up key
    d|<error kind>|<dead-lettered ms>|<id>    dead letters by error

Pages are newest first; a page's ``cursor`` is the last member returned (exclusive bound of the
next page).  Jobs accepted before the index existed are found by id and message id only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .keys import AccountKeys
from .lifecycle import normalize

#: State buckets of the index: ``pending`` is queued, waiting or sending; ``dead`` a dead letter.
BUCKETS = ("scheduled", "pending", "sent", "seen", "failed", "cancelled", "expired", "dead")
_PENDING = frozenset({"queued", "waiting", "sending"})
#: Members read per round trip while filtering.
SCAN_PAGE = 500


def bucket(rec: Mapping[str, Any]) -> str:
    """The index bucket of a (normalized) status record."""
    if rec.get("dead_lettered"):
        return "dead"
    state = str(rec.get("state") or "queued")
    return "pending" if state in _PENDING else state


def _c13(ms: Any) -> str:
    return f"{int(ms or 0):013d}"


def error_kind(rec: Mapping[str, Any]) -> str:
    err = rec.get("error")
    kind = err.get("kind") if isinstance(err, dict) else None
    return kind if isinstance(kind, str) and kind else "unknown"


def members(job_id: str, rec: Mapping[str, Any]) -> list[str]:
    """Every index member of a job (the same strings the Lua side writes)."""
    c = _c13(rec.get("created_ms"))
    out = [f"a|{c}|{job_id}", f"r|{rec.get('lane') or ''}|{c}|{job_id}", f"s|{bucket(rec)}|{c}|{job_id}"]
    if rec.get("key"):
        out.append(f"k|{rec['key']}|{c}|{job_id}")
    if rec.get("dead_lettered"):
        out.append(f"d|{error_kind(rec)}|{_c13(rec.get('ended_ms'))}|{job_id}")
    return out


def unindex(r: Any, k: AccountKeys, ids: list[str], batch: int = 500) -> int:
    """Remove the index entries of ``ids`` (read from their status records; call before deleting
    them).  Returns how many members were removed."""
    removed = 0
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        doomed: list[str] = []
        for job_id, raw in zip(chunk, r.hmget(k.status, chunk), strict=True):
            if not raw:
                continue
            try:
                rec = normalize(json.loads(raw))
            except (ValueError, TypeError, AttributeError):
                continue
            doomed += members(job_id, rec)
        if doomed:
            removed += int(r.zrem(k.index, *doomed))
    return removed


@dataclass(frozen=True)
class Page:
    """One page of a search, newest first: ``items`` are ``(tail, job id)`` where the tail is
    ``"<ms, 13 digits>|<id>"`` (the sort key, comparable across accounts); ``cursor`` is the tail to
    continue after (``None``: nothing more)."""

    items: list[tuple[str, str]]
    cursor: str | None

    @property
    def ids(self) -> list[str]:
        return [job_id for _, job_id in self.items]


def _split(member: str) -> tuple[str, str, str]:
    """(prefix with its value, time, id) of a member; the value may itself contain ``|``."""
    head, t, job_id = member.rsplit("|", 2)
    return head, t, job_id


def page(
    r: Any,
    k: AccountKeys,
    prefix: str,
    *,
    limit: int = 50,
    after: str | None = None,
    since_ms: int | None = None,
    keep: Any = None,
) -> Page:
    """Jobs under ``prefix`` (``"a|"``, ``"r|<lane>|"``, ``"s|<bucket>|"``, ``"k|<key>|"``,
    ``"d|<kind>|"``), newest first, at most ``limit``, older than the tail ``after``; ``since_ms``
    keeps members whose time is at least that (ms); ``keep(ids) -> list[bool]`` filters further
    (reads are then made :data:`SCAN_PAGE` members at a time, at most 20 of them per page: a sparse
    filter returns a short page with a cursor to go on).
    """
    head = prefix[:-1]
    hi = "(" + prefix + after if after else "[" + prefix + "\xff"
    lo = "[" + prefix + (_c13(since_ms) if since_ms is not None else "")
    items: list[tuple[str, str]] = []
    last: str | None = None
    want = SCAN_PAGE if keep is not None else limit + 1
    for _ in range(20):
        got = r.zrevrangebylex(k.index, hi, lo, start=0, num=want)
        exact = [(f"{t}|{j}", j) for h, t, j in map(_split, got) if h == head]  # a value may hold '|'
        flags = keep([j for _, j in exact]) if keep is not None else [True] * len(exact)
        for (tail, job_id), ok in zip(exact, flags, strict=True):
            if ok:
                if len(items) == limit:
                    return Page(items, last)
                items.append((tail, job_id))
            last = tail
        if len(got) < want:
            return Page(items, None)
        hi = "(" + got[-1]
        last = got[-1][len(prefix) :]  # scanned this far (the range goes on after it)
    return Page(items, last)


def count(r: Any, k: AccountKeys, prefix: str, since_ms: int | None = None) -> int:
    """How many members are under ``prefix`` (with time at least ``since_ms``): ``ZLEXCOUNT``."""
    lo = "[" + prefix + (_c13(since_ms) if since_ms is not None else "")
    return int(r.zlexcount(k.index, lo, "[" + prefix + "\xff"))


def ids_under(r: Any, k: AccountKeys, prefix: str, since_ms: int | None = None) -> Iterable[list[str]]:
    """Every job id under ``prefix`` (time at least ``since_ms``), oldest first, in batches of
    :data:`SCAN_PAGE` (a walk of the index range only, for bulk actions)."""
    head = prefix[:-1]
    lo = "[" + prefix + (_c13(since_ms) if since_ms is not None else "")
    hi = "[" + prefix + "\xff"
    while True:
        got = r.zrangebylex(k.index, lo, hi, start=0, num=SCAN_PAGE)
        batch = [_split(m)[2] for m in got if _split(m)[0] == head]
        if batch:
            yield batch
        if len(got) < SCAN_PAGE:
            return
        lo = "(" + got[-1]
