"""The enqueue path behind :class:`dmworker.outbox.Outbox`: validate, then ONE Redis round trip
(a pipeline holding the ``enqueue`` script per job) and at most one Celery publish per new lane."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from . import scripts
from .due import due_ms, iso, now_ms
from .errors import RedisUnavailableError, ValidationError, WindowClosedError
from .jobs import Job, new_job_id
from .lanes import LaneStore
from .runtime import get_runtime
from .schemas import SCHEMA_VERSION, dump_job, rate_class, validate_send, validate_sequence
from .service import enforce_windows, window_limit_ms
from .settings import Settings

log = logging.getLogger("dmworker.outbox")

OPTIONS = ("account", "delay", "at", "key", "replace", "cancel_on_reply", "idempotency_key")


@dataclass(frozen=True)
class _Prepared:
    account: str
    lane: str
    recipient: str
    jobs: list[tuple[str, str, str]]
    opts: dict[str, Any]
    window_limit_ms: int


class Enqueuer:
    """Validation and the one-round-trip enqueue shared by every Outbox method."""

    def __init__(
        self,
        account: str | None = None,
        *,
        settings: Settings | None = None,
        client: redis.Redis | None = None,
        publish: Callable[[str, str], Any] | None = None,
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
        account = self._account(opts.get("account"))
        if kind == "sequence":
            if set(args) - {"steps"}:
                raise ValidationError({u: ["Unknown field."] for u in sorted(set(args) - {"steps"})})
            steps = validate_sequence(recipient, args.get("steps"))  # type: ignore[arg-type]
        else:
            steps = [(kind, validate_send(kind, recipient, args))]
        lane = f"c:{recipient}" if steps[0][0] == "private_reply" else recipient
        delay_ms, at_ms = due_ms(opts.get("delay"), opts.get("at"))
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
                "created_ms": now_ms(),
                "due_ms": at_ms,
                "key": opts.get("key"),
                "cancel_on_reply": bool(opts.get("cancel_on_reply", False)),
                "idem": opts.get("idempotency_key"),
                "seq": ids[0] if len(ids) > 1 else None,
            }
            jobs.append((job_id, dump_job(job), rate_class(k, a)))
        limit = 0
        if enforce_windows(self.settings) and lane == recipient:
            limit = min(window_limit_ms(k, a) for k, a in steps)
        key = opts.get("key")
        if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
            raise ValidationError({"key": ["must be a non-empty string of at most 200 characters"]})
        idem = opts.get("idempotency_key")
        if idem is not None and (not isinstance(idem, str) or not idem or len(idem) > 200):
            raise ValidationError(
                {"idempotency_key": ["must be a non-empty string of at most 200 characters"]}
            )
        return _Prepared(account, lane, recipient, jobs, dict(opts, delay_ms=delay_ms, at_ms=at_ms), limit)

    def _precheck_batch(self, prepared: Sequence[_Prepared]) -> None:
        """Refuse a batch before writing anything if an item's window or follow-up key would refuse it.

        The enqueue script checks both again atomically; this pass keeps a batch all-or-nothing.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for p in prepared:
            k = self.store.acct(p.account)
            pipe.hget(k.windows, p.lane)
            pipe.hget(k.followup_keys, p.opts.get("key") or "")
        try:
            out = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailableError(f"Redis is unreachable; nothing was queued: {e}") from None
        now = int(out[0][0]) * 1000 + int(out[0][1]) // 1000
        errors: dict[str, list[str]] = {}
        seen_keys: set[tuple[str, str]] = set()
        for n, p in enumerate(prepared):
            last, existing = out[1 + 2 * n], out[2 + 2 * n]
            if p.window_limit_ms:
                due = p.opts["at_ms"] or now + (p.opts["delay_ms"] or 0)
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
                if (existing and not p.opts.get("replace")) or (p.account, key) in seen_keys:
                    errors[f"{n}.key"] = [
                        f"a follow-up with key {key!r} is already pending; pass replace=True"
                    ]
                seen_keys.add((p.account, key))
        if errors:
            raise ValidationError(errors)

    def _commit(self, prepared: Sequence[_Prepared]) -> list[Job]:
        if len(prepared) > 1:
            self._precheck_batch(prepared)
        new_accounts = {p.account for p in prepared} - self._known_accounts

        def build(pipe: Any) -> None:
            if new_accounts:
                pipe.sadd(self.store.keys.accounts, *new_accounts)
            for p in prepared:
                o = p.opts
                self.store.enqueue(
                    p.account,
                    p.lane,
                    p.jobs,
                    delay_ms=o["delay_ms"],
                    at_ms=o["at_ms"],
                    idempotency_key=o.get("idempotency_key"),
                    key=o.get("key"),
                    replace=bool(o.get("replace", False)),
                    cancel_on_reply=bool(o.get("cancel_on_reply", False)),
                    window_limit_ms=p.window_limit_ms,
                    pipe=pipe,
                )

        try:
            replies = scripts.execute_pipeline(self.redis, build)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailableError(f"Redis is unreachable; nothing was queued: {e}") from None
        self._known_accounts |= new_accounts
        replies = replies[1:] if new_accounts else replies
        out, to_publish = [], []
        for p, raw in zip(prepared, replies, strict=True):
            res = LaneStore.parse_enqueue(raw)
            if res.status == "keyexists":
                raise ValidationError(
                    {
                        "key": [
                            f"a follow-up with key {p.opts.get('key')!r} is already "
                            f"pending (job {res.existing_id}); pass replace=True"
                        ]
                    }
                )
            if res.status == "window":
                if res.window_closes_ms is None:
                    raise WindowClosedError(
                        "the messaging window is closed: this user has not messaged "
                        "the account (no inbound message recorded)"
                    )
                raise WindowClosedError(
                    f"the messaging window closes at {iso(res.window_closes_ms)} "
                    f"({res.window_closes_ms} ms), before this job would be sent",
                    res.window_closes_ms,
                )
            if res.publish:
                to_publish.append((p.account, p.lane))
            out.append(Job(res.ids[0], res.ids, p.account, p.lane, res.due_ms, duplicate=res.status == "dup"))
        if to_publish:
            try:
                self._publish_many(to_publish)
            except Exception:  # the jobs are safe in Redis; the dispatcher publishes them after its grace
                log.warning(
                    "could not publish to the Celery broker; the dispatcher will pick the lanes up "
                    "within DMWORKER_DISPATCH_GRACE_MS",
                    exc_info=True,
                )
        return out

    def _publish_many(self, lanes: list[tuple[str, str]]) -> None:
        if self._publish is not None:
            for a, r in lanes:
                self._publish(a, r)
            return
        from .celery_app import app, process_lane

        with app.producer_or_acquire() as producer:
            for a, r in lanes:
                process_lane.apply_async((a, r), producer=producer)
