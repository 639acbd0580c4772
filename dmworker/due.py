"""When a job is due: ``delay=`` (seconds or timedelta) or ``at=`` (an aware datetime), in epoch ms."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import ValidationError


def due_ms(delay: Any, at: Any) -> tuple[int | None, int | None]:
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


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
