"""The producer API: validate, then enqueue in one Redis round trip plus at most one publish.

>>> outbox = Outbox()                                   # settings from the environment
>>> job = outbox.send_text("1784...", "Hello! Thanks for reaching out.")
>>> outbox.sequence("1784...").typing(seconds=2).text("Here is your answer!").enqueue()
>>> outbox.status(job.id).state                         # queued | scheduled | ... | sent

Every method validates first (:class:`dmworker.errors.ValidationError` with field paths,
nothing queued), accepts ``idempotency_key=`` (same key and same request within the retention: the
same job, never a second send; the same key with a different request:
:class:`dmworker.errors.IdempotencyConflictError`), ``delay=``/``at=`` (a follow-up; ``at`` in the
past means now), ``ttl=``/``expires_at=`` (never sent after that: ``expired``; default
``DMWORKER_MAX_AGE_S`` from when the job is due), ``key=``/``replace=`` (name a follow-up),
``cancel_on_reply=`` and ``account=``.  Redis unreachable raises
:class:`dmworker.errors.RedisUnavailableError` with nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import redis

from .enqueue import OPTIONS, Enqueuer
from .errors import JobNotFoundError, RedisUnavailableError, ValidationError
from .jobs import Job, JobStatus, WindowInfo
from .keys import account_of_job
from .sequence import SequenceBuilder
from .service import HUMAN_AGENT_WINDOW_MS, WINDOW_MS

Delay = timedelta | float | int


class Outbox(Enqueuer):
    """Enqueue send jobs for the workers.  Thread-safe; cheap to create."""

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
        return self.submit_prepared(self._prepared(kind, recipient, args, opts))

    def submit_sequence(self, recipient: str, steps: Sequence[Mapping[str, Any]], **opts: Any) -> Job:
        """Validate and queue ordered ``steps`` (``[{"kind": "typing", "seconds": 2}, ...]``) as one
        unit: cancelling it (by ``Job.id``, any of ``Job.ids`` or its key), replacing it or a reply
        acts on every step not yet sent."""
        if not isinstance(steps, (list, tuple)):
            self._count_refusal("validation")
            raise ValidationError({"steps": ["must be a list of steps"]})
        return self.submit_prepared(self._prepared("sequence", recipient, {"steps": list(steps)}, opts))

    def _prepared(self, kind: str, recipient: str, args: Mapping[str, Any], opts: Mapping[str, Any]) -> Any:
        try:
            return self._prepare(kind, recipient, args, opts)
        except ValidationError:
            self._count_refusal("validation")
            raise

    def send_many(
        self, items: Iterable[Mapping[str, Any]], progress: bool = False, priority: str = "normal"
    ) -> list[Job]:
        """Queue many jobs in pipelined round trips; every item is validated before any is queued.

        ``priority`` applies to the items that do not give their own: for a broadcast, ``"low"``
        lets the account's replies to users who are writing right now (``normal``/``high``) go
        first; the ``dmworker bulk`` command uses ``low``.

        Each item is ``{"kind": ..., "recipient": ..., <args>, [account, delay, at, key, replace,
        cancel_on_reply, idempotency_key, ttl, expires_at, priority]}``; ``kind: "sequence"`` takes
        ``steps``.
        ``progress`` shows a progress bar on stderr.  All or nothing for every check that can
        refuse an item (validation, keys, windows, idempotency conflicts, expiry).

        Raises:
            ValidationError: ``messages`` keyed ``"<index>.<field>"``; nothing was queued.
            RedisUnavailableError: Redis became unreachable; ``queued`` lists the jobs that were
                queued (and published), ``in_doubt`` the item indexes whose fate is unknown, and the
                message says which items were not queued.
        """
        prepared, errors = [], {}
        for i, item in enumerate(items):
            try:
                if not isinstance(item, Mapping):
                    raise ValidationError({"_schema": ["expected an object"]})
                body = dict(item)
                kind, recipient = body.pop("kind", None), body.pop("recipient", None)
                opts = {k: body.pop(k) for k in OPTIONS if k in body}
                opts.setdefault("priority", priority)
                if not isinstance(kind, str):
                    raise ValidationError({"kind": ["missing or not a string"]})
                if not isinstance(recipient, str):
                    raise ValidationError({"recipient": ["missing or not a string"]})
                prepared.append(self._prepare(kind, recipient, body, opts))
            except ValidationError as e:
                for path, msgs in e.messages.items():
                    errors[f"{i}.{path}"] = msgs
        if errors:
            self._count_refusal("validation")
            raise ValidationError(errors)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(prepared), desc="queued", unit="job", file=sys.stderr)
        try:
            return self.commit_batch(prepared, progress=bar)
        finally:
            if bar is not None:
                bar.close()

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
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailableError(f"Redis is unreachable: {e}") from None
        if not st or st[0] is None:
            raise JobNotFoundError(job_id)
        return JobStatus.from_redis(job_id, account, st[0], job)

    def timeline(self, job_id: str) -> list[list[Any]]:
        """The job's history: ``[ms, what, detail(, count)]`` entries, oldest first — accepted,
        scheduled, promoted, each attempt, its outcome (retry with the Graph error code, else the
        error's kind, or ``timeout``; throttled, token_refused), waits (rate, hold,
        paused:<reason>, probe; a repeat counts up), the end state, seen, echo, reaction.  Bounded:
        the first entry and the latest ones.

        Raises:
            JobNotFoundError: unknown id, or its retention has passed.
        """
        return self.status(job_id).timeline

    def find(self, message_id: str, account: str | None = None) -> JobStatus:
        """The job that sent Meta's ``message_id`` (in ``account``, else in every account).

        Raises:
            JobNotFoundError: no retained job sent it.
        """
        try:
            accounts = [account] if account else sorted(self.redis.smembers(self.store.keys.accounts))
            pipe = self.redis.pipeline(transaction=False)
            for a in accounts:
                pipe.hget(self.store.acct(a).mids, message_id)
            found = [jid for jid in pipe.execute() if jid]
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnavailableError(f"Redis is unreachable: {e}") from None
        if not found:
            raise JobNotFoundError(f"message_id={message_id}")
        return self.status(found[0])

    def cancel(
        self, job_id: str | None = None, *, key: str | None = None, account: str | None = None
    ) -> bool:
        """Cancel a job by id, or a follow-up by ``key`` — with every other step of its sequence
        that has not been sent, atomically.

        Returns True when something was cancelled, False when nothing was left to cancel (sent,
        failed, cancelled, expired, or being sent right now).

        Raises:
            JobNotFoundError: no such job or key.
        """
        if (job_id is None) == (key is None):
            raise ValidationError({"_schema": ["give exactly one of job_id or key"]})
        acct = account_of_job(job_id) if job_id else self._account(account)
        try:
            tag, _jid, _ = self.store.cancel(acct, job_id=job_id, key=key, now_ms=self.clock())
        except (redis.ConnectionError, redis.TimeoutError) as e:
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
        except (redis.ConnectionError, redis.TimeoutError) as e:
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


__all__ = ["OPTIONS", "Job", "Outbox", "SequenceBuilder", "WindowInfo"]
