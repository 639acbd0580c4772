"""The operators' audit log: who did what, when, to which account, with which filter, how many.

Every action taken in the dashboard (``/ui/``) is recorded here: bulk replays and purges of dead
letters (with the filter and the count), cancels and replays of single jobs, pauses, resumes, rate
changes and token changes (never the token itself: its fingerprint).  The log is one Redis stream,
``P:audit``, capped at :data:`MAX_ENTRIES` (oldest dropped first).  Entries are never edited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

#: Entries kept (approximately: Redis trims whole stream nodes).
MAX_ENTRIES = 100_000


@dataclass(frozen=True)
class AuditEntry:
    """One recorded action.  ``at_ms``: epoch milliseconds; ``who``: the API token's name and role."""

    id: str
    at_ms: int
    who: str
    role: str
    action: str
    account: str
    filter: dict[str, Any]
    count: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class AuditLog:
    """Append and read the audit log of one key prefix."""

    def __init__(self, prefix: str, client: redis.Redis) -> None:
        self.key = f"{prefix}:audit"
        self.redis: Any = client

    def record(
        self,
        *,
        who: str,
        role: str,
        action: str,
        account: str = "",
        filter: Mapping[str, Any] | None = None,
        count: int = 0,
        detail: str = "",
    ) -> str:
        """Append an entry; returns its id.  ``detail`` must never hold a secret."""
        fields = {
            "who": who,
            "role": role,
            "action": action,
            "account": account,
            "filter": json.dumps(dict(filter or {}), sort_keys=True),
            "count": str(int(count)),
            "detail": detail,
            "at": str(int(time.time() * 1000)),
        }
        return str(self.redis.xadd(self.key, fields, maxlen=MAX_ENTRIES, approximate=True))

    def latest(self, limit: int = 100, accounts: Iterable[str] | None = None) -> list[AuditEntry]:
        """The newest entries (of ``accounts`` only when given: a tenant sees its own), newest first."""
        allowed = set(accounts) if accounts is not None else None
        out: list[AuditEntry] = []
        last = "+"
        for _ in range(50):  # a tenant's entries may be sparse: read back at most 50 x 500 entries
            got = self.redis.xrevrange(self.key, max=last, min="-", count=500)
            for entry_id, f in got:
                if allowed is not None and f.get("account") not in allowed:
                    continue
                out.append(_entry(entry_id, f))
                if len(out) == limit:
                    return out
            if len(got) < 500:
                break
            last = "(" + got[-1][0]
        return out


def _entry(entry_id: str, f: Mapping[str, str]) -> AuditEntry:
    try:
        flt = json.loads(f.get("filter") or "{}")
    except ValueError:
        flt = {}
    return AuditEntry(
        id=entry_id,
        at_ms=int(f.get("at") or entry_id.split("-")[0]),
        who=f.get("who", ""),
        role=f.get("role", ""),
        action=f.get("action", ""),
        account=f.get("account", ""),
        filter=flt if isinstance(flt, dict) else {},
        count=int(f.get("count") or 0),
        detail=f.get("detail", ""),
    )
