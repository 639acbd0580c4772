"""``python -m dmworker.sandbox`` / ``dmworker sandbox``: serve the sandbox until SIGTERM or SIGINT.

The first line on stdout is exactly ``dmworker sandbox listening on http://HOST:PORT`` (flushed);
nothing else is written to stdout. Tokens come from ``--token TOKEN=ACCOUNT`` (repeatable) and from
the environment variable ``DMWORKER_SANDBOX_TOKENS`` (a JSON object token -> account, which keeps
them out of ``ps``). Logs go to stderr and name accounts, never tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

TOKENS_ENV = "DMWORKER_SANDBOX_TOKENS"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmworker sandbox",
        description="A local HTTP sandbox of the "
        "Instagram Graph API (messages, conversations) with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed on the first line)")
    p.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="TOKEN=ACCOUNT",
        help="an accepted access token and its Instagram account id (repeatable)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every Graph request")
    p.add_argument("--no-windows", action="store_true", help="do not enforce messaging windows")
    p.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="request records kept (the oldest tenth is dropped when full)",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    tokens: dict[str, str] = {}
    raw = os.environ.get(TOKENS_ENV)
    if raw:
        try:
            tokens.update({str(k): str(v) for k, v in json.loads(raw).items()})
        except (ValueError, AttributeError):
            print(f"{TOKENS_ENV} must be a JSON object token -> account", file=sys.stderr)
            return 2
    for item in args.token:
        token, sep, account = item.partition("=")
        if not sep or not token or not account:
            print("--token takes TOKEN=ACCOUNT", file=sys.stderr)
            return 2
        tokens[token] = account

    from .server import SandboxServer  # import here: `--help` stays fast

    server = SandboxServer(
        args.host, args.port, tokens, args.latency_ms, not args.no_windows, args.max_requests
    )
    try:
        server.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    except ValueError:  # not the main thread: Ctrl-C / the caller stops us
        pass
    sys.stdout.write(f"dmworker sandbox listening on {server.url}\n")
    sys.stdout.flush()
    logging.getLogger("dmworker.sandbox").info("accounts: %s", sorted(set(tokens.values())))
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
