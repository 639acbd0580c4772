"""The Graph API clients of one process: one :class:`InstagramClient` per account (pooled HTTP
connections), and the token each account sends with.

Tokens are read here and only here on the worker side; a lane passes only the token's fingerprint
to Redis (the account pause remembers which token Meta rejected).
"""

from __future__ import annotations

import threading

from .graph.client import InstagramClient
from .settings import Settings


class ClientPool:
    """One :class:`InstagramClient` per account for this process (pooled HTTP connections)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._clients: dict[str, InstagramClient] = {}
        self._lock = threading.Lock()

    def get(self, account: str) -> InstagramClient | None:
        c = self._clients.get(account)
        if c is None:
            conf = self.settings.accounts.get(account)
            if conf is None:
                return None
            with self._lock:
                c = self._clients.get(account)
                if c is None:
                    s = self.settings
                    c = InstagramClient(
                        conf.access_token,
                        base_url=s.graph_url_for(account),
                        account_id=account,
                        connect_timeout_s=s.http_connect_timeout_s,
                        read_timeout_s=s.http_read_timeout_s,
                        pool_size=s.http_pool_size,
                    )
                    self._clients[account] = c
        return c

    def token(self, account: str) -> str:
        """The access token this process sends as ``account`` ('' when it has none)."""
        conf = self.settings.accounts.get(account)
        return conf.access_token if conf else ""

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()
