"""``dmworker`` subcommands that run a process: worker, scheduler, web, sandbox, demo, and the
embedded Redis's ``embedded status|stop``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from .cli_common import add_parser


def register(sub: Any) -> None:
    w = add_parser(
        sub,
        "worker",
        "run a Celery worker (every further option goes to `celery worker`)",
        "Run a Celery worker with dmworker's app. Every further option, --help included, is passed to "
        "`celery worker` (e.g. --concurrency 64 --loglevel INFO); settings come from DMWORKER_*.",
    )
    w.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="options for `celery worker`")
    w.set_defaults(handler=worker)

    s = add_parser(sub, "scheduler", "promote due follow-ups and wake waiting lanes (any number may run)")
    s.add_argument(
        "--tick-ms",
        type=int,
        default=None,
        help="longest sleep between passes, ms (default: DMWORKER_SCHEDULER_TICK_MS)",
    )
    s.set_defaults(handler=scheduler)

    web = add_parser(sub, "web", "serve the webhook, the HTTP API, /healthz and /metrics (dev server)")
    web.add_argument("--host", help="address to listen on (default: DMWORKER_WEB_HOST, else 127.0.0.1)")
    web.add_argument("--port", type=int, help="TCP port (default: DMWORKER_WEB_PORT, else 8000)")
    web.set_defaults(handler=web_)

    sb = add_parser(
        sub,
        "sandbox",
        "run the Graph API sandbox (a local stand-in for Meta)",
        "Run the Graph API sandbox. Every further option, --help included, goes to the sandbox "
        "(`dmworker sandbox --help` lists them: --host, --port, --token T=ACCOUNT, --latency-ms, ...).",
    )
    sb.add_argument("rest", nargs=argparse.REMAINDER, metavar="...", help="options for the sandbox")
    sb.set_defaults(handler=sandbox)

    d = add_parser(sub, "demo", "a full local run: embedded Redis, sandbox, workers, a few hundred users")
    d.add_argument("--users", type=int, default=300, help="simulated users")
    d.add_argument("--workers", type=int, default=2, help="worker processes")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(handler=demo)

    e = add_parser(
        sub,
        "embedded",
        "the embedded Redis (used when DMWORKER_REDIS_URL is unset): status, stop",
        "The embedded Redis under DMWORKER_DATA_DIR. `status` exits 0 when it runs, 3 when it does not; "
        "`stop` stops it (its data stays on disk; the next dmworker process without DMWORKER_REDIS_URL "
        "starts it again).",
    )
    e.add_argument("action", choices=("status", "stop"), help="what to do")
    e.set_defaults(handler=embedded)


def worker(ns: argparse.Namespace) -> int:
    from .celery_app import app

    if {"-h", "--help"} & set(ns.rest):
        print("dmworker worker: runs `celery worker` with dmworker's app; its options are Celery's:\n")
        return int(app.start(["worker", "--help"]) or 0)
    from .logs import setup_logging
    from .runtime import get_runtime

    setup_logging(get_runtime().settings)
    # app.start (not worker_main) hands back Celery's exit code, so a supervisor sees a crash
    return int(app.start(["worker", *ns.rest]) or 0)


def scheduler(ns: argparse.Namespace) -> int:
    from .celery_app import publish, publish_group
    from .dispatcher import Dispatcher
    from .logs import setup_logging
    from .runtime import get_runtime

    rt = get_runtime()
    setup_logging(rt.settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from .refresh import start_refresher  # token refresh (accounts registry)

    start_refresher(rt.settings, rt.redis, stop)
    if rt.settings.callback_url:  # signed event callbacks (dmworker.callbacks)
        from .callbacks_deliver import start_deliverer

        start_deliverer(rt.store, stop)
    Dispatcher(rt.store, publish, publish_group=publish_group).run(stop, ns.tick_ms)
    return 0


def web_(ns: argparse.Namespace) -> int:
    from .settings import ConfigError
    from .web import create_app

    host = ns.host or os.environ.get("DMWORKER_WEB_HOST") or "127.0.0.1"
    port = ns.port
    if port is None:
        raw = os.environ.get("DMWORKER_WEB_PORT") or "8000"
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ConfigError(f"DMWORKER_WEB_PORT: expected a TCP port (1-65535), got {raw!r}")
        port = int(raw)
    create_app().run(host=host, port=port, threaded=True)
    return 0


def sandbox(ns: argparse.Namespace) -> int:
    from .sandbox.cli import main as sandbox_main

    try:
        return sandbox_main(ns.rest)
    except SystemExit as e:  # argparse: --help (0) or a bad option (2)
        return e.code if isinstance(e.code, int) else 2


def demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(users=ns.users, workers=ns.workers, progress=not ns.no_progress)


def embedded(ns: argparse.Namespace) -> int:
    from . import redisconn
    from .settings import Settings

    settings = Settings.from_env()
    if settings.redis_url:
        print("note: DMWORKER_REDIS_URL is set, so dmworker does not use the embedded Redis", file=sys.stderr)
    state = redisconn.embedded_status(settings.data_dir)
    if ns.action == "status":
        if state is None:
            print(f"not running (data directory {redisconn.embedded_dir(settings.data_dir)})")
            return 3
        print(f"running: pid {state.pid}, socket {state.socket}; stop it with `dmworker embedded stop`")
        return 0
    if state is None or not redisconn.stop_embedded(settings.data_dir):
        print(f"not running (data directory {redisconn.embedded_dir(settings.data_dir)})")
        return 0
    print(f"stopped the embedded Redis (pid {state.pid}); its data stays in {state.directory}")
    return 0
