"""Forget a person (Meta data-deletion requests): remove everything one account keeps about one
IGSID — ``Accounts.forget``, ``dmworker forget``, ``DELETE /v1/people/<igsid>``.

What is removed, for account ``A`` and person ``r`` (key names in :mod:`dmworker.keys`):

- the messaging window: ``win`` field ``r`` and ``wint`` member ``r``;
- the comments they wrote (``cmta:<r>``, recorded by the webhook): their ``cmt``/``cmtt`` entries,
  and the private replies to them (lanes ``c:<comment id>``);
- every job of theirs, in any state: the ones not yet handed to a worker (``scheduled``,
  ``queued``, ``waiting``) are first ended ``cancelled`` (reason ``forgotten``) through the
  lifecycle (``end_jobs.lua``: off the follow-up schedule and the cancel-on-reply index, keys
  released); then every ended one (sent, failed, cancelled, expired, dead letters) loses its
  payload (``jobs``), its status (``st``) and its place in ``done``/``dlq``;
- their lanes (``lane:<r>``, ``lane:c:<id>``), leases, ``ready`` members, ``hold`` fields, the
  limiter's ``th:<r>`` field and the legacy ``cor:<r>`` set.
- the ``mids`` entries (message id -> job id) and ``unseen`` receipts of those jobs, and the
  entries of the account's event stream (``events``) about the person or their jobs — events a
  consumer already read are out of dmworker's reach.

**A job being sent right now** (``sending``) cannot be recalled: it is counted in ``in_flight``,
its lane is left to its worker, and the rest is removed. Run forget again once it has ended (the
worker records its outcome within ``DMWORKER_LEASE_MS``); the report's ``complete`` says whether
anything was left.

**Cost.** A person's jobs are found by walking the account's status hash (``HSCAN``, 500 records
per round trip): the cost grows with the number of jobs the account keeps (retention bounds it),
not with the person's; the event stream is walked too (bounded by its retention). Comments are
found through ``cmta:<r>``, which the webhook fills from this version on: comments recorded
earlier have no author, cannot be found, and are forgotten only by age (7 days after the comment,
``lua/trim.lua``), as are webhook de-duplication records (48 h; they hold event ids, not the
person's id).

A send enqueued or a webhook event received for the person while forget runs is not removed:
forget acts on what is stored when it runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import jobindex
from .errors import ValidationError
from .keys import AccountKeys
from .lifecycle import END_STATES, LIVE_STATES, normalize

if TYPE_CHECKING:
    from .lanes import LaneStore

log = logging.getLogger("dmworker.forget")

BATCH = 500
FORGOTTEN_MESSAGE = "the person asked to be forgotten"


@dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget_person` removed from one account (counts)."""

    account: str
    window: int  # 1 when a messaging window was recorded
    comments: int  # comments of theirs found through their author record
    jobs_cancelled: int  # jobs not yet sent, ended as cancelled before being removed
    jobs_removed: int  # jobs whose payload and status were deleted (any end state)
    dead_letters: int  # of those, how many were dead letters
    lanes: int  # lanes (recipient or comment) deleted
    events: int  # entries of the account's event stream about the person or their jobs
    in_flight: int  # jobs being sent right now: not removed, run forget again once they ended

    @property
    def complete(self) -> bool:
        """Whether nothing of the person is left (no job was in flight)."""
        return self.in_flight == 0

    @property
    def removed(self) -> int:
        """How many records were removed in all (0: nothing of the person was stored)."""
        return self.window + self.comments + self.jobs_removed + self.lanes + self.events

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def person_ref(igsid: str) -> str:
    """What logs show of a person: 12 hex digits of the SHA-256 of the IGSID (never the IGSID)."""
    return hashlib.sha256(igsid.encode()).hexdigest()[:12]


def check_igsid(igsid: object) -> str:
    """``igsid`` if it is an IGSID.

    Raises:
        ValidationError: field ``igsid`` (the message never repeats the value).
    """
    from .schemas.send import recipient_error

    bad = recipient_error("text", igsid)
    if bad:
        raise ValidationError({"igsid": [bad]})
    assert isinstance(igsid, str)
    return igsid


def forget_person(store: LaneStore, account: str, igsid: str) -> ForgetReport:
    """Remove what ``account`` keeps about ``igsid`` (see the module docstring).

    Raises:
        ValidationError: ``igsid`` is not an IGSID.
        redis.RedisError: Redis failed part-way (what was removed stays removed; run it again).
    """
    check_igsid(igsid)
    r: Any = store.redis
    k = store.acct(account)
    comment_ids = sorted(r.smembers(k.comment_authors(igsid)))
    lanes = {igsid, *(f"c:{c}" for c in comment_ids)}
    found = _jobs_of(r, k, lanes)
    live = [job_id for job_id, (state, _, _) in found.items() if state in LIVE_STATES]
    cancelled = store.end_jobs(account, live, why="forgotten", message=FORGOTTEN_MESSAGE) if live else 0

    # the states after ending: only ended jobs are removed; one handed to a worker meanwhile is in flight
    ids = list(found)
    now = _states(r, k, ids)
    ended = [i for i in ids if now.get(i) in END_STATES or now.get(i) is None]
    busy_lanes = {found[i][1] for i in ids if now.get(i) not in END_STATES and now.get(i) is not None}
    in_flight = sum(1 for i in ids if now.get(i) == "sending")

    dead = _count_dead(r, k, ended)
    _delete_jobs(r, k, ended)
    for lane in lanes & busy_lanes:  # its worker still holds it: take out only what ended
        _unlink(r, k, lane, [i for i in ended if found[i][1] == lane])
    deleted_lanes = _delete_lanes(r, k, igsid, lanes - busy_lanes)
    _delete_receipts(r, k, lanes, [m for i in ended if (m := found[i][2])])
    window = _delete_window_and_comments(r, k, igsid, comment_ids)
    events = _delete_events(r, k, {igsid, *comment_ids, *lanes}, set(ended))
    report = ForgetReport(
        account=account,
        window=window,
        comments=len(comment_ids),
        jobs_cancelled=cancelled,
        jobs_removed=len(ended),
        dead_letters=dead,
        lanes=deleted_lanes,
        events=events,
        in_flight=in_flight,
    )
    log.info(
        "forgot person %s on account %s: %d jobs (%d cancelled, %d dead letters), %d lanes, window %d, "
        "%d comments, %d events, %d in flight",
        person_ref(igsid),
        account,
        report.jobs_removed,
        report.jobs_cancelled,
        report.dead_letters,
        report.lanes,
        report.window,
        report.comments,
        report.events,
        report.in_flight,
    )
    return report


def _jobs_of(r: Any, k: AccountKeys, lanes: set[str]) -> dict[str, tuple[str | None, str, str | None]]:
    """{job id: (state, lane, Meta's message id)} of every job in ``lanes``: status records whose
    ``lane`` is one of them (an ``HSCAN`` of the whole status hash), and ids in the lane lists
    without a status."""
    found: dict[str, tuple[str | None, str, str | None]] = {}
    for job_id, raw in r.hscan_iter(k.status, count=BATCH):
        try:
            rec = normalize(json.loads(raw))
        except (ValueError, TypeError, AttributeError):
            continue
        lane = rec.get("lane")
        if isinstance(lane, str) and lane in lanes:
            mid = rec.get("message_id")
            found[job_id] = (rec.get("state"), lane, mid if isinstance(mid, str) and mid else None)
    for lane in sorted(lanes):
        for job_id in r.lrange(k.lane(lane), 0, -1):
            found.setdefault(job_id, (None, lane, None))
    return found


def _states(r: Any, k: AccountKeys, ids: list[str]) -> dict[str, str | None]:
    """The current state of each job (``None``: no status record)."""
    out: dict[str, str | None] = {}
    for batch in _chunks(ids, BATCH):
        for job_id, raw in zip(batch, r.hmget(k.status, batch), strict=True):
            state = None
            if raw:
                try:
                    state = normalize(json.loads(raw)).get("state")
                except (ValueError, TypeError, AttributeError):
                    state = None
            out[job_id] = state
    return out


def _count_dead(r: Any, k: AccountKeys, ids: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.zscore(k.dlq, job_id)
    return sum(1 for score in (pipe.execute() if ids else []) if score is not None)


def _delete_jobs(r: Any, k: AccountKeys, ids: list[str]) -> None:
    jobindex.unindex(r, k, ids)  # while their status records still say what was indexed
    pipe = r.pipeline(transaction=False)
    for batch in _chunks(ids, BATCH):
        pipe.hdel(k.jobs, *batch)
        pipe.hdel(k.status, *batch)
        pipe.zrem(k.done, *batch)
        pipe.zrem(k.dlq, *batch)
        pipe.zrem(k.sched, *batch)
    if ids:
        pipe.execute()


def _unlink(r: Any, k: AccountKeys, lane: str, ids: list[str]) -> None:
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.lrem(k.lane(lane), 0, job_id)
    if ids:
        pipe.execute()


def _delete_lanes(r: Any, k: AccountKeys, igsid: str, lanes: Iterable[str]) -> int:
    """Delete the lanes and their lease, wake-up, hold and pacing records; how many lanes existed.
    Also the person's cancel-on-reply entries (the index and the legacy set)."""
    pipe = r.pipeline(transaction=False)
    names = sorted(lanes)
    for lane in names:
        pipe.delete(k.lane(lane))
        pipe.delete(k.lease(lane))
        pipe.zrem(k.ready, lane)
        pipe.hdel(k.hold, lane)
        pipe.hdel(k.limiter, f"th:{lane}", f"rs:{lane}")
        for key in (k.readyh, k.readyl, k.admitted):
            pipe.zrem(key, lane)
        pipe.hdel(k.lane_priority, lane)
    pipe.delete(k.legacy_cancel_on_reply(igsid))
    replies = pipe.execute()
    members = r.zrangebylex(k.cancel_on_reply, f"[{igsid}|", f"[{igsid}|\xff")
    if members:
        r.zrem(k.cancel_on_reply, *members)
    return sum(int(replies[i * 9]) for i in range(len(names)))


def _delete_window_and_comments(r: Any, k: AccountKeys, igsid: str, comment_ids: list[str]) -> int:
    """Delete the person's window and comment records; 1 when a window was recorded."""
    pipe = r.pipeline(transaction=False)
    pipe.hdel(k.windows, igsid)
    pipe.zrem(k.window_times, igsid)
    if comment_ids:
        pipe.hdel(k.comments, *comment_ids)
        pipe.zrem(k.comment_times, *comment_ids)
    pipe.delete(k.comment_authors(igsid))
    return int(pipe.execute()[0])


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _delete_receipts(r: Any, k: AccountKeys, lanes: set[str], message_ids: list[str]) -> None:
    """Delete the message-id index entries of the removed jobs and the lanes' not-yet-seen receipts."""
    pipe = r.pipeline(transaction=False)
    for batch in _chunks(message_ids, BATCH):
        pipe.hdel(k.mids, *batch)
    for lane in sorted(lanes):
        pipe.zrangebylex(k.unseen, f"[{lane}|", f"[{lane}|\xff")
    replies = pipe.execute()[-len(lanes) :] if lanes else []
    stale = [m for members in replies for m in members]
    for batch in _chunks(stale, BATCH):
        r.zrem(k.unseen, *batch)


def _delete_events(r: Any, k: AccountKeys, people: set[str], job_ids: set[str]) -> int:
    """Delete the event-stream entries whose recipient or user is the person (or one of their
    comments / lanes) or whose job is one of theirs: a walk of the stream (bounded by
    ``DMWORKER_EVENTS_RETENTION_S``), ``XDEL`` of what matches; how many were deleted."""
    doomed: list[str] = []
    start = "-"
    while True:
        entries = r.xrange(k.events, min=start, max="+", count=BATCH)
        for entry_id, fields in entries:
            try:
                ev = json.loads((fields or {}).get("e", ""))
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            if ev.get("job_id") in job_ids or ev.get("recipient") in people or ev.get("user") in people:
                doomed.append(entry_id)
        if len(entries) < BATCH:
            break
        start = "(" + entries[-1][0]
    deleted = 0
    for batch in _chunks(doomed, BATCH):
        deleted += int(r.xdel(k.events, *batch))
    return deleted
