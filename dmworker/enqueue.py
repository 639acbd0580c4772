"""The enqueue path behind :class:`dmworker.outbox.Outbox`: validate, then ONE Redis round trip
(a pipeline holding the ``enqueue`` script per unit) and at most one Celery publish per new lane.
Batches (all or nothing for every check) are in :mod:`dmworker.batch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from . import scripts
from .batch import BatchOps
from .due import due_ms, expiry_ms, iso
from .errors import (
    BacklogFullError,
    IdempotencyConflictError,
    RedisUnavailableError,
    ValidationError,
    WindowClosedError,
)
from .jobs import Job, new_job_id
from .lanes import EnqueueResult, LaneStore
from .runtime import get_runtime
from .schemas import SCHEMA_VERSION, dump_job, rate_class, validate_send, validate_sequence
from .service import enforce_windows, window_limit_ms
from .settings import Settings

log = logging.getLogger("dmworker.outbox")

OPTIONS = (
    "account",
    "delay",
    "at",
    "key",
    "replace",
    "cancel_on_reply",
    "idempotency_key",
    "ttl",
    "expires_at",
    "priority",
)
#: ``priority=`` values: between the lanes of one account, high goes before normal before low.
PRIORITIES = ("high", "normal", "low")

Clock = Callable[[], "int | None"]


@dataclass(frozen=True)
class _Prepared:
    account: str
    lane: str
    recipient: str
    jobs: list[tuple[str, str, str]]
    opts: dict[str, Any]
    window_limit_ms: int
    fingerprint: str


def _no_clock() -> int | None:
    return None


class Enqueuer(BatchOps):
    """Validation and the one-round-trip enqueue shared by every Outbox method.

    ``publish(account, lane)`` replaces the Celery publish (tests, embedding); by default lanes are
    published on the broker of ``settings``.  ``clock`` returns the time the scripts use (epoch
    ms), ``None`` for the Redis server's clock; tests inject simulated time with it.
    """

    def __init__(
        self,
        account: str | None = None,
        *,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
        publish: Callable[[str, str], Any] | None = None,
        clock: Clock = _no_clock,
    ) -> None:
        if settings is None:
            rt = get_runtime()
            settings, client = rt.settings, client or rt.redis
        if client is None:
            from . import redisconn

            client = redisconn.client(settings)
        self.settings = settings
        self.account = account or settings.default_account
        self.store = LaneStore(settings, client)
        self.redis: Any = client
        self._publish = publish
        self.clock = clock
        self._known_accounts: set[str] = set()

    # ------------------------------------------------------------------ send methods
    def _account(self, account: str | None) -> str:
        """The account a send is for: configured (environment/file) or registered at run time.

        ``settings.accounts`` is live in the runtime (:mod:`dmworker.live`); settings passed in
        without that view are completed by asking the registry (one ``HEXISTS``, remembered for
        ``DMWORKER_ACCOUNTS_REFRESH_S``).

        Raises:
            ValidationError: no account given and no default one, or an unknown account.
            RedisUnavailableError: when the registry cannot be asked.
        """
        import time

        acct = account or self.account
        if not acct:
            raise ValidationError({"account": ["no account given and no default account configured"]})
        if acct in self.settings.accounts:
            return acct
        seen: dict[str, float] = self.__dict__.setdefault("_registered_at", {})
        if time.monotonic() - seen.get(acct, float("-inf")) < self.settings.accounts_refresh_s:
            return acct
        if not hasattr(self.settings.accounts, "registry"):
            from .registry import Registry

            try:
                known = Registry(self.settings.key_prefix, self.redis).exists(acct)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                raise RedisUnavailableError(f"Redis is unreachable; nothing was queued: {e}") from None
            if known:
                seen[acct] = time.monotonic()
                return acct
        raise ValidationError(
            {
                "account": [
                    f"account {acct!r} is not registered: add it (dmworker accounts add, "
                    "PUT /v1/accounts/<id>) or configure it (DMWORKER_ACCOUNTS_FILE)"
                ]
            }
        )

    def _prepare(
        self, kind: str, recipient: str, args: Mapping[str, Any], opts: Mapping[str, Any]
    ) -> _Prepared:
        unknown = set(opts) - set(OPTIONS)
        if unknown:
            raise ValidationError({u: ["unknown option"] for u in sorted(unknown)})
        acct = opts.get("account")
        if acct is not None and (not isinstance(acct, str) or not acct):
            raise ValidationError({"account": ["must be a non-empty string (an Instagram account id)"]})
        for flag in ("replace", "cancel_on_reply"):
            if opts.get(flag) is not None and not isinstance(opts.get(flag), bool):
                raise ValidationError({flag: ["must be true or false"]})
        account = self._account(acct)
        if kind == "sequence":
            if set(args) - {"steps"}:
                raise ValidationError({u: ["Unknown field."] for u in sorted(set(args) - {"steps"})})
            steps = validate_sequence(recipient, args.get("steps"))  # type: ignore[arg-type]
        else:
            steps = [(kind, validate_send(kind, recipient, args))]
        private = steps[0][0] == "private_reply"
        lane = f"c:{recipient}" if private else recipient
        if private and opts.get("cancel_on_reply"):
            raise ValidationError(
                {"cancel_on_reply": ["a private reply answers a comment: there is no reply to cancel it on"]}
            )
        priority = opts.get("priority", "normal")
        if priority not in PRIORITIES:
            raise ValidationError({"priority": ["must be one of high, normal, low"]})
        delay_ms, at_ms = due_ms(opts.get("delay"), opts.get("at"))
        ttl_ms, expires_at_ms = expiry_ms(opts.get("ttl"), opts.get("expires_at"))
        for name in ("key", "idempotency_key"):
            v = opts.get(name)
            if v is not None and (not isinstance(v, str) or not v or len(v) > 200):
                raise ValidationError({name: ["must be a non-empty string of at most 200 characters"]})
        ids = new_job_id(account, len(steps))
        jobs = []
        for job_id, (k, a) in zip(ids, steps, strict=True):
            job = {
                "v": SCHEMA_VERSION,
                "id": job_id,
                "account": account,
                "recipient": recipient,
                "kind": k,
                "args": a,
                "created_ms": int(time.time() * 1000),
                "due_ms": at_ms,
                "key": opts.get("key"),
                "cancel_on_reply": bool(opts.get("cancel_on_reply", False)),
                "idem": opts.get("idempotency_key"),
                "seq": ids[0] if len(ids) > 1 else None,
            }
            jobs.append((job_id, dump_job(job), rate_class(k, a)))
        limit = 0
        if enforce_windows(self.settings) and not private:
            limit = min(window_limit_ms(k, a) for k, a in steps)
        request = [account, lane, steps, {o: opts.get(o) for o in OPTIONS if o != "idempotency_key"}]
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[
            :32
        ]
        prepared_opts = dict(opts, delay_ms=delay_ms, at_ms=at_ms, ttl_ms=ttl_ms, expires_at_ms=expires_at_ms)
        return _Prepared(account, lane, recipient, jobs, prepared_opts, limit, fingerprint)

    def _commit(self, prepared: Sequence[_Prepared], *, checked: bool = False) -> list[Job]:
        """Write ``prepared`` (one round trip), publish the new lanes, then raise for any refusal."""
        if len(prepared) > 1 and not checked:
            self._precheck(prepared)
        new_accounts = {p.account for p in prepared} - self._known_accounts
        now = self.clock()
        wall = now if now is not None else int(time.time() * 1000)

        # replace=True may cancel an earlier unit: that writes events (consumers read marked accounts)
        replacing = (
            {p.account for p in prepared if p.opts.get("replace")} if self.store.events_keep_ms else set()
        )

        # when each account next has something to dispatch: a follow-up's due time, or now (a lane
        # the admission budget did not let publish waits for a dispatcher, which admits it as lanes
        # of the account finish)
        due: dict[str, int] = {}
        for p in prepared:
            o = p.opts
            when = o["at_ms"] or (wall + o["delay_ms"] if o["delay_ms"] else wall)
            due[p.account] = min(due.get(p.account, when), when)

        def build(pipe: Any) -> None:
            pipe.zadd(self.store.keys.due, due, lt=True)
            if replacing:
                pipe.zadd(self.store.keys.events_active, dict.fromkeys(replacing, wall))
            if new_accounts:
                pipe.sadd(self.store.keys.accounts, *new_accounts)
                # retention: each account with data is trimmed at the latest a retention from now
                at = wall + self.settings.retention_s * 1000
                pipe.zadd(self.store.keys.housekeep, dict.fromkeys(new_accounts, at), nx=True)
            for p in prepared:
                o = p.opts
                self.store.enqueue(
                    p.account,
                    p.lane,
                    p.jobs,
                    delay_ms=o["delay_ms"],
                    at_ms=o["at_ms"],
                    idempotency_key=o.get("idempotency_key"),
                    fingerprint=p.fingerprint,
                    key=o.get("key"),
                    replace=bool(o.get("replace", False)),
                    cancel_on_reply=bool(o.get("cancel_on_reply", False)),
                    window_limit_ms=p.window_limit_ms,
                    ttl_ms=o["ttl_ms"],
                    expires_at_ms=o["expires_at_ms"],
                    priority=o.get("priority") or "normal",
                    now_ms=now,
                    pipe=pipe,
                )

        # units of one lane run in the order given even if the script cache is emptied meanwhile
        load = ("enqueue",) if len(prepared) > 1 else ()
        replies = scripts.execute_pipeline(self.redis, build, load=load)
        self._known_accounts |= new_accounts
        replies = replies[1 + (2 if new_accounts else 0) + (1 if replacing else 0) :]
        out: list[Job] = []
        to_publish: list[tuple[str, str]] = []
        refusal: Exception | None = None
        for p, raw in zip(prepared, replies, strict=True):
            res = LaneStore.parse_enqueue(raw)
            if res.status in ("new", "dup"):
                if res.publish:
                    to_publish.append((p.account, p.lane))
                out.append(
                    Job(
                        res.ids[0], res.ids, p.account, p.recipient, res.due_ms, duplicate=res.status == "dup"
                    )
                )
            elif refusal is None:
                refusal = self._refusal(p, res)
        if to_publish:
            self._publish_lanes(to_publish)
        if refusal is not None:
            raise refusal
        return out

    def _refusal(self, p: _Prepared, res: EnqueueResult) -> Exception:
        """The error for an item the enqueue script refused (after the batch pre-check passed: a
        concurrent producer got there first)."""
        if res.status == "keyexists":
            self._count_refusal("key")
            return ValidationError(
                {
                    "key": [
                        f"a follow-up with key {p.opts.get('key')!r} is already pending "
                        f"(job {res.existing_id}); pass replace=True"
                    ]
                }
            )
        if res.status == "idemconflict":
            self._count_refusal("idempotency_key")
            return IdempotencyConflictError(str(p.opts.get("idempotency_key")), res.ids)
        if res.status == "backlog":
            self._count_refusal("backlog")
            return BacklogFullError(p.account, res.over / self.settings.send_rate_per_s(p.account))
        if res.status == "expiry":
            self._count_refusal("expires_at")
            return ValidationError(
                {"expires_at": [f"expires before the job is due ({iso(res.due_ms or 0)})"]}
            )
        self._count_refusal("window")
        if res.window_closes_ms is None:
            return WindowClosedError(
                "the messaging window is closed: this user has not messaged "
                "the account (no inbound message recorded)"
            )
        return WindowClosedError(
            f"the messaging window closes at {iso(res.window_closes_ms)} "
            f"({res.window_closes_ms} ms), before this job would be sent",
            res.window_closes_ms,
        )

    _REFUSAL_REASONS = {
        "window": "window",
        "key": "key_exists",
        "idempotency_key": "idempotency_conflict",
        "expires_at": "expiry",
        "backlog": "backlog",
    }

    def _count_refusal(self, field: str) -> None:
        """Count a refused enqueue by reason (``P:refused``, read by /metrics); never raises."""
        reason = self._REFUSAL_REASONS.get(field, "validation")
        try:
            self.redis.hincrby(self.store.keys.refused, reason, 1)
        except redis.RedisError:
            log.debug("could not count a refusal", exc_info=True)

    def submit_prepared(self, p: _Prepared) -> Job:
        """Write one unit; map a lost Redis to :class:`RedisUnavailableError`."""
        try:
            return self._commit([p])[0]
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailableError(f"Redis is unreachable; nothing was queued: {e}") from None

    def _publish_lanes(self, lanes: list[tuple[str, str]]) -> None:
        try:
            if self._publish is not None:
                for a, r in lanes:
                    self._publish(a, r)
                return
            from .celery_app import publish_lanes

            publish_lanes(self.settings, lanes)
        except Exception:  # the jobs are safe in Redis; the dispatcher publishes them after its grace
            log.warning(
                "could not publish to the Celery broker; the dispatcher will pick the lanes up "
                "within DMWORKER_DISPATCH_GRACE_MS",
                exc_info=True,
            )
