"""Every Redis key name dmworker uses, and nothing else.

Keys of one account share the hash tag ``{<account>}`` so every Lua script (which only
touches keys of one account, all passed through ``KEYS``) runs on Redis Cluster too.
The few global keys (the account registry, the worker heartbeats) are never used inside a
script together with account keys.

Per account ``A`` (prefix ``P``, default ``dmw``)::

    P:{A}:jobs            HASH  job id -> job JSON (immutable spec)
    P:{A}:st              HASH  job id -> status record JSON (dmworker.lifecycle.StatusRecord)
    P:{A}:lane:<r>        LIST  job ids of recipient r, FIFO (head = next to send)
    P:{A}:lease:<r>       STR   token of the worker holding lane r (PX = lease)
    P:{A}:ready           ZSET  recipient -> ms when the lane should next be looked at (normal
                                priority; readyh: high, readyl: low — between lanes, high goes first)
    P:{A}:lprio           HASH  lane -> its priority, h or l (normal when absent; cleared when empty)
    P:{A}:adm             ZSET  lane -> ms its Celery message was published, until a worker takes it
                                (with held: at most the admission budget per account)
    P:{A}:held            ZSET  lane -> lease expiry ms while a worker holds it (in-flight cap)
    P:{A}:sched           ZSET  job id -> due ms (delayed follow-ups)
    P:{A}:fkey            HASH  follow-up key -> job id
    P:{A}:cor             ZSET  "<r>|<job id>" (score 0, read by lex range): cancel-on-reply jobs
    P:{A}:cor:<r>         SET   (older versions: cancel-on-reply ids of r; read once and removed)
    P:{A}:hold            HASH  recipient -> ms before which the lane must not send (typing pause)
    P:{A}:idem:<k>        STR   idempotency key -> job ids JSON (EX = retention)
    P:{A}:dlq             ZSET  job id -> ms it was dead-lettered (DMWORKER_DLQ_RETENTION_S, capped)
    P:{A}:done            ZSET  job id -> ms it ended: sent, failed, cancelled, expired (retention)
    P:{A}:rl              HASH  limiter state: <class>:tat, <class>:wake, thread:<r> (us)
    P:{A}:pause           HASH  until, reason, probe, probe_until, fails, token_fp, detail, since
    P:{A}:win             HASH  recipient -> ms of the user's last window opener
    P:{A}:wint            ZSET  recipient -> the same ms (windows are forgotten after 7 days)
    P:{A}:cmt             HASH  comment id -> ms of the comment / "used"
    P:{A}:cmtt            ZSET  comment id -> ms of the comment (forgotten after 7 days)
    P:{A}:mids            HASH  Meta's message id -> job id (find a job by message id; trimmed with it)
    P:{A}:unseen          ZSET  "<lane>|<sent ms>|<job id>" (score 0, lex range): sent, not yet seen
    P:{A}:ix              ZSET  the dashboard's search index (score 0, lex ranges; dmworker.jobindex):
                                a|, r|<lane>|, s|<state>|, k|<key>|, d|<error>| members per job
    P:{A}:hist            HASH  sends / failures / dead letters per minute, last hour (ring; EX 2 h)
    P:{A}:events          STREAM  the account's events (dmworker.events), kept DMWORKER_EVENTS_RETENTION_S
    P:{A}:cmta:<r>        SET   comment ids whose author is r (EX 7 days after r's last comment)
    P:{A}:usage           HASH  last usage headers seen (call_count, ...)
    P:{A}:stats           HASH  counters (accepted, sent, failed, retried, throttled, ...)
    P:{A}:seen            STR-per-event via P:{A}:evt:<mid> (webhook de-duplication, EX 48 h)

Global (never used inside a script together with account keys)::

    P:accounts            SET   accounts that ever had a job
    P:workers             ZSET  worker name -> last heartbeat ms
    P:housekeep           ZSET  account -> ms its trimming is next due (only accounts with data)
    P:due                 ZSET  account -> ms it next has a lane or follow-up to dispatch (dispatchers
                                visit only these: idle accounts cost nothing)
    P:reauth              ZSET  account -> ms Meta refused its token (checked for a new token)
    P:refused             HASH  enqueue refusals by reason (validation, window, key_exists, ...)
    P:events:active       ZSET  account -> ms it last wrote an event (event consumers read these)
    P:events:dead         ZSET  event id ("<account>/<entry>") -> ms: callbacks given up (dmworker.callbacks)
    P:events:dead:data    HASH  event id -> {"event", "to", "reason", "dead_ms"} of a dead callback
    P:events:replay       ZSET  event id -> ms a deliverer may take it: dead callbacks being replayed
    P:events:cbstats      HASH  callback counters: delivered, failed, dead (events x destinations)
    P:laneref             STR   random key sealing lane references (dmworker.laneref; no SECRET_KEY)

The first eight keys of an account (:meth:`AccountKeys.block`) are the *account block* every
script built on the lifecycle prelude takes as ``KEYS[1..8]``; the lane-scheduling keys, ``mids``,
``unseen``, ``events``, ``ix`` and ``hist`` come last (:meth:`AccountKeys.tail`; see ``lua/_lifecycle.lua``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccountKeys:
    """Key names of one account."""

    prefix: str
    account: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.account}}}"

    @property
    def jobs(self) -> str:
        return f"{self.base}:jobs"

    @property
    def status(self) -> str:
        return f"{self.base}:st"

    def lane(self, recipient: str) -> str:
        return f"{self.base}:lane:{recipient}"

    def lease(self, recipient: str) -> str:
        return f"{self.base}:lease:{recipient}"

    def legacy_cancel_on_reply(self, recipient: str) -> str:
        return f"{self.base}:cor:{recipient}"

    @property
    def cancel_on_reply(self) -> str:
        return f"{self.base}:cor"

    @property
    def mids(self) -> str:
        return f"{self.base}:mids"

    @property
    def unseen(self) -> str:
        return f"{self.base}:unseen"

    @property
    def events(self) -> str:
        return f"{self.base}:events"

    @property
    def index(self) -> str:
        """The dashboard's search index (:mod:`dmworker.jobindex`)."""
        return f"{self.base}:ix"

    @property
    def hist(self) -> str:
        """Sends, failures and dead letters per minute over the last hour."""
        return f"{self.base}:hist"

    @property
    def window_times(self) -> str:
        return f"{self.base}:wint"

    @property
    def comment_times(self) -> str:
        return f"{self.base}:cmtt"

    def comment_authors(self, author: str) -> str:
        """The comments ``author`` wrote (found by :func:`dmworker.forget.forget_person`)."""
        return f"{self.base}:cmta:{author}"

    @property
    def readyh(self) -> str:
        return f"{self.base}:readyh"

    @property
    def readyl(self) -> str:
        return f"{self.base}:readyl"

    @property
    def ready_sets(self) -> tuple[str, str, str]:
        """The ready sets, high priority first."""
        return (self.readyh, self.ready, self.readyl)

    @property
    def lane_priority(self) -> str:
        return f"{self.base}:lprio"

    @property
    def admitted(self) -> str:
        return f"{self.base}:adm"

    @property
    def held(self) -> str:
        return f"{self.base}:held"

    def tail(self) -> list[str]:
        """The last KEYS of every lifecycle script, in this order (see ``lua/_lifecycle.lua``)."""
        return [
            self.ready,
            self.readyh,
            self.readyl,
            self.lane_priority,
            self.admitted,
            self.held,
            self.mids,
            self.unseen,
            self.events,
            self.index,
            self.hist,
        ]

    def block(self) -> list[str]:
        """The account block: ``KEYS[1..8]`` of every lifecycle script, in this order."""
        return [
            self.jobs,
            self.status,
            self.sched,
            self.followup_keys,
            self.done,
            self.dlq,
            self.stats,
            self.cancel_on_reply,
        ]

    def idempotency(self, key: str) -> str:
        return f"{self.base}:idem:{key}"

    def event(self, event_id: str) -> str:
        return f"{self.base}:evt:{event_id}"

    @property
    def ready(self) -> str:
        return f"{self.base}:ready"

    @property
    def sched(self) -> str:
        return f"{self.base}:sched"

    @property
    def followup_keys(self) -> str:
        return f"{self.base}:fkey"

    @property
    def hold(self) -> str:
        return f"{self.base}:hold"

    @property
    def dlq(self) -> str:
        return f"{self.base}:dlq"

    @property
    def done(self) -> str:
        return f"{self.base}:done"

    @property
    def limiter(self) -> str:
        return f"{self.base}:rl"

    @property
    def pause(self) -> str:
        return f"{self.base}:pause"

    @property
    def windows(self) -> str:
        return f"{self.base}:win"

    @property
    def comments(self) -> str:
        return f"{self.base}:cmt"

    @property
    def usage(self) -> str:
        return f"{self.base}:usage"

    @property
    def stats(self) -> str:
        return f"{self.base}:stats"


@dataclass(frozen=True)
class Keys:
    """Key names for one prefix."""

    prefix: str = "dmw"

    def account(self, account: str) -> AccountKeys:
        return AccountKeys(self.prefix, account)

    @property
    def accounts(self) -> str:
        return f"{self.prefix}:accounts"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def housekeep(self) -> str:
        return f"{self.prefix}:housekeep"

    @property
    def reauth(self) -> str:
        return f"{self.prefix}:reauth"

    @property
    def due(self) -> str:
        return f"{self.prefix}:due"

    @property
    def events_active(self) -> str:
        return f"{self.prefix}:events:active"

    @property
    def events_dead(self) -> str:
        """Dead callbacks (:mod:`dmworker.callbacks_store`): event id -> ms it was given up."""
        return f"{self.prefix}:events:dead"

    @property
    def events_dead_data(self) -> str:
        return f"{self.prefix}:events:dead:data"

    @property
    def events_replay(self) -> str:
        return f"{self.prefix}:events:replay"

    @property
    def events_callback_stats(self) -> str:
        return f"{self.prefix}:events:cbstats"

    @property
    def refused(self) -> str:
        return f"{self.prefix}:refused"

    @property
    def laneref(self) -> str:
        """The random key that seals lane references when ``DMWORKER_SECRET_KEY`` is unset."""
        return f"{self.prefix}:laneref"

    @property
    def celery_queue(self) -> str:
        """The Celery queue name dmworker's tasks use (per prefix, so test runs don't mix)."""
        return f"{self.prefix}.lanes"


def account_of_job(job_id: str) -> str:
    """The account a job id belongs to (ids are ``<account>.<random>``).

    Raises:
        ValueError: for a string that is not a dmworker job id.
    """
    account, sep, rest = job_id.rpartition(".")
    if not sep or not account or not rest:
        raise ValueError(f"not a dmworker job id: {job_id!r}")
    return account
