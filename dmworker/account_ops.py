"""Account-wide lane operations, mixed into :class:`dmworker.lanes.LaneStore`: trimming (retention),
lifting a pause, ending an account's jobs, seen receipts and observations, finding a job by Meta's
message id.  Each is one script call (or a few, batched) over the account's keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import scripts
from .keys import AccountKeys, Keys
from .lifecycle import KEEP_INBOUND_MS
from .settings import token_fingerprint


@dataclass(frozen=True)
class TrimResult:
    """What one trim call did: records removed, when to trim next (ms, None = nothing left to
    expire), and whether the account still has jobs that have not ended."""

    removed: int
    next_ms: int | None
    live: bool


class AccountOps:
    """The account-wide half of :class:`dmworker.lanes.LaneStore` (same Redis, same scripts)."""

    redis: Any
    keys: Keys

    def acct(self, account: str) -> AccountKeys:  # pragma: no cover - LaneStore's
        raise NotImplementedError

    @property
    def events_keep_ms(self) -> int:  # pragma: no cover - LaneStore's
        raise NotImplementedError

    def _run(
        self,
        name: str,
        account: str,
        keys: Sequence[str],
        args: Sequence[Any],
        now_ms: int | None,
        pipe: Any = None,
        emits: bool = True,
    ) -> Any:  # pragma: no cover - LaneStore's
        raise NotImplementedError

    def trim(self, account: str, now_ms: int | None = None, batch: int = 1000) -> TrimResult:
        """Forget, in bounded work, what retention no longer keeps (see ``lua/trim.lua``)."""
        k = self.acct(account)
        reply = self._run(
            "trim",
            account,
            [k.windows, k.window_times, k.comments, k.comment_times],
            [batch, KEEP_INBOUND_MS],
            now_ms,
            emits=False,
        )
        nxt = int(reply[1])
        return TrimResult(int(reply[0]), None if nxt < 0 else nxt, bool(int(reply[2])))

    def resume(
        self,
        account: str,
        *,
        mode: str = "any",
        token: str = "",
        batch: int = 1000,
        now_ms: int | None = None,
    ) -> tuple[bool, int]:
        """Lift the account's pause and wake every lane parked behind it: (lifted?, lanes woken).

        ``mode="token"`` lifts only a refused-token pause, and only when ``token`` is a different,
        non-empty token than the one Meta refused; ``mode="any"`` lifts any pause.
        """
        k = self.acct(account)
        fp = token_fingerprint(token) if token else ""
        keys, keep = [k.pause, k.ready, k.events, k.readyh, k.readyl], self.events_keep_ms
        lifted, woken, left = (
            int(x) for x in scripts.run(self.redis, "resume", keys, [mode, fp, batch, keep], now_ms)
        )
        if lifted:  # the woken lanes are due now
            wall = now_ms if now_ms is not None else int(time.time() * 1000)
            self.redis.zadd(self.keys.due, {account: wall}, lt=True)
        if lifted and keep:
            self.redis.zadd(self.keys.events_active, {account: int(time.time() * 1000)})
        while left > 0 and lifted:
            got = scripts.run(self.redis, "resume", keys, ["wake", "", batch, keep], now_ms)
            woken, left = woken + int(got[1]), int(got[2])
            if int(got[1]) == 0:
                break
        return bool(lifted), woken

    def end_jobs(
        self,
        account: str,
        ids: Sequence[str],
        *,
        state: str = "cancelled",
        why: str = "cancelled",
        message: str = "cancelled",
        now_ms: int | None = None,
    ) -> int:
        """End the given jobs (their whole units) that were not sent yet: ``cancelled``, or ``failed``
        without a dead letter.  Returns how many ended."""
        if state not in ("cancelled", "failed"):
            raise ValueError("state must be 'cancelled' or 'failed'")
        if not ids:
            return 0
        return int(self._run("end_jobs", account, [], [state, why, message, *ids], now_ms))

    def end_account_jobs(
        self, account: str, state: str = "cancelled", reason: str = "the account was removed"
    ) -> int:
        """End every job of ``account`` not sent yet (see :meth:`end_jobs`); returns how many.

        Walks the account's status records in batches (cost grows with the account's jobs).
        """
        n = 0
        ids = (job_id for job_id, _ in self.redis.hscan_iter(self.acct(account).status, count=500))
        for batch in _batches(ids, 500):
            n += self.end_jobs(account, batch, state=state, why="account_removed", message=reason)
        return n

    def seen(
        self,
        account: str,
        user: str,
        *,
        message_id: str | None = None,
        watermark_ms: int | None = None,
        now_ms: int | None = None,
    ) -> list[str]:
        """The user saw our messages up to ``message_id`` (or up to ``watermark_ms``): those sent jobs
        become ``seen`` (``job.seen`` events).  Returns their ids."""
        if (message_id is None) == (watermark_ms is None):
            raise ValueError("give message_id or watermark_ms")
        args = [user, message_id or "", "" if watermark_ms is None else int(watermark_ms)]
        return list(self._run("seen", account, [], args, now_ms)[1:])

    def observe(
        self, account: str, message_id: str, what: str, detail: str = "", now_ms: int | None = None
    ) -> str:
        """Note ``what`` (``echo``, ``reaction``) on the timeline of the job that sent ``message_id``;
        returns its id, or '' when the message is not one of ours."""
        return str(self._run("observe", account, [], [message_id, what, detail], now_ms, emits=False) or "")

    def find(self, account: str, message_id: str) -> str | None:
        """The id of the job that sent Meta's ``message_id`` (while it is retained)."""
        got = self.redis.hget(self.acct(account).mids, message_id)
        return str(got) if got else None


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
