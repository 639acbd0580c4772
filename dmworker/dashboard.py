"""What the operator's dashboard (``/ui/``) shows, read from Redis without scanning it.

Every list is a page of an index written when jobs are accepted or change state
(:mod:`dmworker.jobindex`), of the dead-letter and follow-up sets, or of the account set; the cost
of a page grows with the page and the number of accounts searched, not with the jobs retained.
Times are epoch milliseconds (the Redis clock) unless a name says otherwise.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import jobindex
from .accountinfo import pause_state
from .keys import AccountKeys
from .lanes import LaneStore
from .lifecycle import normalize
from .settings import RATE_CLASSES, parse_rate

#: Accounts searched at once when no account is named (larger scopes must name one).
MAX_SEARCH_ACCOUNTS = 500
#: Accounts per page of the overview.
ACCOUNTS_PER_PAGE = 50
#: A worker is alive when it beat within this (ms).
WORKER_ALIVE_MS = 30_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000


class SearchError(ValueError):
    """A search the dashboard cannot answer as asked (the message says what to change)."""


@dataclass(frozen=True)
class JobRow:
    """One job in a list."""

    id: str
    account: str
    lane: str
    state: str
    bucket: str
    kind: str
    created_ms: int
    updated_ms: int
    due_ms: int | None
    attempts: int
    key: str | None
    error_kind: str | None
    error_message: str | None
    message_id: str | None
    dead_lettered: bool

    @property
    def recipient(self) -> str:
        return self.lane[2:] if self.kind == "private_reply" and self.lane.startswith("c:") else self.lane


@dataclass(frozen=True)
class Result:
    """A page of rows (newest first unless said otherwise) and the cursor of the next page."""

    rows: list[JobRow]
    cursor: str | None
    total: int | None = None  # when it can be counted from an index (ZLEXCOUNT / ZCOUNT)


def _row(account: str, job_id: str, raw: str | None) -> JobRow | None:
    if not raw:
        return None
    try:
        rec: dict[str, Any] = dict(normalize(json.loads(raw)))
    except (ValueError, TypeError, AttributeError):
        return None
    err = rec.get("error") if isinstance(rec.get("error"), dict) else None
    mid = rec.get("message_id")
    return JobRow(
        id=job_id,
        account=account,
        lane=str(rec.get("lane") or ""),
        state=str(rec.get("state") or ""),
        bucket=jobindex.bucket(rec),
        kind=str(rec.get("kind") or ""),
        created_ms=int(rec.get("created_ms") or 0),
        updated_ms=int(rec.get("updated_ms") or 0),
        due_ms=int(rec["due_ms"]) if rec.get("due_ms") is not None else None,
        attempts=int(rec.get("attempts") or 0),
        key=rec.get("key") if isinstance(rec.get("key"), str) else None,
        error_kind=str(err.get("kind")) if err else None,
        error_message=str(err.get("message")) if err and err.get("message") else None,
        message_id=mid if isinstance(mid, str) else None,
        dead_lettered=bool(rec.get("dead_lettered")),
    )


def rows(store: LaneStore, account: str, ids: Sequence[str]) -> list[JobRow]:
    """The rows of ``ids`` of one account, in that order (jobs no longer retained are left out)."""
    if not ids:
        return []
    raws = store.redis.hmget(store.acct(account).status, list(ids))
    out = [_row(account, j, raw) for j, raw in zip(ids, raws, strict=True)]
    return [r for r in out if r is not None]


# ----------------------------------------------------------------------------------- job search
@dataclass(frozen=True)
class JobQuery:
    """A search of jobs: any of these (empty = not filtered)."""

    recipient: str = ""
    state: str = ""  # one of jobindex.BUCKETS
    message_id: str = ""
    key: str = ""

    def check(self) -> None:
        if self.state and self.state not in jobindex.BUCKETS:
            raise SearchError(f"state must be one of {', '.join(jobindex.BUCKETS)}")
        for name in ("recipient", "message_id", "key"):
            if len(getattr(self, name)) > 512:
                raise SearchError(f"{name} is longer than 512 characters")

    def prefixes(self) -> list[str]:
        """The index ranges to read (the most selective filter), the rest is checked per job."""
        if self.key:
            return [f"k|{self.key}|"]
        if self.recipient:  # the IGSID, or a comment id (private replies queue as c:<id>)
            return [f"r|{self.recipient}|", f"r|c:{self.recipient}|"]
        if self.state:
            return [f"s|{self.state}|"]
        return ["a|"]

    def matches(self, row: JobRow) -> bool:
        if self.state and row.bucket != self.state:
            return False
        if self.recipient and row.lane not in (self.recipient, f"c:{self.recipient}"):
            return False
        return not (self.key and row.key != self.key)


def search_accounts(store: LaneStore, named: str, scope: frozenset[str] | None) -> list[str]:
    """The accounts a search covers: ``named``, else every account in scope (at most
    :data:`MAX_SEARCH_ACCOUNTS`).

    Raises:
        SearchError: no account named and the scope holds more accounts than that.
    """
    if named:
        return [named]
    accounts = sorted(scope) if scope is not None else sorted(store.redis.smembers(store.keys.accounts))
    if len(accounts) > MAX_SEARCH_ACCOUNTS:
        raise SearchError(
            f"{len(accounts)} accounts: name one (searches without an account cover at most "
            f"{MAX_SEARCH_ACCOUNTS})"
        )
    return accounts


def search_jobs(
    store: LaneStore, accounts: Sequence[str], q: JobQuery, *, after: str | None = None, limit: int = 50
) -> Result:
    """Jobs of ``accounts`` matching ``q``, newest first; ``after`` is the previous page's cursor.

    Raises:
        SearchError: a bad filter value.
    """
    q.check()
    if q.message_id:
        return _by_message_id(store, accounts, q)
    pages: list[tuple[str, jobindex.Page]] = []
    for account in accounts:
        k = store.acct(account)
        for prefix in q.prefixes():
            keep = _keeper(store, account, q) if _needs_check(q) else None
            pages.append(
                (account, jobindex.page(store.redis, k, prefix, limit=limit, after=after, keep=keep))
            )
    return _merge(store, pages, limit)


def _needs_check(q: JobQuery) -> bool:
    given = [bool(q.key), bool(q.recipient), bool(q.state)]
    return sum(given) > 1


def _keeper(store: LaneStore, account: str, q: JobQuery) -> Callable[[list[str]], list[bool]]:
    def keep(ids: list[str]) -> list[bool]:
        if not ids:
            return []
        raws = store.redis.hmget(store.acct(account).status, ids)
        found = (_row(account, j, r) for j, r in zip(ids, raws, strict=True))
        return [row is not None and q.matches(row) for row in found]

    return keep


def _merge(store: LaneStore, pages: list[tuple[str, jobindex.Page]], limit: int) -> Result:
    """Newest first over several pages; only what every page has looked at is shown (a page that
    stopped early bounds the merged one), so the next page misses nothing."""
    bound = max((p.cursor for _, p in pages if p.cursor is not None), default=None)
    items = sorted(
        (
            (tail, account, job_id)
            for account, p in pages
            for tail, job_id in p.items
            if bound is None or tail >= bound
        ),
        reverse=True,
    )
    more = bound is not None or len(items) > limit
    items = items[:limit]
    by_account: dict[str, list[str]] = {}
    for _, account, job_id in items:
        by_account.setdefault(account, []).append(job_id)
    found = {r.id: r for account, ids in by_account.items() for r in rows(store, account, ids)}
    out = [found[j] for _, _, j in items if j in found]
    cursor = items[-1][0] if more and items else (bound if more else None)
    return Result(out, cursor)


def _by_message_id(store: LaneStore, accounts: Sequence[str], q: JobQuery) -> Result:
    pipe = store.redis.pipeline(transaction=False)
    for account in accounts:
        pipe.hget(store.acct(account).mids, q.message_id)
    out = []
    for account, job_id in zip(accounts, pipe.execute(), strict=True):
        if job_id:
            out += [r for r in rows(store, account, [job_id]) if q.matches(r)]
    return Result(out, None, len(out))


def count_jobs(store: LaneStore, account: str, q: JobQuery) -> int | None:
    """How many jobs of ``account`` match ``q`` when one index range answers it exactly."""
    prefixes = q.prefixes()
    if q.message_id or _needs_check(q):
        return None
    return sum(jobindex.count(store.redis, store.acct(account), p) for p in prefixes)


# ----------------------------------------------------------------------------------- dead letters
@dataclass(frozen=True)
class DeadQuery:
    """Dead letters by error kind and since when they were dead-lettered (ms; 0 = any time)."""

    error: str = ""
    since_ms: int = 0


def search_dead(
    store: LaneStore, accounts: Sequence[str], q: DeadQuery, *, after: str | None = None, limit: int = 50
) -> Result:
    """Dead letters of ``accounts`` matching ``q``, newest first, and how many match in all."""
    pages: list[tuple[str, jobindex.Page]] = []
    total = 0
    for account in accounts:
        k = store.acct(account)
        if q.error:
            prefix = f"d|{q.error}|"
            p = jobindex.page(store.redis, k, prefix, limit=limit, after=after, since_ms=q.since_ms or None)
            total += jobindex.count(store.redis, k, prefix, q.since_ms or None)
        else:
            p = _dlq_page(store, k, q.since_ms, after, limit)
            total += int(store.redis.zcount(k.dlq, q.since_ms or "-inf", "+inf"))
        pages.append((account, p))
    res = _merge(store, pages, limit)
    return Result(res.rows, res.cursor, total)


def _dlq_page(
    store: LaneStore, k: AccountKeys, since_ms: int, after: str | None, limit: int
) -> jobindex.Page:
    """A page of the dead-letter set itself (by dead-lettered time), tails as in the index."""
    hi: Any = "+inf"
    if after:
        t, _, _after_id = after.partition("|")
        hi = int(t) if t.isdigit() else "+inf"
    got = store.redis.zrevrangebyscore(
        k.dlq, hi, since_ms or "-inf", start=0, num=limit + 50, withscores=True
    )
    items = []
    for job_id, score in got:
        tail = f"{int(score):013d}|{job_id}"
        if after and tail >= after:
            continue
        items.append((tail, job_id))
    more = len(got) == limit + 50 or len(items) > limit
    items = items[:limit]
    return jobindex.Page(items, items[-1][0] if more and items else None)


def dead_ids(store: LaneStore, account: str, q: DeadQuery) -> Iterator[list[str]]:
    """Every dead letter of ``account`` matching ``q``, in batches (for bulk replay and purge)."""
    k = store.acct(account)
    if q.error:
        yield from jobindex.ids_under(store.redis, k, f"d|{q.error}|", q.since_ms or None)
        return
    lo: Any = q.since_ms or "-inf"
    while True:
        got = store.redis.zrangebyscore(k.dlq, lo, "+inf", start=0, num=jobindex.SCAN_PAGE, withscores=True)
        if not got:
            return
        yield [j for j, _ in got]
        if len(got) < jobindex.SCAN_PAGE:
            return
        lo = int(got[-1][1])  # ties at the edge are read again: replay and purge skip what is gone


def error_kinds(store: LaneStore, accounts: Iterable[str]) -> list[str]:
    """Error kinds seen on these accounts (from their failure counters), for the filter's choices."""
    pipe = store.redis.pipeline(transaction=False)
    names = list(accounts)[:MAX_SEARCH_ACCOUNTS]
    for account in names:
        pipe.hkeys(store.acct(account).stats)
    kinds = {f[7:] for fields in pipe.execute() for f in fields if f.startswith("reason:")}
    return sorted(
        kinds | {"attempts_exhausted", "invalid_request", "outside_window", "recipient_unavailable"}
    )


# ----------------------------------------------------------------------------------- follow-ups
def search_followups(
    store: LaneStore,
    accounts: Sequence[str],
    *,
    recipient: str = "",
    key: str = "",
    after: str | None = None,
    limit: int = 50,
) -> Result:
    """Scheduled follow-ups, soonest first (by recipient or key: from the index, newest first)."""
    if key or recipient:
        return search_jobs(
            store,
            accounts,
            JobQuery(recipient=recipient, key=key, state="scheduled"),
            after=after,
            limit=limit,
        )
    items: list[tuple[str, str, str]] = []
    total = 0
    lo_t, _lo_id = "-inf", ""
    if after:
        t, _, _lo_id = after.partition("|")
        lo_t = str(int(t)) if t.isdigit() else "-inf"
    for account in accounts:
        k = store.acct(account)
        got = store.redis.zrangebyscore(k.sched, lo_t, "+inf", start=0, num=limit + 20, withscores=True)
        total += int(store.redis.zcard(k.sched))
        for job_id, score in got:
            tail = f"{int(score):013d}|{job_id}"
            if after and tail <= after:
                continue
            items.append((tail, account, job_id))
    items.sort()
    more = len(items) > limit
    items = items[:limit]
    by_account: dict[str, list[str]] = {}
    for _, account, job_id in items:
        by_account.setdefault(account, []).append(job_id)
    found = {r.id: r for a, ids in by_account.items() for r in rows(store, a, ids)}
    return Result(
        [found[j] for _, _, j in items if j in found], items[-1][0] if more and items else None, total
    )


# ----------------------------------------------------------------------------------- overview
@dataclass
class AccountRow:
    """One account on the overview."""

    account: str
    state: str  # active | paused | reauth_required | disabled
    paused_until_ms: int | None
    pause_reason: str | None
    pause_detail: str | None
    rate_per_s: float
    rates: dict[str, str]
    sent_per_s: float  # measured over the last 5 minutes
    usage_pct: int | None
    backlog_jobs: int
    backlog_lanes: int
    drain_s: float | None  # backlog / rate
    scheduled: int
    dead_letters: int
    hour: dict[str, int] = field(default_factory=dict)  # sent, failed, dead in the last hour
    token_expires_s: float | None = None
    registered: bool = False


def _now_ms(store: LaneStore) -> int:
    sec, usec = store.redis.time()
    return int(sec) * 1000 + int(usec) // 1000


def hist_counts(raw: dict[str, str], now_ms: int, minutes: int = 60) -> dict[str, list[int]]:
    """Per-minute counts (oldest first, ``minutes`` long) of each kind in an account's ``hist`` ring."""
    m_now = now_ms // MINUTE_MS
    out = {w: [0] * minutes for w in ("sent", "failed", "dead")}
    for f, v in raw.items():
        what, _, _slot = f.partition(":")
        m, _, c = v.partition(":")
        if what in out and m.isdigit() and c.isdigit():
            age = m_now - int(m)
            if 0 <= age < minutes:
                out[what][minutes - 1 - age] += int(c)
    return out


def account_page(store: LaneStore, accounts: Sequence[str]) -> list[AccountRow]:
    """The overview rows of ``accounts`` (one pipelined round trip, plus the registry)."""
    from .registry import Registry

    s = store.settings
    now = _now_ms(store)
    pipe = store.redis.pipeline(transaction=False)
    for account in accounts:
        k = store.acct(account)
        pipe.hgetall(k.pause)
        pipe.hget(k.usage, "call_count_pct")
        for ready in k.ready_sets:
            pipe.zcard(ready)
        pipe.zcard(k.sched)
        pipe.zcard(k.dlq)
        pipe.hget(k.stats, "due_jobs")
        pipe.hgetall(k.hist)
    replies = pipe.execute()
    records = Registry(s.key_prefix, store.redis).get_many(list(accounts))
    out = []
    per = 9
    for i, account in enumerate(accounts):
        pause, usage, lh, ln, ll, sched, dlq, due, hist = replies[i * per : (i + 1) * per]
        rec = records.get(account)
        conf = s.accounts.get(account)
        fp = (
            rec.fp
            if rec is not None
            else conf.fingerprint
            if conf is not None and conf.access_token
            else None
        )
        state = pause_state(pause, now, fp, bool(rec is not None and rec.disabled))
        until = int(pause["until"]) if pause.get("until") else None
        active = until is not None and (until > now or pause.get("reason") in ("token_invalid", "disabled"))
        per_min = hist_counts(hist, now)
        rates = {c: str(s.rate_for(account, c)) for c in RATE_CLASSES}
        if rec is not None:  # the registry's current limits (this process may not have reloaded them)
            rates.update({c: str(v) for c, v in rec.rates.items() if c in rates})
        text_rate = parse_rate(rates["text"])
        rate = text_rate.count / text_rate.period_s
        jobs = int(due or 0)
        out.append(
            AccountRow(
                account=account,
                state=state,
                paused_until_ms=until if active else None,
                pause_reason=pause.get("reason") if active else None,
                pause_detail=pause.get("detail") if active else None,
                rate_per_s=rate,
                rates=rates,
                sent_per_s=round(sum(per_min["sent"][-5:]) / 300.0, 2),
                usage_pct=int(usage) if usage else None,
                backlog_jobs=jobs,
                backlog_lanes=int(lh) + int(ln) + int(ll),
                drain_s=round(jobs / rate, 1) if rate > 0 and jobs else None,
                scheduled=int(sched),
                dead_letters=int(dlq),
                hour={w: sum(v) for w, v in per_min.items()},
                token_expires_s=rec.expires_s if rec is not None else None,
                registered=rec is not None,
            )
        )
    return out


#: How long the overview reuses its sorted list of every account (s): reading and sorting 100,000
#: names costs more than a page of rows.
ACCOUNT_LIST_TTL_S = 10.0
_account_lists: dict[tuple[int, str], tuple[float, list[str]]] = {}
_account_lock = threading.Lock()


def known_accounts(store: LaneStore, scope: frozenset[str] | None) -> list[str]:
    """Every account the scope covers that has jobs or is configured or registered, sorted (the
    whole-cluster list is reused for :data:`ACCOUNT_LIST_TTL_S`: a new account shows up within it)."""
    if scope is not None:
        return sorted(scope)
    cache_key = (id(store.redis), store.settings.key_prefix)
    with _account_lock:
        hit = _account_lists.get(cache_key)
        if hit is not None and time.monotonic() - hit[0] < ACCOUNT_LIST_TTL_S:
            return hit[1]
    found = _all_accounts(store)
    with _account_lock:
        _account_lists[cache_key] = (time.monotonic(), found)
    return found


def _all_accounts(store: LaneStore) -> list[str]:
    from .registry import Registry

    known = set(store.redis.smembers(store.keys.accounts)) | set(store.settings.accounts)
    registry: Any = Registry(store.settings.key_prefix, store.redis)
    known |= set(registry.redis.hkeys(registry.keys.accounts))  # names only, not the records
    return sorted(known)


def cluster(store: LaneStore, scope: frozenset[str] | None) -> dict[str, Any]:
    """Workers alive and the cluster's sends per minute over the last hour (accounts that wrote an
    event in the last hour; within a scope, its accounts)."""
    now = _now_ms(store)
    r = store.redis
    workers = r.zrangebyscore(store.keys.workers, now - WORKER_ALIVE_MS, "+inf")
    if scope is None:
        active = r.zrangebyscore(store.keys.events_active, now - HOUR_MS, "+inf")
    else:
        active = sorted(scope)
    pipe = r.pipeline(transaction=False)
    for account in active:
        pipe.hgetall(store.acct(account).hist)
    sums = {w: [0] * 60 for w in ("sent", "failed", "dead")}
    for raw in pipe.execute() if active else []:
        for w, counts in hist_counts(raw, now).items():
            sums[w] = [a + b for a, b in zip(sums[w], counts, strict=True)]
    return {"now_ms": now, "workers": sorted(workers), "per_minute": sums, "active_accounts": len(active)}


def sparkline(values: Sequence[int], width: int = 600, height: int = 80) -> str:
    """An SVG polyline ``points`` string for ``values`` (a chart without JavaScript)."""
    top = max(max(values, default=0), 1)
    step = width / max(len(values) - 1, 1)
    return " ".join(f"{i * step:.1f},{height - v / top * (height - 4) - 2:.1f}" for i, v in enumerate(values))


def fmt_ms(ms: int | None) -> str:
    """An epoch-ms time as UTC text (``-`` for none)."""
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z"
