"""A job's life, in one place: its states, the allowed transitions, the status record's fields and
what entering each end state does.  ``lua/_lifecycle.lua`` is the Redis side of the same contract
(``finish``, ``cancel_unit``, ``expiry``): every script that changes a job's state is built on it.

::

    enqueue ─▶ scheduled ──(due)──▶ queued ──▶ sending ──▶ sent ──(the user saw it)──▶ seen
                                      ▲           │
                                      │           ├──▶ waiting ──▶ sending ...  (retry, throttle,
                                      │           │                              token refused)
                                      └─ replay ──┴──▶ failed (dead letter, or not)

    scheduled · queued · waiting ──▶ cancelled (by id, key, reply, replace)
                                 └─▶ expired   (past expires_at_ms: never sent late)

* **Expiry.** Every job has ``expires_at_ms``: the producer's ``expires_at``, else the moment it
  becomes due (acceptance, or its follow-up time) plus its ``ttl`` or ``DMWORKER_MAX_AGE_S``, on
  the Redis clock.  A job found past it is ``expired`` and never sent.  A replay gets a fresh age.
* **Units.** A sequence is one unit: cancel (by any of its ids or its key), ``replace=True`` and a
  reply act on every step not yet sent, atomically; a key stays bound until the whole unit ended.
* **Events.** Entering an end state, and ``seen``, writes an event (``job.sent``, ``job.failed``, ...)
  in the same script call (:mod:`dmworker.events`); every step is also noted on the job's bounded
  timeline (``history`` in its status record).
* **End states** (``sent``, ``seen``, ``failed``, ``cancelled``, ``expired``): the job leaves the follow-up
  schedule and the cancel-on-reply index, its key is released once its unit ended, a counter is
  bumped, and it is indexed for retention: ``DMWORKER_RETENTION_S`` after it ended its record and
  payload are forgotten — or, for a dead letter, ``DMWORKER_DLQ_RETENTION_S`` (and at most
  ``DMWORKER_DLQ_MAX`` per account, oldest first).
* **Token refused** (Graph code 190 and the other token errors): the job goes back to ``waiting``
  with its attempt refunded, the account is held (``reauth_required``) until a *different*,
  non-empty token is configured; nothing is dead-lettered and the queue keeps its order.
"""

from __future__ import annotations

from typing import Literal, TypedDict

State = Literal["scheduled", "queued", "waiting", "sending", "sent", "seen", "failed", "cancelled", "expired"]

STATES: tuple[State, ...] = (
    "scheduled",
    "queued",
    "waiting",
    "sending",
    "sent",
    "seen",
    "failed",
    "cancelled",
    "expired",
)
#: States a job can still be cancelled in (it has not been handed to a worker).
LIVE_STATES: frozenset[str] = frozenset({"scheduled", "queued", "waiting"})
#: End states: the job will not change again (except a dead letter's replay).
END_STATES: frozenset[str] = frozenset({"sent", "seen", "failed", "cancelled", "expired"})

#: Every allowed transition (from, to): the Lua scripts make no other.
TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("scheduled", "queued"),  # promote: the follow-up is due
        ("scheduled", "cancelled"),
        ("scheduled", "expired"),  # its expiry passed before it could be promoted
        ("queued", "sending"),
        ("queued", "cancelled"),
        ("queued", "expired"),
        ("waiting", "sending"),
        ("waiting", "cancelled"),
        ("waiting", "expired"),
        ("sending", "sent"),
        ("sent", "seen"),  # the user saw it (webhook messaging_seen)
        ("sending", "failed"),
        ("sending", "waiting"),  # retry, throttle, token refused
        ("sending", "sending"),  # its worker died: handed out again (in doubt)
        ("sending", "expired"),  # its worker died and it is now too old
        ("failed", "queued"),  # replay of a dead letter
    }
)

#: Why a job was cancelled (``error.kind`` of a cancelled job).
CANCEL_REASONS = ("cancelled", "cancelled_by_reply", "replaced", "account_removed", "forgotten")


class JobErrorRecord(TypedDict, total=False):
    """``error`` in a status record and in an outcome; never carries a token."""

    kind: str
    message: str
    code: int
    subcode: int
    fbtrace_id: str
    http_status: int


class StatusRecord(TypedDict, total=False):
    """The status record of one job (``P:{A}:st``), times in epoch milliseconds on the Redis clock."""

    state: State
    attempts: int
    rate_class: str
    lane: str  # the recipient's IGSID, or "c:<comment id>" for a private reply
    created_ms: int
    updated_ms: int
    due_ms: int  # when it became (or becomes) due: acceptance or its follow-up time
    expires_at_ms: int  # not sent after this
    ttl_ms: int  # the producer's ttl (a replay's fresh expiry uses it)
    group: str  # a sequence: the common prefix of its ids
    group_size: int
    key: str
    cancel_on_reply: bool
    holder: str  # the worker holding it while ``sending``
    sending_since_ms: int
    next_attempt_ms: int
    promoted_ms: int
    sent_ms: int
    seen_ms: int
    ended_ms: int
    kind: str  # the job's kind (text, media, ...)
    history: list[list[object]]  # the timeline: [ms, what, detail, (count)], bounded
    message_id: str
    error: JobErrorRecord
    dead_lettered: bool
    replays: int


class Outcome(TypedDict, total=False):
    """What a worker reports after a send (``o``), recorded by ``step.lua`` in the same call that
    hands out the next job.

    ``o`` is one of ``sent`` (``mid``; ``hold_ms`` typing pause; ``cmt`` comment replied to),
    ``retry`` (``delay_ms``), ``throttled`` (``pause_ms``, or ``pause_base_ms``/``pause_cap_ms``;
    ``reason``), ``reauth`` (``fp``: fingerprint of the refused token) or ``failed`` (``dead``).
    """

    o: Literal["sent", "retry", "throttled", "reauth", "failed"]
    kind: str
    err: JobErrorRecord
    mid: str
    hold_ms: int
    cmt: str
    delay_ms: int
    pause_ms: int
    pause_base_ms: int
    pause_cap_ms: int
    reason: str
    fp: str
    dead: bool
    lat: str
    lat_s: float
    usage_pct: int
    slow: float
    timeout: bool  # the call timed out (several in a row pause the account)


#: Buckets (seconds) of the due-to-sent latency counters ``e2e:<le>`` in ``P:{A}:stats``
#: (``step.lua`` E2E_BUCKETS_S).
E2E_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

#: How long a window or comment record can matter: the HUMAN_AGENT and private-reply windows.
KEEP_INBOUND_MS = 7 * 86_400_000

_OLD_NAMES = {
    "s": "state",
    "a": "attempts",
    "rc": "rate_class",
    "c": "created_ms",
    "u": "updated_ms",
    "r": "lane",
    "d": "due_ms",
    "k": "key",
    "cor": "cancel_on_reply",
    "e": "error",
    "m": "message_id",
    "sent": "sent_ms",
    "n": "next_attempt_ms",
    "h": "holder",
    "ts": "sending_since_ms",
    "p": "promoted_ms",
    "dead": "dead_lettered",
    "replayed": "replays",
}


def normalize(record: dict[str, object]) -> StatusRecord:
    """A status record with the current field names (records written by 0.1 used one letter)."""
    if "state" in record or "s" not in record:
        return record  # type: ignore[return-value]
    return {_OLD_NAMES.get(k, k): v for k, v in record.items()}  # type: ignore[return-value]
