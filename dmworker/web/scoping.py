"""What the scope of the request's API token allows (see :mod:`dmworker.scopes` for the roles).

Two answers, chosen so that a token learns nothing about accounts outside its scope:

- **404** for anything addressed by a job id of another account (read, cancel, replay, show a dead
  letter): the same answer as for a job that does not exist;
- **403** ``forbidden`` when the request itself names an account outside the scope (send, purge,
  list dead letters, cancel a follow-up by key, read a window) or needs a role the token lacks: the
  account id came from the caller, and the answer is the same whether that account exists or not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flask

from ..admin import DeadLetters
from ..errors import DmworkerError, ValidationError
from ..jobs import JobStatus
from ..scopes import Scope
from .auth import current_scope


class Forbidden(DmworkerError):
    """The token's role or scope does not allow this request (HTTP 403)."""


def need_write() -> Scope:
    """The scope, if it may send, cancel, replay and purge (admin, producer)."""
    scope = current_scope()
    if not scope.can_write:
        raise Forbidden(f"a {scope.role} token may only read")
    return scope


def need_admin() -> Scope:
    scope = current_scope()
    if not scope.is_admin:
        raise Forbidden("this needs an admin token")
    return scope


def need_account(account: str | None) -> str | None:
    """``account`` if the token covers it (``None``: every account, admin-wide tokens only)."""
    scope = current_scope()
    if account is None:
        if scope.accounts is not None:
            raise Forbidden("this token must name its account (account=<id>)")
        return None
    if not scope.covers(account):
        raise Forbidden(f"this token may not use account {account}")
    return account


def check_send(body: Any, default_account: str | None) -> None:
    """Refuse (403, before anything is queued) a job or batch naming an account outside the scope."""
    need_write()
    items: Iterable[Any] = body if isinstance(body, list) else [body]
    for n, item in enumerate(items):
        named = item.get("account") if isinstance(item, dict) else None
        account = named if isinstance(named, str) and named else default_account
        if account is not None and not current_scope().covers(account):
            where = f"item {n}: " if isinstance(body, list) else ""
            raise Forbidden(f"{where}this token may not send for account {account}")


def dead_letters(dl: DeadLetters, account: str | None, limit: int) -> list[JobStatus]:
    """Dead letters the token may see: of ``account``, or of every account in its scope."""
    scope = current_scope()
    if account is not None or scope.accounts is None:
        return dl.list(need_account(account), limit=limit)
    out = [s for a in sorted(scope.accounts) for s in dl.list(a, limit=limit)]
    out.sort(key=lambda s: s.updated_ms, reverse=True)
    return out[:limit]


def purge_target(account: str | None) -> str | None:
    """The account to purge, or ``None`` for every account (admin and an explicit ``all=true``).

    Raises:
        Forbidden: a viewer, an account outside the scope, or ``all`` without admin.
        ValidationError: neither ``account`` nor ``all=true``, or ``all`` not a boolean.
    """
    need_write()
    raw = (flask.request.args.get("all") or "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise ValidationError({"all": ["must be true or false"]})
    every = raw in ("true", "1") and not account  # with an account: every dead letter of that one
    if every:
        need_admin()
        return None
    if not account:
        raise ValidationError(
            {"account": ["give account=<id>, or all=true (admin) to purge every account's dead letters"]}
        )
    return need_account(account)
