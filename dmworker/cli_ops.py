"""``dmworker`` subcommands an operator reads with: the read side of conversations; and
:func:`describe_account`, an account's state in one line with readable times (``dmworker accounts``
lives in :mod:`dmworker.cli_accounts`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from .cli_common import UsageError, add_parser, when


def register(sub: Any) -> None:
    cv = add_parser(sub, "conversations", "read side: list conversations, read messages")
    cv.add_argument("action", choices=("list", "messages"), help="what to read")
    cv.add_argument("conversation_id", nargs="?", help="the conversation (messages)")
    cv.add_argument("--account", help="account to read (default: DMWORKER_ACCOUNT_ID)")
    cv.add_argument("--limit", type=int, default=25, help="most conversations listed")
    cv.set_defaults(handler=conversations)


def describe_account(s: Any, now_ms: float | None = None) -> str:
    """One line for an :class:`~dmworker.admin.AccountState` (times in UTC and relative to now)."""
    now = time.time() * 1000 if now_ms is None else now_ms
    if s.paused_until_ms and s.paused_until_ms > now:
        pause = f"paused until {when(s.paused_until_ms, now)} ({s.pause_reason})"
    elif s.paused_until_ms:  # a bad token: paused until the token is replaced
        pause = f"paused until resumed ({s.pause_reason})"
    else:
        pause = "active"
    limits = ", ".join(f"{k} {v}" for k, v in s.limits.items())
    usage = f"{s.usage_pct}%" if s.usage_pct is not None else "-"
    return (
        f"{s.account}: {pause}; limits {limits} (burst {s.burst}); usage {usage}; slowdown x{s.slowdown:g}; "
        f"lanes {s.backlog_lanes}; scheduled {s.scheduled}; dead letters {s.dead_letters}"
    )


def conversations(ns: argparse.Namespace) -> int:
    from .graph import InstagramClient
    from .runtime import get_runtime

    if ns.action == "messages" and not ns.conversation_id:
        raise UsageError("conversations messages takes a conversation id (`conversations list` shows them)")
    # the account's login decides the host and the path id (a Facebook Login account reads
    # /<page id>/conversations with its Page token)
    with InstagramClient.for_account(get_runtime().settings, ns.account) as client:
        if ns.action == "list":
            for i, conv in enumerate(client.conversations.list(limit=min(ns.limit, 100))):
                if i >= ns.limit:
                    break
                print(f"{conv.id}\t{conv.updated_time}")
        else:
            for m in client.conversations.get_messages(ns.conversation_id):
                print(json.dumps(getattr(m, "__dict__", m), default=str))
    return 0
