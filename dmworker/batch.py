"""Batches behind ``Outbox.send_many`` and an HTTP list: all or nothing for every check that can
refuse an item — validation, follow-up keys, windows, idempotency conflicts, expiry — checked for the
whole batch before anything is written.  The batch is then written in chunks of :data:`CHUNK`; if
Redis fails midway, :class:`RedisUnavailableError` says exactly which items were queued
(``queued``) and which are in doubt (``in_doubt``: a retry with the same idempotency keys settles
them), and every queued item has been published.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis

from .due import iso
from .errors import BacklogFullError, RedisUnavailableError, ValidationError
from .jobs import Job

if TYPE_CHECKING:
    from .enqueue import _Prepared
    from .lanes import LaneStore

#: Units written per Redis round trip in a batch.
CHUNK = 500


class BatchOps:
    """The batch half of :class:`dmworker.enqueue.Enqueuer`."""

    redis: Any
    store: LaneStore
    clock: Callable[[], int | None]

    def _commit(self, prepared: Sequence[_Prepared], *, checked: bool = False) -> list[Job]:
        raise NotImplementedError  # pragma: no cover - Enqueuer's

    def _count_refusal(self, field: str) -> None:
        raise NotImplementedError  # pragma: no cover - Enqueuer's

    def _precheck(self, prepared: Sequence[_Prepared]) -> None:
        """Refuse a batch before writing anything if any item would be refused: its window, its
        follow-up key, its idempotency key (used for a different request), its expiry.

        The enqueue script checks each again atomically; this pass keeps a batch all-or-nothing.

        Raises:
            ValidationError: messages keyed ``"<index>.<field>"``.
            RedisUnavailableError: nothing was written.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for p in prepared:
            k = self.store.acct(p.account)
            pipe.hget(k.windows, p.lane)
            pipe.hget(k.followup_keys, p.opts.get("key") or "")
            idem = p.opts.get("idempotency_key")
            pipe.get(k.idempotency(idem) if idem else k.idempotency("-"))
        accounts = sorted({p.account for p in prepared})
        for account in accounts:
            pipe.hget(self.store.acct(account).stats, "due_jobs")
        try:
            out = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailableError(f"Redis is unreachable; nothing was queued: {e}") from None
        clock = self.clock()
        now = clock if clock is not None else int(out[0][0]) * 1000 + int(out[0][1]) // 1000
        errors: dict[str, list[str]] = {}
        seen_keys: set[tuple[str, str]] = set()
        for n, p in enumerate(prepared):
            last, existing, idem_rec = out[1 + 3 * n], out[2 + 3 * n], out[3 + 3 * n]
            due = max(now, p.opts["at_ms"] or now + (p.opts["delay_ms"] or 0))
            if p.opts["expires_at_ms"] is not None and p.opts["expires_at_ms"] <= due:
                errors[f"{n}.expires_at"] = [f"expires before the job is due ({iso(due)})"]
            if p.window_limit_ms:
                if last is None:
                    errors[f"{n}.window"] = [
                        "the messaging window is closed: this user has not messaged the account"
                    ]
                elif due > int(last) + p.window_limit_ms:
                    closes = int(last) + p.window_limit_ms
                    errors[f"{n}.window"] = [
                        f"the messaging window closes at {iso(closes)} ({closes} ms), "
                        "before this job would be sent"
                    ]
            key = p.opts.get("key")
            if key:
                # a key is bound until its whole unit has ended (the lifecycle releases it then)
                if (existing and not p.opts.get("replace")) or (p.account, key) in seen_keys:
                    errors[f"{n}.key"] = [
                        f"a follow-up with key {key!r} is already pending; pass replace=True"
                    ]
                seen_keys.add((p.account, key))
            if idem_rec and p.opts.get("idempotency_key"):
                rec = json.loads(idem_rec)
                if isinstance(rec, dict) and rec.get("fp") not in (None, p.fingerprint):
                    errors[f"{n}.idempotency_key"] = [
                        f"idempotency key {p.opts['idempotency_key']!r} was already used for a "
                        "different request"
                    ]
        if errors:
            self._count_refusal(next(iter(errors)).split(".", 1)[1].split(".")[0])
            raise ValidationError(errors)
        # the backlog bound, for the whole batch (follow-ups count when they come due)
        due_jobs = dict(zip(accounts, out[1 + 3 * len(prepared) :], strict=True))
        adding: dict[str, int] = {}
        for p in prepared:
            if not (p.opts["delay_ms"] or (p.opts["at_ms"] and p.opts["at_ms"] > now)):
                adding[p.account] = adding.get(p.account, 0) + len(p.jobs)
        for account, n in adding.items():
            limit = self.store.settings.backlog_limit(account)
            over = int(due_jobs.get(account) or 0) + n - limit
            if limit and over > 0:
                self._count_refusal("backlog")
                raise BacklogFullError(account, over / self.store.settings.send_rate_per_s(account))

    def commit_batch(self, prepared: Sequence[_Prepared], progress: Any = None) -> list[Job]:
        """Write a whole batch, all or nothing for every check; see the module docstring.

        Raises:
            ValidationError: an item would be refused; nothing was queued.
            RedisUnavailableError: Redis failed midway; ``queued`` and ``in_doubt`` say what was
                written.
        """
        if len(prepared) > 1:
            for start in range(0, len(prepared), CHUNK * 10):
                self._precheck(prepared[start : start + CHUNK * 10])
        out: list[Job] = []
        for start in range(0, len(prepared), CHUNK):
            chunk = prepared[start : start + CHUNK]
            try:
                out += self._commit_retrying(chunk)
            except RedisUnavailableError as e:
                end = start + len(chunk)
                where = (
                    f"items 0-{start - 1} were queued; " if start else "no item was queued; "
                ) + f"items {start}-{end - 1} may or may not have been"
                if end < len(prepared):
                    where += f"; items {end}-{len(prepared) - 1} were not"
                raise RedisUnavailableError(
                    f"Redis became unreachable: {where}. Sending the whole batch again with the same "
                    f"idempotency keys is safe: {e}",
                    queued=out,
                    in_doubt=tuple(range(start, end)),
                ) from None
            if progress is not None:
                progress.update(len(chunk))
        return out

    def _commit_retrying(self, chunk: Sequence[_Prepared]) -> list[Job]:
        """Commit one chunk; after a connection error, try the same chunk once more (the same job
        ids: what the first try wrote is recognised, never queued twice)."""
        for attempt in (0, 1):
            try:
                return self._commit(chunk, checked=True)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if attempt:
                    raise RedisUnavailableError(str(e)) from None
                time.sleep(0.2)
        raise AssertionError("unreachable")
