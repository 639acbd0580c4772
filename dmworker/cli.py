"""The ``dmworker`` command: processes (worker, scheduler, web, sandbox, demo) and operator tools.

Options come from flags or from the environment (``DMWORKER_*``, see docs/configuration.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

COMMANDS = (
    "bulk",
    "worker",
    "scheduler",
    "web",
    "sandbox",
    "demo",
    "send",
    "status",
    "cancel",
    "dlq",
    "accounts",
    "conversations",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dmworker", description="Send Instagram DMs reliably at scale.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    w = sub.add_parser(
        "worker",
        help="run a Celery worker (extra args go to `celery worker`)",
        description="Run a Celery worker with dmworker's app. Any further options are "
        "passed to `celery worker` (e.g. --concurrency 64 --loglevel INFO).",
    )
    w.add_argument("celery_args", nargs=argparse.REMAINDER, help="options for celery worker")

    s = sub.add_parser("scheduler", help="promote due follow-ups and wake waiting lanes")
    s.add_argument("--tick-ms", type=int, default=None, help="longest sleep between passes (ms)")

    web = sub.add_parser("web", help="serve the webhook, the HTTP API, /healthz and /metrics (dev server)")
    web.add_argument("--host", default=os.environ.get("DMWORKER_WEB_HOST", "127.0.0.1"))
    web.add_argument("--port", type=int, default=int(os.environ.get("DMWORKER_WEB_PORT", "8000")))

    sb = sub.add_parser("sandbox", help="run the Graph API sandbox (a local stand-in for Meta)")
    sb.add_argument("sandbox_args", nargs=argparse.REMAINDER, help="--host, --port, --token T=ACCOUNT, ...")

    d = sub.add_parser("demo", help="a full local run: embedded Redis, sandbox, workers, a few hundred users")
    d.add_argument("--users", type=int, default=300)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    snd = sub.add_parser("send", help="queue one message: send text IGSID 'Hi'")
    snd.add_argument(
        "kind",
        choices=(
            "text",
            "media",
            "quick_replies",
            "generic_template",
            "button_template",
            "private_reply",
            "react",
            "unreact",
            "typing",
            "like_heart",
            "media_share",
            "mark_seen",
            "json",
        ),
    )
    snd.add_argument("recipient", help="IGSID (comment id for private_reply)")
    snd.add_argument("value", nargs="?", help="text, media URL, message id, post id, or JSON arguments")
    snd.add_argument("--account")
    snd.add_argument("--type", default="image", help="media type (image, video, audio, file)")
    snd.add_argument("--human-agent", action="store_true")
    snd.add_argument("--reply", action="append", default=[], help="quick reply TITLE:PAYLOAD (repeat)")
    snd.add_argument("--reaction", default="love")
    snd.add_argument("--seconds", type=float, default=0, help="typing pause (s)")
    snd.add_argument("--delay", type=float, help="send in this many seconds")
    snd.add_argument("--key", help="name the follow-up")
    snd.add_argument("--cancel-on-reply", action="store_true")
    snd.add_argument("--idempotency-key")

    st = sub.add_parser("status", help="show a job's status")
    st.add_argument("job_id")

    c = sub.add_parser("cancel", help="cancel a job by id, or a follow-up by --key")
    c.add_argument("job_id", nargs="?")
    c.add_argument("--key")
    c.add_argument("--account")

    q = sub.add_parser("dlq", help="dead letters: list, show, replay, purge")
    q.add_argument("action", choices=("list", "show", "replay", "purge"))
    q.add_argument("job_id", nargs="?")
    q.add_argument("--account")
    q.add_argument("--limit", type=int, default=50)

    a = sub.add_parser("accounts", help="per account: limits, usage, pause and why")
    a.add_argument("action", nargs="?", choices=("show", "resume"), default="show")
    a.add_argument("account", nargs="?")
    a.add_argument("--json", action="store_true")

    bulk = sub.add_parser("bulk", help="queue many jobs from a JSON-lines file, with a progress bar")
    bulk.add_argument("file", help="one JSON job per line (as for POST /v1/messages); - = stdin")

    cv = sub.add_parser("conversations", help="read side: list conversations, read messages")
    cv.add_argument("action", choices=("list", "messages"))
    cv.add_argument("conversation_id", nargs="?")
    cv.add_argument("--account")
    cv.add_argument("--limit", type=int, default=25)
    return p


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _send_args(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    kind, v = ns.kind, ns.value
    if kind == "json":
        body = json.loads(v or "{}")
        return body.pop("kind"), body
    table: dict[str, dict[str, Any]] = {
        "text": {"text": v, "human_agent": ns.human_agent},
        "media": {"type": ns.type, "url": v},
        "quick_replies": {
            "text": v,
            "replies": [
                {"content_type": "text", "title": r.split(":", 1)[0], "payload": r.split(":", 1)[-1]}
                for r in ns.reply
            ],
        },
        "private_reply": {"text": v},
        "react": {"message_id": v, "reaction": ns.reaction},
        "unreact": {"message_id": v},
        "typing": {"seconds": ns.seconds},
        "media_share": {"post_id": v},
        "like_heart": {},
        "mark_seen": {},
    }
    if kind in ("generic_template", "button_template"):
        return kind, json.loads(v or "{}")
    return kind, table[kind]


def _run_scheduler(tick_ms: int | None) -> int:
    from .celery_app import publish
    from .dispatcher import Dispatcher
    from .logs import setup_logging
    from .runtime import get_runtime

    rt = get_runtime()
    setup_logging(rt.settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    Dispatcher(rt.store, publish).run(stop, tick_ms)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("worker", "sandbox") and not {"-h", "--help"} & set(args[1:2]):
        # everything after the command belongs to celery worker / the sandbox, verbatim
        ns = argparse.Namespace(command=args[0], celery_args=args[1:], sandbox_args=args[1:])
    else:
        ns = parser.parse_args(args)
    from .errors import DmworkerError

    try:
        return _dispatch(ns)
    except DmworkerError as e:
        print(f"dmworker: {e}", file=sys.stderr)
        return 2


def _dispatch(ns: argparse.Namespace) -> int:
    cmd = ns.command
    if cmd == "worker":
        from .celery_app import app
        from .logs import setup_logging
        from .runtime import get_runtime

        setup_logging(get_runtime().settings)
        args = [a for a in ns.celery_args if a != "--"]
        # app.start (not worker_main) hands back Celery's exit code, so a supervisor sees a crash
        return int(app.start(["worker", *args]) or 0)
    if cmd == "scheduler":
        return _run_scheduler(ns.tick_ms)
    if cmd == "web":
        from .web import create_app

        create_app().run(host=ns.host, port=ns.port, threaded=True)
        return 0
    if cmd == "sandbox":
        from .sandbox.__main__ import main as sandbox_main

        return sandbox_main([a for a in ns.sandbox_args if a != "--"])
    if cmd == "demo":
        from .demo import run_demo

        return run_demo(users=ns.users, workers=ns.workers, progress=not ns.no_progress)

    from .runtime import get_runtime

    rt = get_runtime()
    if cmd == "send":
        from .outbox import Outbox

        kind, send_kwargs = _send_args(ns)
        opts = {
            k: v
            for k, v in (
                ("account", ns.account),
                ("delay", ns.delay),
                ("key", ns.key),
                ("idempotency_key", ns.idempotency_key),
            )
            if v is not None
        }
        if ns.cancel_on_reply:
            opts["cancel_on_reply"] = True
        job = Outbox().submit(kind, ns.recipient, send_kwargs, **opts)
        _print({"id": job.id, "ids": job.ids, "duplicate": job.duplicate})
        return 0
    if cmd == "bulk":
        from .outbox import Outbox

        stream = sys.stdin if ns.file == "-" else open(ns.file)  # noqa: SIM115 - closed below
        try:
            items = [json.loads(line) for line in stream if line.strip()]
        finally:
            if stream is not sys.stdin:
                stream.close()
        jobs = Outbox().send_many(items, progress=True)
        print(f"queued {len(jobs)} jobs ({sum(j.duplicate for j in jobs)} already known by idempotency key)")
        return 0
    if cmd == "status":
        from .outbox import Outbox

        _print(Outbox().status(ns.job_id).to_dict())
        return 0
    if cmd == "cancel":
        from .outbox import Outbox

        ok = (
            Outbox().cancel(ns.job_id, key=ns.key, account=ns.account)
            if ns.job_id is None
            else Outbox().cancel(ns.job_id)
        )
        print("cancelled" if ok else "not cancelled: already sent, failed, cancelled or being sent")
        return 0 if ok else 1
    if cmd == "dlq":
        from .admin import DeadLetters

        dl = DeadLetters(rt.store)
        if ns.action == "list":
            _print([s.to_dict() for s in dl.list(ns.account, ns.limit)])
        elif ns.action == "show":
            dead, payload = dl.show(ns.job_id)
            _print({"status": dead.to_dict(), "job": payload})
        elif ns.action == "replay":
            dl.replay(ns.job_id)
            print(f"replayed {ns.job_id}")
        else:
            print(f"purged {dl.purge(ns.account)} dead letters")
        return 0
    if cmd == "accounts":
        from .admin import account_states, resume_account

        if ns.action == "resume":
            print("resumed" if resume_account(rt.store, ns.account) else "not paused")
            return 0
        states = account_states(rt.store)
        if ns.json:
            _print([s.to_dict() for s in states])
        for s in states if not ns.json else []:
            pause = f"paused until {s.paused_until_ms} ({s.pause_reason})" if s.paused_until_ms else "active"
            limits = ", ".join(f"{k} {v}" for k, v in s.limits.items())
            print(
                f"{s.account}: {pause}; limits {limits} (burst {s.burst}); usage "
                f"{s.usage_pct if s.usage_pct is not None else '-'}%; slowdown x{s.slowdown:g}; "
                f"lanes {s.backlog_lanes}; scheduled {s.scheduled}; dead letters {s.dead_letters}"
            )
        return 0
    if cmd == "conversations":
        from .graph import InstagramClient

        conf = rt.settings.account(ns.account)
        with InstagramClient(
            conf.access_token, base_url=rt.settings.graph_url_for(conf.account_id), account_id=conf.account_id
        ) as client:
            if ns.action == "list":
                for i, conv in enumerate(client.conversations.list(limit=min(ns.limit, 100))):
                    if i >= ns.limit:
                        break
                    print(f"{conv.id}\t{conv.updated_time}")
            else:
                for m in client.conversations.get_messages(ns.conversation_id):
                    print(json.dumps(getattr(m, "__dict__", m), default=str))
        return 0
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
