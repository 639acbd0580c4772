"""The lane loop a worker runs for one (account, recipient): take, send, record, repeat.

One ``step`` script call per send records the previous outcome and hands out the next job, so a
busy lane costs one Redis round trip per message.  When the lane must wait (typing pause,
backoff, rate limit, account pause) the step releases it with a wake-up time and the loop ends:
no worker slot is held while waiting.  A lane that stays busy is handed back after
``lane_batch`` sends or ``LANE_SLICE_S`` seconds so other lanes get their turn.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from .clients import ClientPool
from .lanes import LANES_PER_MESSAGE, LaneStore, Step
from .schemas import load_job
from .service import precheck, send
from .settings import Settings, token_fingerprint

log = logging.getLogger("dmworker.worker")

LANE_SLICE_S = 5.0


#: Attempts and first pause (s) to record an outcome through a transient Redis error: a message
#: Meta accepted must not be sent again because its outcome could not be written (the lease,
#: DMWORKER_LEASE_MS, bounds how long the lane can wait for it).
RECORD_ATTEMPTS = 5
RECORD_BACKOFF_S = 0.2

Clock = Callable[[], "int | None"]


@dataclass
class LaneRun:
    """What one visit of a lane did (for logs, tests and the Celery task's result)."""

    sent: int = 0
    outcomes: list[str] = field(default_factory=list)
    ended: str = ""
    wait_until_ms: int | None = None
    why: str | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account of the visit (what Flower shows as the task's result)."""
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o] = counts.get(o, 0) + 1
        out: dict[str, Any] = {"ended": self.ended, **counts}
        if self.wait_until_ms is not None:
            out["waiting_until_ms"] = self.wait_until_ms
            out["waiting_for"] = self.why
        return out


def _no_clock() -> int | None:
    return None


class LaneWorker:
    """Runs lanes for one process: a lane store, an HTTP client per account.

    ``clock`` returns the time to give the scripts (epoch ms), or ``None`` for the Redis server's
    clock (production); tests inject simulated time with it.
    """

    def __init__(
        self,
        settings: Settings,
        store: LaneStore,
        clients: ClientPool | None = None,
        clock: Clock = _no_clock,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients or ClientPool(settings)
        self.clock = clock
        self._sleep = sleep

    def run_lane(
        self, account: str, recipient: str, publish: Callable[[str, str], Any] | None = None
    ) -> LaneRun:
        """Deliver the lane's jobs until it is empty, must wait, or has had its slice."""
        return self.run_lanes(account, [recipient], publish)[0]

    def run_lanes(
        self,
        account: str,
        recipients: Sequence[str],
        publish: Callable[[str, str], Any] | None = None,
        *,
        go_on: Callable[[], bool] | None = None,
        publish_group: Callable[[str, list[str]], Any] | None = None,
    ) -> list[LaneRun]:
        """Visit lanes of ``account`` one after the other (the lanes of one Celery message), each
        as :meth:`run_lane` does; returns what each visit did: one run per lane of ``recipients``,
        in order, then one per lane this thread took on by itself (``go_on``).

        The step call that ends a lane (empty, waiting, handed back) also takes the next lane and
        its first job: a message of one-message lanes costs one ``step`` call per lane, not two.

        With ``go_on`` (a Celery message's visit): when the visit's last lane ends, ``go_on()`` is true
        (no other message waits for a thread of this process) and the account has lanes waiting for
        admission, the same call claims a group of them, as a dispatcher would for a new message
        (within the admission budget), and this thread visits them too, instead of a message carrying
        them through the broker to a thread that would be free for them at that moment anyway; only
        while the visit has made fewer than ``lane_batch`` sends, visited fewer than ``lane_batch``
        lanes and lasted less than :data:`LANE_SLICE_S` (the slice one busy lane gets). Claimed
        lanes left when the slice is over are published for other threads (``publish_group``).
        """
        lanes = list(dict.fromkeys(recipients))  # a lane named twice is visited once
        own = len(lanes)
        holders = [uuid.uuid4().hex for _ in lanes]
        token = self.clients.token(account)
        runs: list[LaneRun] = []
        step: Step | None = None
        visit_started = time.monotonic()
        outcomes = 0
        i = 0

        def over() -> bool:
            return time.monotonic() - visit_started > LANE_SLICE_S

        def claim(pending: int) -> int:
            """Lanes to claim in a call after which ``pending`` lanes are left to visit: only when
            none is (claimed lanes are visited one after the other: claiming them earlier would take
            them from a message another thread could work on at the same time)."""
            cap = self.settings.lane_batch  # sends, and lanes: waiting lanes are claimed too
            if go_on is None or pending or max(outcomes, len(lanes)) + LANES_PER_MESSAGE > max(cap, own):
                return 0
            return LANES_PER_MESSAGE if not over() and go_on() else 0

        while i < len(lanes):
            if step is None and i >= own and over():  # the slice is over: the claimed rest to others
                self._hand_over(account, lanes[i:], publish, publish_group)
                break
            recipient = lanes[i]
            nxt = lanes[i + 1] if i + 1 < len(lanes) and (i + 1 < own or not over()) else None
            nxt_holder = holders[i + 1] if nxt is not None else ""
            if step is None:
                step = self.store.step(
                    account,
                    recipient,
                    holders[i],
                    acquire=True,
                    token=token,
                    next_lane=nxt,
                    next_holder=nxt_holder,
                    claim=claim(len(lanes) - i - 1),
                    now_ms=self.clock(),
                )
            run = LaneRun()
            started = time.monotonic()
            while step.action == "job":
                outcome = self.execute(account, recipient, step, token)
                run.outcomes.append(outcome["o"])
                outcomes += 1
                if outcome["o"] == "sent":
                    run.sent += 1
                give_back = (
                    len(run.outcomes) >= self.settings.lane_batch or time.monotonic() - started > LANE_SLICE_S
                )
                step = self._record(
                    account,
                    recipient,
                    holders[i],
                    step.job_id,
                    outcome,
                    give_back,
                    token,
                    nxt,
                    nxt_holder,
                    claim(len(lanes) - i - 1),
                )
            self._ended(account, recipient, run, step, publish)
            runs.append(run)
            lanes += step.claimed
            holders += [uuid.uuid4().hex for _ in step.claimed]
            step = step.next  # the next lane's first step, taken by the same call (None: not taken)
            i += 1
        if own != len(recipients):  # one run per lane named
            by_lane = dict(zip(lanes[:own], runs[:own], strict=True))
            return [by_lane[r] for r in recipients] + runs[own:]
        return runs

    def _hand_over(
        self,
        account: str,
        lanes: list[str],
        publish: Callable[[str, str], Any] | None,
        publish_group: Callable[[str, list[str]], Any] | None,
    ) -> None:
        """Publish claimed lanes this visit has no time left for (they stay admitted; a dispatcher
        publishes them after its grace if this fails)."""
        try:
            if publish_group is not None:
                publish_group(account, lanes)
            elif publish is not None:
                for lane in lanes:
                    publish(account, lane)
        except Exception:  # the broker is down: the lanes are published again after the grace
            log.warning("could not publish %d claimed lane(s)", len(lanes), exc_info=True)

    def _ended(
        self,
        account: str,
        recipient: str,
        run: LaneRun,
        step: Step,
        publish: Callable[[str, str], Any] | None,
    ) -> None:
        """What follows the end of a lane's visit: the dispatchers' schedule, a handed-back lane's
        new message, the reauth check."""
        run.ended = step.action
        run.wait_until_ms = step.until_ms
        run.why = step.why
        if "reauth" in run.outcomes:  # the dispatchers resume it once a process has a new token
            self.store.redis.zadd(self.store.keys.reauth, {account: int(time.time() * 1000)}, nx=True)
        self._schedule(account, step)
        if step.action == "yield" and publish is not None:
            publish(account, recipient)
        if step.action == "lost":
            log.warning(
                "lane lease lost (a send took longer than DMWORKER_LEASE_MS)",
                extra={"account": account, "recipient": recipient},
            )

    def _schedule(self, account: str, step: Step) -> None:
        """Make the dispatchers look at the account when the lane it left waiting is due again
        (``P:due``: they visit only accounts with something due)."""
        if step.action == "wait" and step.until_ms is not None:
            at = step.until_ms
        elif step.action == "yield":  # published again by this worker; looked at if that is lost
            clock = self.clock()
            at = (clock if clock is not None else int(time.time() * 1000)) + self.settings.lease_ms
        else:
            return
        self.store.redis.zadd(self.store.keys.due, {account: at}, lt=True)

    def _record(
        self,
        account: str,
        recipient: str,
        holder: str,
        prev_id: str | None,
        outcome: dict[str, Any],
        give_back: bool,
        token: str,
        next_lane: str | None = None,
        next_holder: str = "",
        claim: int = 0,
    ) -> Step:
        """Record ``outcome`` and take the next step (and, when the lane ends, the first step of
        ``next_lane``), retrying a transient Redis error (bounded).

        Safe to repeat: the outcome is fenced by the holder token, so a call that ran but whose
        reply was lost is not recorded twice; the job it handed out (of this lane, or of the next
        one under the same holder token) is handed out again.
        """
        for attempt in range(RECORD_ATTEMPTS):
            try:
                return self.store.step(
                    account,
                    recipient,
                    holder,
                    acquire=False,
                    prev_id=prev_id,
                    outcome=outcome,
                    yield_lane=give_back,
                    token=token,
                    next_lane=next_lane,
                    next_holder=next_holder,
                    claim=claim,
                    now_ms=self.clock(),
                )
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                log.warning(
                    "Redis error while recording a %s outcome; retrying",
                    outcome.get("o"),
                    extra={"job_id": prev_id, "recipient": recipient, "account": account},
                )
                self._sleep(RECORD_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def execute(self, account: str, recipient: str, step: Step, token: str = "") -> dict[str, Any]:
        """The outcome of the job ``step`` hands out (an API call unless a precheck settles it)."""
        extra = {"job_id": step.job_id, "recipient": recipient, "account": account}
        try:
            job = load_job(step.job_json or "")
        except ValueError as e:  # dmworker.errors.ValidationError: never crash, dead-letter it
            log.error("invalid stored job: %s", e, extra=extra)
            return {"o": "failed", "dead": True, "err": {"kind": "invalid_job", "message": str(e)}}
        settled = precheck(
            job,
            now_ms=step.now_ms,
            attempts=step.attempts,
            state_before=step.state_before,
            window_ms=step.window_ms,
            comment_state=step.comment_state,
            settings=self.settings,
        )
        if settled is not None:
            settled.setdefault("kind", job["kind"])
            log.info("not sent: %s", settled["err"]["message"], extra=extra)
            return settled
        if step.state_before == "sending":
            log.warning("resending a job whose worker died mid-send (it may be delivered twice)", extra=extra)
        outcome = send(
            job,
            attempts=step.attempts,
            client=self.clients.get(account),
            settings=self.settings,
            token_fp=token_fingerprint(token) if token else "",
        )
        if outcome["o"] == "reauth":
            log.error(
                "Meta refused the token of account %s (fingerprint %s): its sends are held, nothing is "
                "dead-lettered, until a different token is configured",
                account,
                outcome.get("fp") or "-",
                extra=extra,
            )
        if outcome["o"] == "throttled":
            pause = outcome.get("pause_ms")
            log.warning(
                "account %s paused (%s) %s: no send to it until then, then one probe",
                account,
                "Meta policy block, code 368" if outcome.get("reason") == "policy_block" else "throttled",
                f"for {pause / 1000:g} s" if pause else "with exponential backoff",
                extra=extra,
            )
        level = logging.INFO if outcome["o"] == "sent" else logging.WARNING
        log.log(
            level,
            "%s %s (attempt %d)%s",
            job["kind"],
            outcome["o"],
            step.attempts,
            f": {outcome['err'].get('message')}" if outcome.get("err") else "",
            extra=extra,
        )
        return outcome
