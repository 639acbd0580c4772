"""The ``dmworker`` command: processes (worker, scheduler, web, sandbox, demo) and operator tools.

Options come from flags or from the environment (``DMWORKER_*``, see docs/configuration.md).

A CLI is a table of small handlers: each ``cli_*`` module has a ``register(subparsers)`` that adds
its subcommands, each with ``set_defaults(handler=...)``; :data:`REGISTRARS` lists them, and
:func:`main` parses, calls the handler and turns ordinary mistakes (a bad setting, a missing
argument, Redis unreachable, a missing extra) into one line on stderr: exit code 2 when the command
cannot run as given, 1 when it ran and failed.  Never a traceback for those.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__, cli_accounts, cli_callbacks, cli_jobs, cli_ops, cli_run
from .cli_common import PASSTHROUGH, Formatter, failure

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: Every module that adds subcommands; a new group of commands appends its ``register`` here.
REGISTRARS: list[Registrar] = [
    cli_run.register,
    cli_jobs.register,
    cli_ops.register,
    cli_accounts.register,
    cli_callbacks.register,
]


def build_parser() -> argparse.ArgumentParser:
    """The whole ``dmworker`` parser (every subcommand of every registrar)."""
    p = argparse.ArgumentParser(
        prog="dmworker", description="Send Instagram DMs reliably at scale.", formatter_class=Formatter
    )
    p.add_argument("--version", action="version", version=f"dmworker {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in REGISTRARS:
        register(sub)
    return p


def commands() -> tuple[str, ...]:
    """The names of every subcommand, in the order ``dmworker --help`` lists them."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(sub.choices)


COMMANDS = commands()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``dmworker`` command; returns its exit code (0 ok, 1 failed, 2 bad usage or setting)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if args and args[0] in PASSTHROUGH:
        # everything after `worker` / `sandbox` belongs to celery worker / the sandbox, --help too
        ns = parser.parse_args(args[:1])
        ns.rest = [a for a in args[1:] if a != "--"]
    else:
        ns = parser.parse_args(args)
    try:
        return int(ns.handler(ns))
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        known = failure(e)
        if known is None:
            raise
        message, code = known
        print(f"dmworker {ns.command}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
