"""``dmworker`` subcommands about jobs: send, bulk, status, cancel, dlq."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli_common import UsageError, add_parser, print_json

KINDS = (
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
)


def register(sub: Any) -> None:
    snd = add_parser(sub, "send", "queue one message: send text IGSID 'Hi'")
    snd.add_argument("kind", choices=KINDS, help="the send method (json: VALUE is a whole job)")
    snd.add_argument("recipient", help="IGSID (comment id for private_reply)")
    snd.add_argument("value", nargs="?", help="text, media URL, message id, post id, or JSON arguments")
    snd.add_argument("--account", help="sending account id (default: DMWORKER_ACCOUNT_ID)")
    snd.add_argument("--type", default="image", help="media type (image, video, audio, file)")
    snd.add_argument("--human-agent", action="store_true", help="HUMAN_AGENT tag: 7-day window")
    snd.add_argument("--reply", action="append", default=[], help="quick reply TITLE:PAYLOAD (repeat)")
    snd.add_argument("--reaction", default="love", help="reaction for react")
    snd.add_argument("--seconds", type=float, default=0.0, help="typing pause, s")
    snd.add_argument("--delay", type=float, help="send in this many seconds (a follow-up)")
    snd.add_argument("--key", help="name the follow-up (cancel or replace it by name)")
    snd.add_argument(
        "--cancel-on-reply", action="store_true", help="cancel the follow-up when the user writes"
    )
    snd.add_argument("--idempotency-key", help="the same key again returns the first job")
    snd.set_defaults(handler=send)

    bulk = add_parser(sub, "bulk", "queue many jobs from a JSON-lines file, with a progress bar")
    bulk.add_argument("file", help="one JSON job per line (as for POST /v1/messages); - = stdin")
    bulk.add_argument(
        "--priority",
        choices=("high", "normal", "low"),
        default="low",
        help="priority of the lines that give none (a broadcast should not delay live replies)",
    )
    bulk.set_defaults(handler=bulk_)

    st = add_parser(
        sub,
        "status",
        "show a job's status; without a job id, whether workers are alive and each account's state",
    )
    st.add_argument("job_id", nargs="?", help="the id `send` printed (omit it for the overview)")
    st.add_argument("--json", action="store_true", help="the overview as JSON")
    st.set_defaults(handler=status)

    c = add_parser(sub, "cancel", "cancel a job by id, or a follow-up by --key")
    c.add_argument("job_id", nargs="?", help="the job's id (or give --key)")
    c.add_argument("--key", help="the follow-up's name")
    c.add_argument("--account", help="account of the --key (default: DMWORKER_ACCOUNT_ID)")
    c.set_defaults(handler=cancel)

    q = add_parser(sub, "dlq", "dead letters: list, show, replay, purge")
    q.add_argument("action", choices=("list", "show", "replay", "purge"), help="what to do")
    q.add_argument("job_id", nargs="?", help="the dead letter (show, replay)")
    q.add_argument("--account", help="only this account (list, purge; default: all)")
    q.add_argument("--limit", type=int, default=50, help="most dead letters listed")
    q.set_defaults(handler=dlq)


def _send_args(ns: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    kind, v = ns.kind, ns.value
    if kind == "json":
        body = json.loads(v or "{}")
        if not isinstance(body, dict) or "kind" not in body:
            raise UsageError('send json takes a JSON object with a "kind"')
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


def send(ns: argparse.Namespace) -> int:
    from .outbox import Outbox

    kind, send_kwargs = _send_args(ns)
    opts: dict[str, Any] = {
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
    print_json({"id": job.id, "ids": job.ids, "duplicate": job.duplicate})
    return 0


def bulk_(ns: argparse.Namespace) -> int:
    from .outbox import Outbox

    stream = sys.stdin if ns.file == "-" else open(ns.file)  # noqa: SIM115 - closed below
    try:
        items = [json.loads(line) for line in stream if line.strip()]
    finally:
        if stream is not sys.stdin:
            stream.close()
    jobs = Outbox().send_many(items, progress=True, priority=ns.priority)
    print(f"queued {len(jobs)} jobs ({sum(j.duplicate for j in jobs)} already known by idempotency key)")
    return 0


def status(ns: argparse.Namespace) -> int:
    """A job's status as JSON (and, on stderr, a warning when it waits while no worker is alive);
    without a job id, the overview: worker liveness, then one line per account."""
    from .cli_ops import describe_account, describe_workers, worker_liveness
    from .lifecycle import END_STATES
    from .runtime import get_runtime

    store = get_runtime().store
    if ns.job_id:
        from .outbox import Outbox

        st = Outbox().status(ns.job_id).to_dict()
        print_json(st)
        workers = worker_liveness(store)
        if st.get("state") not in END_STATES and not workers.alive:
            print(describe_workers(workers), file=sys.stderr)
        return 0
    from .admin import account_states

    workers = worker_liveness(store)
    states = account_states(store)
    if ns.json:
        print_json({"workers": workers.to_dict(), "accounts": [s.to_dict() for s in states]})
        return 0
    print(describe_workers(workers))
    for s in states:
        print(describe_account(s))
    return 0


def cancel(ns: argparse.Namespace) -> int:
    from .outbox import Outbox

    if ns.job_id is None and ns.key is None:
        raise UsageError("give a job id or --key NAME")
    ob = Outbox()
    ok = ob.cancel(ns.job_id) if ns.job_id is not None else ob.cancel(key=ns.key, account=ns.account)
    print("cancelled" if ok else "not cancelled: already sent, failed, cancelled or being sent")
    return 0 if ok else 1


def dlq(ns: argparse.Namespace) -> int:
    from .admin import DeadLetters
    from .runtime import get_runtime

    if ns.action in ("show", "replay") and not ns.job_id:
        raise UsageError(f"dlq {ns.action} takes a job id (`dmworker dlq list` shows them)")
    dl = DeadLetters(get_runtime().store)
    if ns.action == "list":
        print_json([s.to_dict() for s in dl.list(ns.account, ns.limit)])
    elif ns.action == "show":
        dead, payload = dl.show(ns.job_id)
        print_json({"status": dead.to_dict(), "job": payload})
    elif ns.action == "replay":
        dl.replay(ns.job_id)
        print(f"replayed {ns.job_id}")
    else:
        print(f"purged {dl.purge(ns.account)} dead letters")
    return 0
