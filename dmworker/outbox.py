"""The producer API: validate, then enqueue in one Redis round trip plus at most one publish.

>>> outbox = Outbox()                                   # settings from the environment
>>> job = outbox.send_text("1784...", "Hello! Thanks for reaching out.")
>>> outbox.sequence("1784...").typing(seconds=2).text("Here is your answer!").enqueue()
>>> outbox.status(job.id).state                         # queued | scheduled | ... | sent

Every method validates first (:class:`dmworker.errors.ValidationError` with field paths,
nothing queued), accepts ``idempotency_key=`` (same key within the retention: same job, never a
second send), ``delay=``/``at=`` (a follow-up), ``key=``/``replace=`` (name a follow-up),
``cancel_on_reply=`` and ``account=``.  Redis unreachable raises
:class:`dmworker.errors.RedisUnavailableError` with nothing written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis

from .errors import JobNotFoundError, RedisUnavailableError, ValidationError, WindowClosedError
from .jobs import JobStatus, new_job_id
from .keys import account_of_job
from .lanes import LaneStore
from .runtime import get_runtime
from .schemas import SCHEMA_VERSION, dump_job, rate_class, validate_send, validate_sequence
from .service import HUMAN_AGENT_WINDOW_MS, WINDOW_MS, enforce_windows, window_limit_ms
from .settings import Settings

Delay = timedelta | float | int
log = logging.getLogger("dmworker.outbox")


@dataclass(frozen=True)
class Job:
    """A handle on an accepted job (``ids`` has every step of a sequence; ``id`` is the first)."""

    id: str
    ids: tuple[str, ...]
    account: str
    recipient: str
    due_ms: int | None
    duplicate: bool = False


@dataclass(frozen=True)
class WindowInfo:
    """The messaging window of one user.  Times are epoch milliseconds (Redis clock)."""

    recipient: str
    open: bool
    last_user_message_ms: int | None
    closes_at_ms: int | None
    human_agent_open: bool
    human_agent_closes_at_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Prepared:
    account: str
    lane: str
    recipient: str
    jobs: list[tuple[str, str, str]]
    opts: dict[str, Any]
    window_limit_ms: int


class Outbox:
    """Enqueue send jobs for the workers.  Thread-safe; cheap to create."""

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
    def send_text(
        self, recipient: str, text: str, human_agent: bool = False, reply_to: str | None = None, **opts: Any
    ) -> Job:
        """Queue a text (1-1000 UTF-8 bytes); ``human_agent`` extends the window to 7 days."""
        return self.submit(
            "text", recipient, {"text": text, "human_agent": human_agent, "reply_to": reply_to}, **opts
        )

    def send_media(
        self,
        recipient: str,
        type: str = "image",
        url: str | None = None,
        attachment_id: str | None = None,
        urls: Sequence[str] | None = None,
        **opts: Any,
    ) -> Job:
        """Queue an image, video, audio or file (by ``url`` or ``attachment_id``; ``urls``: 2-10 images)."""
        args: dict[str, Any] = {"type": type}
        for name, value in (("url", url), ("attachment_id", attachment_id), ("urls", urls)):
            if value is not None:
                args[name] = list(value) if name == "urls" else value
        return self.submit("media", recipient, args, **opts)

    def send_like_heart(self, recipient: str, **opts: Any) -> Job:
        return self.submit("like_heart", recipient, {}, **opts)

    def send_media_share(self, recipient: str, post_id: str, **opts: Any) -> Job:
        return self.submit("media_share", recipient, {"post_id": post_id}, **opts)

    def send_quick_replies(
        self, recipient: str, text: str, replies: Sequence[Mapping[str, Any]], **opts: Any
    ) -> Job:
        """Queue a text with 1-13 quick replies."""
        return self.submit(
            "quick_replies", recipient, {"text": text, "replies": [dict(r) for r in replies]}, **opts
        )

    def send_generic_template(
        self, recipient: str, elements: Sequence[Mapping[str, Any]], **opts: Any
    ) -> Job:
        return self.submit("generic_template", recipient, {"elements": [dict(e) for e in elements]}, **opts)

    def send_button_template(
        self, recipient: str, text: str, buttons: Sequence[Mapping[str, Any]], **opts: Any
    ) -> Job:
        return self.submit(
            "button_template", recipient, {"text": text, "buttons": [dict(b) for b in buttons]}, **opts
        )

    def send_private_reply(self, comment_id: str, text: str, **opts: Any) -> Job:
        """Queue the one private reply a comment allows (within 7 days of the comment)."""
        return self.submit("private_reply", comment_id, {"text": text}, **opts)

    def react_to_message(self, recipient: str, message_id: str, reaction: str = "love", **opts: Any) -> Job:
        return self.submit("react", recipient, {"message_id": message_id, "reaction": reaction}, **opts)

    def unreact_to_message(self, recipient: str, message_id: str, **opts: Any) -> Job:
        return self.submit("unreact", recipient, {"message_id": message_id}, **opts)

    def send_typing_indicator(self, recipient: str, on: bool = True, seconds: float = 0, **opts: Any) -> Job:
        """Queue typing_on (or off); ``seconds`` = pause before the recipient's next job."""
        return self.submit("typing", recipient, {"on": on, "seconds": seconds}, **opts)

    def mark_seen(self, recipient: str, **opts: Any) -> Job:
        return self.submit("mark_seen", recipient, {}, **opts)

    def sequence(self, recipient: str, account: str | None = None) -> SequenceBuilder:
        """Build an ordered sequence for one recipient: ``.typing(2).text("hi").enqueue()``."""
        return SequenceBuilder(self, recipient, account)

    # ------------------------------------------------------------------ generic entry points
    def submit(self, kind: str, recipient: str, args: Mapping[str, Any], **opts: Any) -> Job:
        """Validate and queue one job of ``kind`` (the method name without ``send_``)."""
        return self._commit([self._prepare(kind, recipient, args, opts)])[0]

    def submit_sequence(self, recipient: str, steps: Sequence[Mapping[str, Any]], **opts: Any) -> Job:
        """Validate and queue ordered ``steps`` (``[{"kind": "typing", "seconds": 2}, ...]``)."""
        return self._commit([self._prepare("sequence", recipient, {"steps": list(steps)}, opts)])[0]

    def send_many(self, items: Iterable[Mapping[str, Any]], progress: bool = False) -> list[Job]:
        """Queue many jobs in pipelined round trips; every item is validated before any is queued.

        Each item is ``{"kind": ..., "recipient": ..., <args>, [account, delay, at, key, replace,
        cancel_on_reply, idempotency_key]}``; ``kind: "sequence"`` takes ``steps``.  ``progress``
        shows a progress bar on stderr.

        Raises:
            ValidationError: ``messages`` keyed ``"<index>.<field>"``; nothing was queued.
        """
        prepared, errors = [], {}
        for i, item in enumerate(items):
            try:
                if not isinstance(item, Mapping):
                    raise ValidationError({"_schema": ["expected an object"]})
                body = dict(item)
                kind, recipient = body.pop("kind", None), body.pop("recipient", None)
                opts = {k: body.pop(k) for k in OPTIONS if k in body}
                if not isinstance(kind, str):
                    raise ValidationError({"kind": ["missing or not a string"]})
                if not isinstance(recipient, str):
                    raise ValidationError({"recipient": ["missing or not a string"]})
                prepared.append(self._prepare(kind, recipient, body, opts))
            except ValidationError as e:
                for path, msgs in e.messages.items():
                    errors[f"{i}.{path}"] = msgs
        if errors:
            raise ValidationError(errors)
        out: list[Job] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(prepared), desc="queued", unit="job", file=sys.stderr)
        for start in range(0, len(prepared), 500):
            out += self._commit(prepared[start : start + 500])
            if bar is not None:
                bar.update(len(prepared[start : start + 500]))
        if bar is not None:
            bar.close()
        return out

    # ------------------------------------------------------------------ reading and control
    def status(self, job_id: str) -> JobStatus:
        """The status of a job.

        Raises:
            JobNotFoundError: unknown id, or its retention has passed.
        """
        try:
            account = account_of_job(job_id)
        except ValueError:
            raise JobNotFoundError(job_id) from None
        k = self.store.acct(account)
        try:
            st, job = self.redis.hmget(k.status, job_id), self.redis.hget(k.jobs, job_id)
        except redis.RedisError as e:
            raise RedisUnavailableError(f"Redis is unreachable: {e}") from None
        if not st or st[0] is None:
            raise JobNotFoundError(job_id)
        return JobStatus.from_redis(job_id, account, st[0], job)

    def cancel(
        self, job_id: str | None = None, *, key: str | None = None, account: str | None = None
    ) -> bool:
        """Cancel a queued or scheduled job by id, or a follow-up by ``key``.

        Returns True when it was cancelled, False when it had already been sent, failed or
        cancelled (or is being sent right now).

        Raises:
            JobNotFoundError: no such job or key.
        """
        if (job_id is None) == (key is None):
            raise ValidationError({"_schema": ["give exactly one of job_id or key"]})
        acct = account_of_job(job_id) if job_id else self._account(account)
        try:
            tag, _jid, _ = self.store.cancel(acct, job_id=job_id, key=key)
        except redis.RedisError as e:
            raise RedisUnavailableError(f"Redis is unreachable: {e}") from None
        if tag == "notfound":
            raise JobNotFoundError(job_id or f"key={key}")
        return tag == "cancelled"

    def window(self, recipient: str, account: str | None = None) -> WindowInfo:
        """Whether ``recipient``'s messaging window is open now, and when it closes."""
        acct = self._account(account)
        try:
            last = self.redis.hget(self.store.acct(acct).windows, recipient)
            sec, usec = self.redis.time()
        except redis.RedisError as e:
            raise RedisUnavailableError(f"Redis is unreachable: {e}") from None
        now = int(sec) * 1000 + int(usec) // 1000
        if last is None:
            return WindowInfo(recipient, False, None, None, False, None)
        t = int(last)
        return WindowInfo(
            recipient,
            now <= t + WINDOW_MS,
            t,
            t + WINDOW_MS,
            now <= t + HUMAN_AGENT_WINDOW_MS,
            t + HUMAN_AGENT_WINDOW_MS,
        )

    # ------------------------------------------------------------------ internals
    def _account(self, account: str | None) -> str:
        acct = account or self.account
        if not acct:
            raise ValidationError({"account": ["no account given and no default account configured"]})
        return acct

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
        delay_ms, at_ms = _due(opts.get("delay"), opts.get("at"))
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
                "created_ms": _now_ms(),
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
        except redis.RedisError as e:
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
                        f"the messaging window closes at {_iso(closes)} ({closes} ms), "
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
        try:
            pipe = self.redis.pipeline(transaction=False)
            new_accounts = {p.account for p in prepared} - self._known_accounts
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
            replies = pipe.execute(raise_on_error=True)
        except redis.RedisError as e:
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
                    f"the messaging window closes at {_iso(res.window_closes_ms)} "
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


OPTIONS = ("account", "delay", "at", "key", "replace", "cancel_on_reply", "idempotency_key")


class SequenceBuilder:
    """Ordered steps for one recipient, queued atomically by :meth:`enqueue`."""

    def __init__(self, outbox: Outbox, recipient: str, account: str | None) -> None:
        self.outbox, self.recipient, self.account = outbox, recipient, account
        self.steps: list[dict[str, Any]] = []

    def _add(self, kind: str, **args: Any) -> SequenceBuilder:
        self.steps.append({"kind": kind, **{k: v for k, v in args.items() if v is not None}})
        return self

    def typing(self, seconds: float = 0, on: bool = True) -> SequenceBuilder:
        return self._add("typing", seconds=seconds, on=on)

    def text(self, text: str, human_agent: bool = False, reply_to: str | None = None) -> SequenceBuilder:
        return self._add("text", text=text, human_agent=human_agent, reply_to=reply_to)

    def media(
        self,
        type: str = "image",
        url: str | None = None,
        attachment_id: str | None = None,
        urls: Sequence[str] | None = None,
    ) -> SequenceBuilder:
        return self._add(
            "media",
            type=type,
            url=url,
            attachment_id=attachment_id,
            urls=list(urls) if urls is not None else None,
        )

    def quick_replies(self, text: str, replies: Sequence[Mapping[str, Any]]) -> SequenceBuilder:
        return self._add("quick_replies", text=text, replies=[dict(r) for r in replies])

    def generic_template(self, elements: Sequence[Mapping[str, Any]]) -> SequenceBuilder:
        return self._add("generic_template", elements=[dict(e) for e in elements])

    def button_template(self, text: str, buttons: Sequence[Mapping[str, Any]]) -> SequenceBuilder:
        return self._add("button_template", text=text, buttons=[dict(b) for b in buttons])

    def react(self, message_id: str, reaction: str = "love") -> SequenceBuilder:
        return self._add("react", message_id=message_id, reaction=reaction)

    def unreact(self, message_id: str) -> SequenceBuilder:
        return self._add("unreact", message_id=message_id)

    def like_heart(self) -> SequenceBuilder:
        return self._add("like_heart")

    def media_share(self, post_id: str) -> SequenceBuilder:
        return self._add("media_share", post_id=post_id)

    def mark_seen(self) -> SequenceBuilder:
        return self._add("mark_seen")

    def enqueue(self, **opts: Any) -> Job:
        """Validate every step and queue them all (or none).  Options as for any send."""
        if self.account:
            opts.setdefault("account", self.account)
        return self.outbox.submit_sequence(self.recipient, self.steps, **opts)


def _due(delay: Any, at: Any) -> tuple[int | None, int | None]:
    if delay is not None and at is not None:
        raise ValidationError({"delay": ["give delay or at, not both"]})
    if delay is not None:
        if isinstance(delay, timedelta):
            seconds = delay.total_seconds()
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
            seconds = float(delay)
        else:
            raise ValidationError({"delay": ["expected seconds (a number) or a timedelta"]})
        if not 0 <= seconds <= 366 * 86400:
            raise ValidationError({"delay": ["must be between 0 and 366 days"]})
        return (int(seconds * 1000) if seconds > 0 else None), None
    if at is not None:
        if isinstance(at, str):
            try:
                at = datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationError({"at": ["expected an ISO 8601 datetime with a timezone"]}) from None
        if not isinstance(at, datetime):
            raise ValidationError({"at": ["expected an aware datetime"]})
        if at.tzinfo is None or at.tzinfo.utcoffset(at) is None:
            raise ValidationError(
                {"at": ["naive datetime refused: give a timezone (e.g. tzinfo=timezone.utc)"]}
            )
        return None, int(at.timestamp() * 1000)
    return None, None


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    from datetime import timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
