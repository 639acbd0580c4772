"""What may stop a Graph request before its body is looked at: throttles, rate limits, faults.

Not thread-safe by itself: :class:`~dmworker.sandbox.state.SandboxState` calls it under its lock.
Order of the checks (graph-api.md §4): throttle, then the per-account sliding 1-s rate limit (a call
is counted when it passes the throttle), then the injected faults.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from .errors import THROTTLE_MESSAGES, GraphError, fault, rate_limited, throttled

FAULT_KINDS = frozenset({"5xx", "transient", "slow", "disconnect", "503"})


@dataclass
class FaultPlan:
    """Random faults (``error_rate``) or exactly the next ``next_n`` requests (kinds in turn)."""

    error_rate: float = 0.0
    kinds: tuple[str, ...] = ("5xx", "transient")
    next_n: int | None = None
    slow_ms: float = 2000.0
    rng: random.Random = field(default_factory=random.Random)
    turn: int = 0

    def pick(self) -> str | None:
        if self.next_n is not None:
            if self.next_n <= 0:
                return None
            self.next_n -= 1
            kind = self.kinds[self.turn % len(self.kinds)]
            self.turn += 1
            return kind
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            return self.rng.choice(self.kinds)
        return None


@dataclass
class Verdict:
    """The gate's answer: ``error`` to answer at once, or a ``fault`` to apply, and the usage %."""

    pct: int = 0
    error: GraphError | None = None
    fault: str | None = None
    slow_ms: float = 0.0


class Gate:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.throttles: dict[str, tuple[float, int, float | None]] = {}  # until (monotonic s), code, RA
        self.limits: dict[str, int] = {}
        self.calls: dict[str, deque[float]] = {}
        self.faults: dict[str | None, FaultPlan] = {}

    def set_rate_limit(self, account: str, per_s: int | None) -> None:
        if per_s is None or per_s <= 0:
            self.limits.pop(account, None)
            self.calls.pop(account, None)
        else:
            self.limits[account] = int(per_s)
            self.calls.setdefault(account, deque())

    def throttle(
        self, account: str, seconds: float, code: int, retry_after_s: float | None, now: float
    ) -> None:
        if code not in THROTTLE_MESSAGES:
            raise ValueError(f"code must be one of {sorted(THROTTLE_MESSAGES)}")
        if seconds <= 0:
            self.throttles.pop(account, None)
        else:
            self.throttles[account] = (now + seconds, code, retry_after_s)

    def set_faults(
        self,
        account: str | None,
        error_rate: float,
        kinds: tuple[str, ...],
        seed: int | None,
        next_n: int | None,
        slow_ms: float,
    ) -> None:
        bad = sorted(set(kinds) - FAULT_KINDS)
        if bad or not kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {sorted(FAULT_KINDS)}, got {bad}")
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if error_rate == 0.0 and not next_n:
            self.faults.pop(account, None)
            return
        self.faults[account] = FaultPlan(error_rate, tuple(kinds), next_n, slow_ms, random.Random(seed))

    def usage_pct(self, account: str, now: float) -> int:
        per_s = self.limits.get(account)
        if not per_s:
            return 0
        calls = self.calls[account]
        while calls and calls[0] <= now - 1.0:
            calls.popleft()
        return len(calls) * 100 // per_s

    def check(self, account: str, now: float) -> Verdict:
        """Decide on one request of ``account`` at monotonic time ``now`` (counts it if admitted)."""
        blocked = self.throttles.get(account)
        if blocked is not None:
            until, code, retry_after_s = blocked
            if until > now:
                return Verdict(100, throttled(code, until - now, retry_after_s))
            del self.throttles[account]
        pct = 0
        per_s = self.limits.get(account)
        if per_s:
            calls = self.calls[account]
            while calls and calls[0] <= now - 1.0:
                calls.popleft()
            if len(calls) >= per_s:
                return Verdict(len(calls) * 100 // per_s, rate_limited(len(calls) * 100 // per_s))
            calls.append(now)
            pct = len(calls) * 100 // per_s
        plan = self.faults.get(account) or self.faults.get(None)
        kind = plan.pick() if plan is not None else None
        if plan is not None and plan.next_n == 0:
            self.faults = {k: v for k, v in self.faults.items() if v is not plan}
        if kind is None:
            return Verdict(pct)
        if kind in ("5xx", "transient"):
            return Verdict(pct, fault(kind), kind)
        return Verdict(pct, None, kind, plan.slow_ms if kind == "slow" and plan else 0.0)
