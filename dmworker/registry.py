"""The account registry in Redis: accounts added at run time with their encrypted tokens, their
token-refresh schedule, and the API tokens created at run time.

Keys (prefix ``P``). They share the hash tag ``{~registry}`` so one transaction may touch several
of them on Redis Cluster; ``~`` is not allowed in an account id, so no account's keys share the tag.
They are never used inside an account's Lua script::

    P:{~registry}:acct       HASH  account id -> record JSON (token Fernet-encrypted in "tok",
                                   its fingerprint in "fp"; never the token in clear)
    P:{~registry}:ver        STR   version, incremented by every change to any account record
    P:{~registry}:chg        ZSET  account id -> version of its last change (readers fetch only
                                   what changed since the version they hold: O(changes))
    P:{~registry}:refresh    ZSET  account id -> epoch seconds when its token is next due for a
                                   refresh attempt (the refresher reads only what is due)
    P:{~registry}:rlock:<a>  STR   the scheduler refreshing account a's token right now (PX)
    P:{~registry}:api        HASH  SHA-256 hex of an API token -> scope JSON (never the token)

Every change to ``acct`` runs in one ``WATCH ver`` / ``MULTI`` transaction that also bumps
``ver`` and records the change in ``chg``, so a reader that sees version ``v`` sees every change
up to ``v``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import redis

from .errors import DmworkerError

ACCOUNT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TAG = "{~registry}"
_KEEP: Any = object()


class AccountError(DmworkerError, ValueError):
    """An account operation was refused (bad argument, unknown or read-only account)."""


class AccountConflictError(AccountError):
    """The account's current state refuses the change: registered already, or static (read-only)."""


class AccountNotFoundError(AccountError, KeyError):
    """No such account in the registry (nor, where it applies, among the static accounts)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such account"


@dataclass(frozen=True)
class RegistryKeys:
    prefix: str

    @property
    def accounts(self) -> str:
        return f"{self.prefix}:{TAG}:acct"

    @property
    def version(self) -> str:
        return f"{self.prefix}:{TAG}:ver"

    @property
    def changes(self) -> str:
        return f"{self.prefix}:{TAG}:chg"

    @property
    def refresh(self) -> str:
        return f"{self.prefix}:{TAG}:refresh"

    def refresh_lock(self, account: str) -> str:
        return f"{self.prefix}:{TAG}:rlock:{account}"

    @property
    def api_tokens(self) -> str:
        return f"{self.prefix}:{TAG}:api"


@dataclass(frozen=True)
class RefreshState:
    """Where an account's token refresh stands. Times are epoch seconds.

    ``state``: ``none`` (no known expiry, or Facebook Login), ``scheduled``, ``ok`` (last refresh
    succeeded), ``failed`` (retrying with backoff), ``expired`` / ``invalid`` (no more attempts:
    needs ``set_token``).
    """

    state: str = "none"
    next_s: float | None = None
    last_s: float | None = None
    failures: int = 0
    error: str | None = None


@dataclass(frozen=True)
class AccountRecord:
    """One registry account as stored (``tok`` is the encrypted token)."""

    account: str
    tok: str = field(repr=False)
    fp: str
    login: str = "instagram"
    page_id: str | None = None
    graph_url: str | None = None
    rates: dict[str, str] = field(default_factory=dict)
    burst: int | None = None
    callback_url: str | None = None
    expires_s: float | None = None
    issued_s: float | None = None
    disabled: bool = False
    created_s: float = 0.0
    updated_s: float = 0.0
    refresh: RefreshState = field(default_factory=RefreshState)

    def dumps(self) -> str:
        return json.dumps({"v": 1, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: str | bytes) -> AccountRecord:
        data = json.loads(raw)
        data.pop("v", None)
        data["refresh"] = RefreshState(**(data.get("refresh") or {}))
        return cls(**data)

    def with_(self, **changes: Any) -> AccountRecord:
        return replace(self, **changes)


class Registry:
    """Reads and writes registry records (no decryption here: see :mod:`dmworker.crypto`)."""

    def __init__(self, prefix: str, client: redis.Redis) -> None:
        self.keys = RegistryKeys(prefix)
        self.redis: Any = client

    # ------------------------------------------------------------------ reads
    def get(self, account: str) -> AccountRecord | None:
        raw = self.redis.hget(self.keys.accounts, account)
        return AccountRecord.loads(raw) if raw else None

    def get_many(self, accounts: list[str]) -> dict[str, AccountRecord | None]:
        if not accounts:
            return {}
        raws = self.redis.hmget(self.keys.accounts, accounts)
        return {a: AccountRecord.loads(r) if r else None for a, r in zip(accounts, raws, strict=True)}

    def exists(self, account: str) -> bool:
        return bool(self.redis.hexists(self.keys.accounts, account))

    def snapshot(self) -> tuple[int, dict[str, AccountRecord]]:
        """The version and every record, read atomically (a full load: at start, or after a reset)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.keys.version)
        pipe.hgetall(self.keys.accounts)
        ver, raws = pipe.execute()
        return int(ver or 0), {_s(a): AccountRecord.loads(r) for a, r in raws.items()}

    def version(self) -> int:
        return int(self.redis.get(self.keys.version) or 0)

    def changed(self, after: int, upto: int) -> list[str]:
        """Accounts whose last change has a version in ``(after, upto]``."""
        return [_s(a) for a in self.redis.zrangebyscore(self.keys.changes, f"({after}", upto)]

    def due_refreshes(self, now_s: float, limit: int) -> list[str]:
        """Accounts whose token refresh is due at ``now_s`` (epoch s), earliest first."""
        return [_s(a) for a in self.redis.zrangebyscore(self.keys.refresh, "-inf", now_s, start=0, num=limit)]

    # ------------------------------------------------------------------ writes
    def update(
        self,
        account: str,
        change: Callable[[AccountRecord | None], AccountRecord | None],
        refresh_due_s: Callable[[AccountRecord | None], float | None] | None = None,
    ) -> AccountRecord | None:
        """Apply ``change`` to the current record atomically (retried on a concurrent change).

        ``change`` gets the current record (``None``: absent) and returns the new one (``None``:
        delete); it may raise to refuse. ``refresh_due_s`` gives the refresh schedule of the new
        record (``None``: not scheduled); by default it is left as it is. Returns the new record.
        """
        k = self.keys
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(k.version)
                    ver = int(pipe.get(k.version) or 0)
                    raw = pipe.hget(k.accounts, account)
                    new = change(AccountRecord.loads(raw) if raw else None)
                    pipe.multi()
                    pipe.set(k.version, ver + 1)
                    pipe.zadd(k.changes, {account: ver + 1})
                    if new is None:
                        pipe.hdel(k.accounts, account)
                        pipe.zrem(k.refresh, account)
                    else:
                        pipe.hset(k.accounts, account, new.dumps())
                        if refresh_due_s is not None:
                            due = refresh_due_s(new)
                            if due is None:
                                pipe.zrem(k.refresh, account)
                            else:
                                pipe.zadd(k.refresh, {account: due})
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def reschedule(self, account: str, due_s: float | None) -> None:
        """Move (``None``: drop) an account's next refresh attempt without touching its record."""
        if due_s is None:
            self.redis.zrem(self.keys.refresh, account)
        else:
            self.redis.zadd(self.keys.refresh, {account: due_s}, xx=True)

    def lock_refresh(self, account: str, holder: str, ttl_ms: int) -> bool:
        return bool(self.redis.set(self.keys.refresh_lock(account), holder, nx=True, px=ttl_ms))

    def unlock_refresh(self, account: str) -> None:
        self.redis.delete(self.keys.refresh_lock(account))

    # ------------------------------------------------------------------ API tokens
    def api_token(self, digest: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.api_tokens, digest)
        return json.loads(raw) if raw else None

    def api_tokens(self) -> dict[str, dict[str, Any]]:
        return {_s(d): json.loads(r) for d, r in self.redis.hgetall(self.keys.api_tokens).items()}

    def put_api_token(self, digest: str, scope: dict[str, Any]) -> None:
        self.redis.hset(self.keys.api_tokens, digest, json.dumps(scope, separators=(",", ":")))

    def delete_api_token(self, digest: str) -> bool:
        return bool(self.redis.hdel(self.keys.api_tokens, digest))


def check_account_id(account: str) -> str:
    """``account`` if it is a valid registry account id (letters, digits, ``_``, ``-``; 1-64).

    Raises:
        AccountError: otherwise.
    """
    if not isinstance(account, str) or not ACCOUNT_ID_RE.fullmatch(account):
        raise AccountError(f"account id must be 1-64 letters, digits, '_' or '-', got {account!r}")
    return account


def _s(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
