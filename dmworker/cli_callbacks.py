"""``dmworker callbacks``: run the callback deliverer, or list, replay and purge dead callbacks."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from typing import Any

from .cli_common import UsageError, add_parser, when


def register(sub: Any) -> None:
    p = add_parser(
        sub,
        "callbacks",
        "deliver signed event callbacks; list, replay or purge dead callbacks",
        "Without an action (or `run`): deliver events to DMWORKER_CALLBACK_URL and to each account's "
        "callback_url until stopped (SIGTERM). `dead` lists dead callbacks (newest first), `replay` "
        "hands them back to the deliverers (--id, else --account, else --all), `purge` forgets them.",
    )
    p.add_argument(
        "action", nargs="?", default="run", choices=("run", "dead", "replay", "purge"), help="what to do"
    )
    p.add_argument("--account", help="only this account's dead callbacks")
    p.add_argument(
        "--id", action="append", dest="ids", metavar="EVENT_ID", help="a dead callback (repeatable)"
    )
    p.add_argument("--all", action="store_true", help="replay or purge every account's dead callbacks")
    p.add_argument("--limit", type=int, default=100, help="most dead callbacks listed")
    p.add_argument("--json", action="store_true", help="list as JSON lines (the whole events)")
    p.add_argument("--workers", type=int, default=8, help="POSTs in flight at most (run)")
    p.set_defaults(handler=callbacks)


def callbacks(ns: argparse.Namespace) -> int:
    from .callbacks_store import CallbackStore
    from .runtime import get_runtime

    rt = get_runtime()
    if ns.action == "run":
        return _run(rt, ns.workers)
    s = rt.settings
    store = CallbackStore(rt.redis, s.key_prefix, s.dlq_retention_s * 1000, s.dlq_max)
    if ns.action == "dead":
        for d in store.list(ns.account, ns.limit):
            if ns.json:
                print(json.dumps(d.to_dict()))
            else:
                kind = d.event.get("type", "?")
                print(f"{d.id}\t{kind}\t{','.join(d.to)}\t{d.reason}\t{when(d.dead_ms)}")
        return 0
    if not (ns.ids or ns.account or ns.all):
        raise UsageError(f"callbacks {ns.action} needs --id, --account or --all")
    if ns.action == "replay":
        n = store.replay(ns.ids, ns.account, now_ms=int(time.time() * 1000))
        print(f"replayed {n} dead callback(s)")
        return 0
    if ns.ids:
        raise UsageError("callbacks purge takes --account or --all")
    print(f"purged {store.purge(ns.account)} dead callback(s)")
    return 0


def _run(rt: Any, workers: int) -> int:
    from .callbacks_deliver import Deliverer
    from .logs import setup_logging

    setup_logging(rt.settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Deliverer(rt.store, workers=workers).run(stop)
    return 0
