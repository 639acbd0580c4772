"""Parse Meta's usage headers (``X-App-Usage``, ``X-Business-Use-Case-Usage``) leniently.

Both headers are JSON strings of percentages (Meta throttles at 100)::

    X-App-Usage: {"call_count":28,"total_time":25,"total_cputime":25}
    X-Business-Use-Case-Usage: {"<ig-id>":[{"type":"instagram","call_count":12,"total_cputime":3,
                                            "total_time":4,"estimated_time_to_regain_access":0}]}

``estimated_time_to_regain_access`` is in **minutes**; :class:`Usage` converts it to seconds.
The headers appear only after enough calls, and a malformed header is ignored: nothing in
this module ever raises on bad input.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

APP_USAGE_HEADER = "X-App-Usage"
BUSINESS_USAGE_HEADER = "X-Business-Use-Case-Usage"
_PCT_FIELDS = ("call_count", "total_time", "total_cputime")


@dataclass(frozen=True)
class Usage:
    """What the usage headers of one response said.

    Attributes:
        app: the parsed ``X-App-Usage`` object, or None when absent or malformed.
        business: the parsed ``X-Business-Use-Case-Usage`` object (account id -> list of
            entries), or None when absent or malformed.
        call_count_pct: the highest ``call_count`` percentage in either header, or None.
        regain_access_s: the longest ``estimated_time_to_regain_access`` converted to
            **seconds**, only when it is greater than 0; else None.
    """

    app: dict[str, Any] | None = None
    business: dict[str, Any] | None = None
    call_count_pct: int | None = None
    regain_access_s: float | None = None

    @property
    def peak_pct(self) -> int | None:
        """The highest percentage of any counter (call count, total time, CPU time), or None.

        Meta throttles when any one of them reaches 100, so this is the number to slow down on.
        """
        values = [
            v for entry in self._entries() for k in _PCT_FIELDS if (v := _pct(entry.get(k))) is not None
        ]
        return max(values) if values else None

    def _entries(self) -> Iterator[Mapping[str, Any]]:
        if self.app is not None:
            yield self.app
        yield from _business_entries(self.business)


EMPTY_USAGE = Usage()


def parse_usage(headers: Mapping[str, str] | None) -> Usage:
    """Build a :class:`Usage` from response headers (any mapping; names are case-insensitive).

    Never raises: a missing, non-JSON or oddly shaped header is treated as absent.
    """
    if not headers:
        return EMPTY_USAGE
    app = _json_object(_header(headers, APP_USAGE_HEADER))
    business = _json_object(_header(headers, BUSINESS_USAGE_HEADER))
    if app is None and business is None:
        return EMPTY_USAGE
    counts = [c for c in [_pct(app.get("call_count")) if app else None] if c is not None]
    regains: list[float] = []
    for entry in _business_entries(business):
        count = _pct(entry.get("call_count"))
        if count is not None:
            counts.append(count)
        minutes = _number(entry.get("estimated_time_to_regain_access"))
        if minutes is not None and minutes > 0:
            regains.append(minutes * 60.0)
    return Usage(
        app=app,
        business=business,
        call_count_pct=max(counts) if counts else None,
        regain_access_s=max(regains) if regains else None,
    )


def wait_hint_s(headers: Mapping[str, str] | None, usage: Usage | None = None) -> float | None:
    """The longest wait a response asks for, in **seconds**, or None when it names none.

    Looks at ``Retry-After`` (seconds, or an HTTP date) and at the business usage header's
    ``estimated_time_to_regain_access`` (minutes, only when > 0). Never raises.
    """
    usage = usage if usage is not None else parse_usage(headers)
    waits = [w for w in (_retry_after(headers), usage.regain_access_s) if w is not None]
    return max(waits) if waits else None


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = _header(headers, "Retry-After") if headers else None
    if value is None or not value.strip():
        return None
    seconds = _number(value.strip())
    if seconds is None:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    try:
        value = headers.get(name)
        if value is None:
            lower = name.lower()
            value = next((v for k, v in headers.items() if str(k).lower() == lower), None)
    except Exception:  # an exotic mapping must not break a send
        return None
    return value if isinstance(value, str) else None


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _business_entries(business: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    if not business:
        return
    for value in business.values():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, Mapping):
                yield item


def _number(value: Any) -> float | None:
    """A finite number from an int, float or numeric string; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        out = float(value)
    except (ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _pct(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)
