"""The Graph API clients of one process: one :class:`InstagramClient` per account (pooled HTTP
connections), and the token each account sends with.

Tokens are read here and only here on the worker side; a lane passes only the token's fingerprint
to Redis (the account pause remembers which token Meta rejected). Accounts and tokens may change
while the process runs (``settings.accounts`` is live, see :mod:`dmworker.live`): a client is
rebuilt when its account's token, Graph host or path id changes; the one it replaces is closed a
little later, once any request still running on it has had time to finish.
"""

from __future__ import annotations

import threading
import time

from .graph.client import InstagramClient
from .settings import AccountConfig, Settings


class ClientPool:
    """One :class:`InstagramClient` per account for this process (pooled HTTP connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, tuple[tuple[str, str, str], InstagramClient]] = {}
        self._retired: list[tuple[float, InstagramClient]] = []
        self._lock = threading.Lock()

    def _wanted(self, account: str, conf: AccountConfig) -> tuple[str, str, str]:
        return (conf.fingerprint, self.settings.graph_url_for(account), conf.path_id)

    def get(self, account: str) -> InstagramClient | None:
        """The client of ``account`` with its current token (``None``: the account is unknown)."""
        conf = self.settings.accounts.get(account)
        if conf is None:
            return None
        wanted = self._wanted(account, conf)
        held = self._clients.get(account)
        if held is not None and held[0] == wanted:
            return held[1]
        with self._lock:
            held = self._clients.get(account)
            if held is not None and held[0] == wanted:
                return held[1]
            s = self.settings
            client = InstagramClient(
                conf.access_token,
                base_url=wanted[1],
                account_id=wanted[2],
                connect_timeout_s=s.http_connect_timeout_s,
                read_timeout_s=s.http_read_timeout_s,
                pool_size=s.http_pool_size,
            )
            self._clients[account] = (wanted, client)
            if held is not None:
                self._retire(held[1])
        return client

    def token(self, account: str) -> str:
        """The access token this process sends as ``account`` ('' when it has none)."""
        conf = self.settings.accounts.get(account)
        return conf.access_token if conf else ""

    def _retire(self, client: InstagramClient) -> None:
        """Close replaced clients once a request on them would have timed out (lock held)."""
        now = time.monotonic()
        grace = 2 * (self.settings.http_connect_timeout_s + self.settings.http_read_timeout_s)
        keep = []
        for at, old in self._retired:
            if now - at > grace:
                old.close()
            else:
                keep.append((at, old))
        keep.append((now, client))
        self._retired = keep

    def close(self) -> None:
        with self._lock:
            for _, c in self._clients.values():
                c.close()
            for _, c in self._retired:
                c.close()
            self._clients.clear()
            self._retired.clear()
