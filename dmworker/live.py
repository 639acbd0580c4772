""":class:`LiveAccounts`: the accounts of a running process — the static ones (environment,
accounts file) and the registry's — as a read-only ``Mapping[str, AccountConfig]``.

The runtime puts it in ``Settings.accounts``, so every existing lookup (``settings.accounts.get``,
``rate_for``, ``graph_url_for``, the client pool, the webhook's routing) sees accounts added,
changed or removed at run time within ``DMWORKER_ACCOUNTS_REFRESH_S`` (default 1 s), without a
restart. The check costs one ``GET`` of the registry version at most once per interval; when it
moved, only the accounts changed since are read and decrypted (O(changes), never a full scan).
A static account wins over a registry record of the same id (``Accounts.add`` refuses one anyway).

If Redis cannot be reached the last view is kept and the check is retried at the next interval:
a registry outage never stops sends of known accounts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from .crypto import TokenCipher, TokenDecryptError
from .registry import AccountRecord, Registry
from .settings import AccountConfig, ConfigError, parse_rate

log = logging.getLogger("dmworker.accounts")


class LiveAccounts(Mapping[str, AccountConfig]):
    """Static accounts plus the registry's, refreshed from Redis at most every ``interval_s``.

    Args:
        static: the accounts of the environment / accounts file (read-only).
        registry: the Redis registry.
        cipher: decrypts stored tokens; ``None`` (no ``DMWORKER_SECRET_KEY``): registry accounts
            are skipped with one error logged.
        interval_s: the longest a change may stay unseen (seconds).
        clock: a monotonic clock in seconds (tests).
    """

    def __init__(
        self,
        static: Mapping[str, AccountConfig],
        registry: Registry,
        cipher: TokenCipher | None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.static: dict[str, AccountConfig] = dict(static)
        self.registry = registry
        self.cipher = cipher
        self.interval_s = interval_s
        self._clock = clock
        self._reg: dict[str, AccountConfig] = {}
        self._records: dict[str, AccountRecord] = {}
        self._ver = -1
        self._checked = float("-inf")
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._secrets: tuple[int, frozenset[str]] = (-1, frozenset())
        self.refreshes = 0  # how many times the registry was read (tests, metrics)

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, account: str) -> AccountConfig:
        self._maybe_refresh()
        conf = self.static.get(account)
        if conf is None:
            conf = self._reg[account]
        return conf

    def __contains__(self, account: object) -> bool:
        self._maybe_refresh()
        return account in self.static or account in self._reg

    def __iter__(self) -> Iterator[str]:
        self._maybe_refresh()
        reg = self._reg
        yield from self.static
        yield from (a for a in reg if a not in self.static)

    def __len__(self) -> int:
        self._maybe_refresh()
        return len(self.static) + sum(1 for a in self._reg if a not in self.static)

    def __repr__(self) -> str:  # never the tokens
        return f"LiveAccounts(static={len(self.static)}, registry={len(self._reg)}, version={self._ver})"

    # ------------------------------------------------------------------ extras
    def record(self, account: str) -> AccountRecord | None:
        """The registry record this process last saw for ``account`` (no token in clear)."""
        self._maybe_refresh()
        return self._records.get(account)

    def secrets(self) -> frozenset[str]:
        """Every token this process knows (log redaction); recomputed only after a change."""
        self._maybe_refresh()
        ver, cached = self._secrets
        if ver != self._ver:
            cached = frozenset(c.access_token for c in [*self.static.values(), *self._reg.values()])
            self._secrets = (self._ver, cached)
        return cached

    def refresh(self) -> None:
        """Read what changed in the registry now (normally done at most every ``interval_s``)."""
        with self._lock:
            self._refresh_locked()

    # ------------------------------------------------------------------ refreshing
    def _maybe_refresh(self) -> None:
        if self._clock() - self._checked < self.interval_s:
            return
        if not self._lock.acquire(blocking=self._ver < 0):
            return  # another thread is reading the registry: use the current view
        try:
            if self._clock() - self._checked >= self.interval_s:
                self._refresh_locked()
        finally:
            self._lock.release()

    def _refresh_locked(self) -> None:
        self._checked = self._clock()
        try:
            if self._ver < 0:
                self._full_load()
                return
            ver = self.registry.version()
            if ver == self._ver:
                return
            if ver < self._ver:  # the registry was reset (restored backup, flushed database)
                self._full_load()
                return
            changed = self.registry.changed(self._ver, ver)
            records = self.registry.get_many(changed)
        except Exception as e:  # Redis down: keep the last view, try again at the next interval
            log.warning("account registry not readable (%s); keeping the last view", type(e).__name__)
            return
        reg, recs = dict(self._reg), dict(self._records)
        for account, rec in records.items():
            self._apply(reg, recs, account, rec)
        self._reg, self._records, self._ver = reg, recs, ver
        self.refreshes += 1

    def _full_load(self) -> None:
        ver, records = self.registry.snapshot()
        reg: dict[str, AccountConfig] = {}
        recs: dict[str, AccountRecord] = {}
        for account, rec in records.items():
            self._apply(reg, recs, account, rec)
        self._reg, self._records, self._ver = reg, recs, ver
        self.refreshes += 1

    def _apply(
        self,
        reg: dict[str, AccountConfig],
        recs: dict[str, AccountRecord],
        account: str,
        rec: AccountRecord | None,
    ) -> None:
        reg.pop(account, None)
        recs.pop(account, None)
        if rec is None:
            return
        recs[account] = rec
        try:
            reg[account] = to_config(rec, self.cipher)
        except (TokenDecryptError, ConfigError) as e:
            if account not in self._warned:
                self._warned.add(account)
                log.error("registry account %s is unusable here: %s", account, e)


def to_config(rec: AccountRecord, cipher: TokenCipher | None) -> AccountConfig:
    """The :class:`AccountConfig` of a registry record (its token decrypted).

    Raises:
        SecretKeyMissingError: when ``cipher`` is ``None``.
        TokenDecryptError: when no configured key opens the token.
        ConfigError: for a stored rate that does not parse.
    """
    if cipher is None:
        from .crypto import SecretKeyMissingError

        raise SecretKeyMissingError("DMWORKER_SECRET_KEY is unset: registry tokens cannot be read")
    return AccountConfig(
        account_id=rec.account,
        access_token=cipher.decrypt(rec.tok),
        graph_url=rec.graph_url,
        rates={k: parse_rate(v, f"rates.{k}") for k, v in rec.rates.items()},
        burst=rec.burst,
        login=rec.login,
        page_id=rec.page_id,
    )
