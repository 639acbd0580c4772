"""Append-only logs of what the sandbox saw (sends, requests), read back by sequence number.

Sequence numbers start at 1 and are never reused, not even after a reset, so a reader that polls
with ``since=<last seq seen>`` never confuses an old record with a new one. Not thread-safe by
itself (the state's lock guards it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

PAGE = 20_000  # records per control answer; the client pages on


class RecordLog:
    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap  # keep at most this many (drops the oldest tenth when full)
        self.items: list[dict[str, Any]] = []
        self.next_seq = 1
        self.counts: Counter[str] = Counter()

    def clear(self) -> None:
        self.items = []
        self.counts = Counter()

    def append(self, record: dict[str, Any]) -> int:
        seq = self.next_seq
        self.next_seq += 1
        record["seq"] = seq
        self.items.append(record)
        if self.cap is not None and len(self.items) > self.cap:
            del self.items[: max(1, self.cap // 10)]
        return seq

    def since(self, since: int, account: str | None, limit: int = PAGE) -> tuple[list[dict[str, Any]], int]:
        """Records with ``seq > since`` (of ``account`` if given), at most ``limit``.

        Returns them and the seq to pass as ``since`` next time (the last one scanned), so a
        filtered read still advances past records of other accounts.
        """
        items = self.items
        if not items:
            return [], since
        start = max(0, since - items[0]["seq"] + 1)
        if account is None:
            out = items[start : start + limit]
            return out, (out[-1]["seq"] if out else since)
        out = []
        last = since
        for rec in items[start:]:
            last = rec["seq"]
            if rec["account"] == account:
                out.append(rec)
                if len(out) >= limit:
                    break
        return out, last
