"""When a job is due and when it expires, in epoch ms.

Due: ``delay=`` (seconds or a timedelta) or ``at=`` (an aware datetime, or ISO 8601 with a zone;
a time in the past means *now*).  Expiry: ``ttl=`` (seconds or a timedelta, counted from when the
job becomes due) or ``expires_at=`` (an aware datetime).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ValidationError

MAX_SPAN_S = 366 * 86400
#: The latest time accepted for ``at``/``expires_at``: the end of year 9999 UTC (epoch ms).
MAX_TIME_MS = 253_402_300_799_999


def due_ms(delay: Any, at: Any) -> tuple[int | None, int | None]:
    """``(delay ms, at ms)`` from ``delay=``/``at=`` (``None`` for what was not given).

    Raises:
        ValidationError: both given, a negative or over-a-year delay, a naive or malformed ``at``.
    """
    if delay is not None and at is not None:
        raise ValidationError({"delay": ["give delay or at, not both"]})
    if delay is not None:
        seconds = _seconds("delay", delay)
        if not 0 <= seconds <= MAX_SPAN_S:
            raise ValidationError({"delay": ["must be between 0 and 366 days"]})
        return (int(seconds * 1000) if seconds > 0 else None), None
    if at is not None:
        return None, _aware_ms("at", at)
    return None, None


def expiry_ms(ttl: Any, expires_at: Any) -> tuple[int | None, int | None]:
    """``(ttl ms, expires_at ms)`` from ``ttl=``/``expires_at=`` (``None`` for what was not given).

    Raises:
        ValidationError: both given, a ttl not above 0 or over a year, a naive or malformed
            ``expires_at``, or one already past.
    """
    if ttl is not None and expires_at is not None:
        raise ValidationError({"ttl": ["give ttl or expires_at, not both"]})
    if ttl is not None:
        seconds = _seconds("ttl", ttl)
        if not 0 < seconds <= MAX_SPAN_S:
            raise ValidationError({"ttl": ["must be more than 0 s and at most 366 days"]})
        return max(1, int(seconds * 1000)), None
    if expires_at is not None:
        ms = _aware_ms("expires_at", expires_at)
        if ms <= now_ms():
            raise ValidationError({"expires_at": [f"{iso(ms)} is already past"]})
        return None, ms
    return None, None


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    raise ValidationError({name: ["expected seconds (a number) or a timedelta"]})


def _aware_ms(name: str, value: Any) -> int:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError({name: ["expected an ISO 8601 datetime with a timezone"]}) from None
    if not isinstance(value, datetime):
        raise ValidationError({name: ["expected an aware datetime"]})
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError({name: ["naive datetime refused: give a timezone (e.g. tzinfo=timezone.utc)"]})
    ms = int(value.timestamp() * 1000)
    if not 0 <= ms <= MAX_TIME_MS:
        raise ValidationError({name: ["out of range"]})
    return ms


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
