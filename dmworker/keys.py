"""Every Redis key name dmworker uses, and nothing else.

Keys of one account share the hash tag ``{<account>}`` so every Lua script (which only
touches keys of one account, all passed through ``KEYS``) runs on Redis Cluster too.
The few global keys (the account registry, the worker heartbeats) are never used inside a
script together with account keys.

Per account ``A`` (prefix ``P``, default ``dmw``)::

    P:{A}:jobs            HASH  job id -> job JSON (immutable spec)
    P:{A}:st              HASH  job id -> status JSON (state, attempts, error, times)
    P:{A}:lane:<r>        LIST  job ids of recipient r, FIFO (head = next to send)
    P:{A}:lease:<r>       STR   token of the worker holding lane r (PX = lease)
    P:{A}:ready           ZSET  recipient -> ms when the lane should next be looked at
    P:{A}:sched           ZSET  job id -> due ms (delayed follow-ups)
    P:{A}:fkey            HASH  follow-up key -> job id
    P:{A}:cor:<r>         SET   cancel-on-reply follow-up ids of recipient r
    P:{A}:hold            HASH  recipient -> ms before which the lane must not send (typing pause)
    P:{A}:idem:<k>        STR   idempotency key -> job ids JSON (EX = retention)
    P:{A}:dlq             ZSET  job id -> ms it was dead-lettered
    P:{A}:done            ZSET  job id -> ms it finished (retention trimming)
    P:{A}:rl              HASH  limiter state: <class>:tat, <class>:wake, thread:<r> (us)
    P:{A}:pause           HASH  until_ms, reason, probe, fails, token_fp (account pause)
    P:{A}:win             HASH  recipient -> ms of the user's last window opener
    P:{A}:cmt             HASH  comment id -> ms of the comment / "used"
    P:{A}:usage           HASH  last usage headers seen (call_count, ...)
    P:{A}:stats           HASH  counters (accepted, sent, failed, retried, throttled, ...)
    P:{A}:seen            STR-per-event via P:{A}:evt:<mid> (webhook de-duplication, EX 48 h)

Global::

    P:accounts            SET   accounts that ever had a job
    P:workers             ZSET  worker name -> last heartbeat ms
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

    def cancel_on_reply(self, recipient: str) -> str:
        return f"{self.base}:cor:{recipient}"

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
