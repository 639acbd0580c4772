"""API tokens created at run time (beside ``DMWORKER_API_TOKENS``): the registry keeps only each
token's SHA-256 digest with its name, role and accounts; the token is shown once, at creation.

::

    tokens = ApiTokens(settings, redis_client)
    token = tokens.create("shop-eu", "producer", ["17841400000000001"])   # give it to the producer
    tokens.list()            # [{"name", "role", "accounts", "created_s"}]  (never a token)
    tokens.remove("shop-eu")
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from .registry import AccountConflictError, AccountError, Registry
from .scopes import make_scope, token_digest
from .settings import Settings


class ApiTokens:
    """The registry's API tokens of one deployment (one key prefix)."""

    def __init__(self, settings: Settings, client: Any) -> None:
        self.registry = Registry(settings.key_prefix, client)

    def create(self, name: str, role: str, accounts: list[str] | str | None = None) -> str:
        """A new random token with this role and scope; returns it (the only time it is shown).

        Raises:
            AccountError: a bad role or scope, or a name already in use.
        """
        if not isinstance(name, str) or not name or len(name) > 100:
            raise AccountError("name must be a non-empty string of at most 100 characters")
        listed = isinstance(accounts, list) and all(isinstance(a, str) and a for a in accounts)
        if accounts is not None and not isinstance(accounts, str) and not listed:
            raise AccountError("accounts must be a list of account ids")
        try:
            scope = make_scope(role, accounts, name)
        except ValueError as e:
            raise AccountError(str(e)) from None
        if any(t.get("name") == name for t in self.registry.api_tokens().values()):
            raise AccountConflictError(f"an API token named {name!r} exists (remove it first)")
        token = secrets.token_urlsafe(32)
        record = {**scope.to_dict(), "created_s": time.time()}
        self.registry.put_api_token(token_digest(token), record)
        return token

    def list(self) -> list[dict[str, Any]]:
        """Every registry API token's name, role, accounts and creation time (no token, no digest)."""
        return sorted(self.registry.api_tokens().values(), key=lambda t: str(t.get("name")))

    def remove(self, name: str) -> bool:
        """Revoke the token named ``name`` (effective on the next request); False if none has it."""
        for digest, record in self.registry.api_tokens().items():
            if record.get("name") == name:
                return self.registry.delete_api_token(digest)
        return False
