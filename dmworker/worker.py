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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .clients import ClientPool
from .lanes import LaneStore, Step
from .schemas import load_job
from .service import precheck, send
from .settings import Settings

log = logging.getLogger("dmworker.worker")

LANE_SLICE_S = 5.0


@dataclass
class LaneRun:
    """What one visit of a lane did (for logs and tests)."""

    sent: int = 0
    outcomes: list[str] = field(default_factory=list)
    ended: str = ""
    wait_until_ms: int | None = None


class LaneWorker:
    """Runs lanes for one process: a lane store, an HTTP client per account."""

    def __init__(self, settings: Settings, store: LaneStore, clients: ClientPool | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clients = clients or ClientPool(settings)

    def run_lane(
        self, account: str, recipient: str, publish: Callable[[str, str], Any] | None = None
    ) -> LaneRun:
        """Deliver the lane's jobs until it is empty, must wait, or has had its slice."""
        holder = uuid.uuid4().hex
        token = self.clients.token(account)
        run = LaneRun()
        step = self.store.step(account, recipient, holder, acquire=True, token=token)
        started = time.monotonic()
        while step.action == "job":
            outcome = self.execute(account, recipient, step)
            run.outcomes.append(outcome["o"])
            if outcome["o"] == "sent":
                run.sent += 1
            give_back = (
                len(run.outcomes) >= self.settings.lane_batch or time.monotonic() - started > LANE_SLICE_S
            )
            step = self.store.step(
                account,
                recipient,
                holder,
                acquire=False,
                prev_id=step.job_id,
                outcome=outcome,
                yield_lane=give_back,
                token=token,
            )
        run.ended = step.action
        run.wait_until_ms = step.until_ms
        if step.action == "yield" and publish is not None:
            publish(account, recipient)
        if step.action == "lost":
            log.warning(
                "lane lease lost (a send took longer than DMWORKER_LEASE_MS)",
                extra={"account": account, "recipient": recipient},
            )
        return run

    def execute(self, account: str, recipient: str, step: Step) -> dict[str, Any]:
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
        outcome = send(job, attempts=step.attempts, client=self.clients.get(account), settings=self.settings)
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
