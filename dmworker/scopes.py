"""Who may do what over the HTTP API: roles and account scopes of API tokens.

An API token has a role and, for producers and viewers, the accounts it may use:

==========  ===============================================================================
admin       everything, every account: send, read, cancel, replay, purge (``all`` too),
            manage accounts (``/v1/accounts/<id>``)
producer    send, read, cancel, replay and purge the jobs of its own accounts
viewer      read (jobs, dead letters, windows, account states) of its own accounts
==========  ===============================================================================

``DMWORKER_API_TOKENS`` entries are either a plain token (admin over every account, as before
roles existed) or ``token:role[:account|account...]`` (``*`` = every account). A producer or
viewer entry without accounts is refused: a scope is always explicit. Tokens created at run time
live in the registry (:mod:`dmworker.registry`), stored only as their SHA-256 digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ROLES = ("admin", "producer", "viewer")
ALL = "*"


@dataclass(frozen=True)
class Scope:
    """A role and the accounts it covers (``None``: every account)."""

    role: str
    accounts: frozenset[str] | None = None
    name: str = ""

    def covers(self, account: str | None) -> bool:
        """Whether this scope may touch ``account`` (``None``: "every account", admin only)."""
        if account is None:
            return self.accounts is None
        return self.accounts is None or account in self.accounts

    @property
    def can_write(self) -> bool:
        """Send, cancel, replay, purge (admin and producer)."""
        return self.role in ("admin", "producer")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "accounts": sorted(self.accounts) if self.accounts is not None else ALL,
        }


def make_scope(role: str, accounts: list[str] | tuple[str, ...] | str | None, name: str = "") -> Scope:
    """A validated :class:`Scope`; ``accounts`` a list, an ``a|b`` string, ``*`` or ``None`` (admin).

    Raises:
        ValueError: for an unknown role, a producer/viewer without accounts, or an admin with some.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if isinstance(accounts, str):
        accounts = [a for a in accounts.split("|") if a]
    items = [str(a).strip() for a in accounts or () if str(a).strip()]
    if role == "admin":
        if items and items != [ALL]:
            raise ValueError("an admin token covers every account: give no account list")
        return Scope(role, None, name)
    if items == [ALL]:
        return Scope(role, None, name)
    if not items:
        raise ValueError(f"a {role} token needs its accounts (account|account..., or '*')")
    if ALL in items:
        raise ValueError("'*' stands alone: every account")
    return Scope(role, frozenset(items), name)


def parse_entry(entry: str) -> tuple[str, Scope]:
    """``token`` or ``token:role[:a|b]`` -> (token, scope).

    Raises:
        ValueError: naming what is wrong (never the token itself).
    """
    token, sep, rest = entry.strip().partition(":")
    if not token:
        raise ValueError("an entry has an empty token")
    if not sep:
        return token, Scope("admin", None)
    role, _, accounts = rest.partition(":")
    return token, make_scope(role.strip(), accounts.strip() or None)


def parse_entries(entries: tuple[str, ...]) -> tuple[tuple[str, Scope], ...]:
    """Every ``DMWORKER_API_TOKENS`` entry parsed (see :func:`parse_entry`).

    Raises:
        ValueError: for the first malformed entry (by position, never showing the token).
    """
    out = []
    for n, entry in enumerate(entries, 1):
        try:
            out.append(parse_entry(entry))
        except ValueError as e:
            raise ValueError(f"entry {n}: {e}") from None
    return tuple(out)


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a registry API token is stored (tokens are random, 32 bytes)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
