"""``dmworker demo``: a whole local run a newcomer starts first (under a minute, exit 0 when right).

It starts the embedded Redis (unless ``DMWORKER_REDIS_URL`` is set), the Graph API sandbox and two
worker processes; opens windows for a few hundred simulated users through signed webhooks; sends
each a realistic conversation (typing, text, quick replies, a generic template, a reaction, a
follow-up a few seconds later — for some users cancelled by their simulated reply); shows a
progress bar; then prints a per-recipient timeline, totals and the p50/p99 delivery latency.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import tempfile
import time
import uuid
from typing import Any

from tqdm import tqdm

from . import redisconn
from .lanes import LaneStore
from .outbox import Outbox
from .settings import AccountConfig, Settings, parse_rate
from .testing import ProcessGroup

DEMO_ACCOUNT = "17841400000000042"
FOLLOWUP_DELAY_S = 4.0


def _post_webhook(client: Any, secret: str, body: dict[str, Any]) -> int:
    raw = json.dumps(body).encode()
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    resp = client.post(
        "/webhooks/instagram", data=raw, content_type="application/json", headers={"X-Hub-Signature-256": sig}
    )
    return int(resp.status_code)


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def run_demo(users: int = 300, workers: int = 2, progress: bool = True) -> int:
    """Run the demo; returns the process exit code (0 = everything delivered as expected).

    Without ``DMWORKER_REDIS_URL`` it uses the embedded Redis, and stops it at the end if the demo
    started it.
    """
    t_start = time.monotonic()
    base = Settings.from_env()
    print("dmworker demo: starting Redis, the Graph API sandbox and", workers, "workers ...", flush=True)
    # the demo stops at its end the embedded Redis it started (not one that was running before)
    started_embedded = base.redis_url is None and redisconn.embedded_status(base.data_dir) is None
    try:
        url = redisconn.redis_url(base)
        return _run(base, url, users, workers, progress, t_start)
    finally:
        if started_embedded and redisconn.stop_embedded(base.data_dir):
            print(f"dmworker demo: stopped the embedded Redis it had started ({base.data_dir})")


def _run(base: Settings, url: str, users: int, workers: int, progress: bool, t_start: float) -> int:
    from .sandbox import SandboxProcess
    from .web import create_app

    token = "IGAAdemo" + uuid.uuid4().hex
    secret = uuid.uuid4().hex
    prefix = f"dmwdemo{uuid.uuid4().hex[:6]}"
    sandbox = SandboxProcess(tokens={token: DEMO_ACCOUNT}).start()
    settings = base.with_overrides(
        redis_url=url,
        key_prefix=prefix,
        graph_url=sandbox.url + "/v25.0",
        accounts={DEMO_ACCOUNT: AccountConfig(DEMO_ACCOUNT, token)},
        default_account=DEMO_ACCOUNT,
        rates={**base.rates, "text": parse_rate("300/s")},
        window_policy="enforce",
        app_secret=secret,
        dispatch_grace_ms=5_000,
        scheduler_tick_ms=20,
        lease_ms=15_000,
        log_level="WARNING",
    )
    group = ProcessGroup(settings, log_dir=tempfile.mkdtemp(prefix="dmw-demo-"))
    client = redisconn.client(settings)
    try:
        for n in range(workers):
            group.start_worker(f"demo{n}", concurrency=32)
        publish = _make_publisher(settings)
        outbox = Outbox(settings=settings, client=client, publish=publish)
        web = create_app(settings, redis_client=client, publish=publish).test_client()
        recipients = [str(17_900_000_000_000 + i) for i in range(users)]
        replies = set(recipients[::10])  # every 10th user answers before the follow-up is due

        # 1. the users write first: the sandbox makes Meta's webhook, we deliver it signed
        user_mids: dict[str, str] = {}
        for r in recipients:
            ev = sandbox.control.inbound(DEMO_ACCOUNT, r, text="Hi! Is this still available?")
            user_mids[r] = ev["mid"]
            if _post_webhook(web, secret, ev["webhook"]) != 200:
                print("webhook refused", file=sys.stderr)
                return 1

        # 2. the business answers: a conversation per user, and a follow-up
        t_enqueue = time.time() * 1000
        followups = {}
        for r in recipients:
            outbox.react_to_message(r, user_mids[r], reaction="love")
            (
                outbox.sequence(r)
                .typing(seconds=1)
                .text("Hello! Thanks for reaching out.")
                .quick_replies(
                    text="How can I help you?",
                    replies=[
                        {"content_type": "text", "title": "Order status", "payload": "order_status"},
                        {"content_type": "text", "title": "Return item", "payload": "return"},
                        {"content_type": "text", "title": "Talk to a human", "payload": "human"},
                    ],
                )
                .generic_template(
                    elements=[
                        {
                            "title": "Product Name",
                            "subtitle": "$29.99",
                            "image_url": "https://example.com/p.jpg",
                            "buttons": [
                                {"type": "web_url", "url": "https://example.com/product", "title": "View"}
                            ],
                        }
                    ]
                )
                .enqueue()
            )
            followups[r] = outbox.send_text(
                r,
                "Still there? Reply any time.",
                delay=FOLLOWUP_DELAY_S,
                key=f"nudge-{r}",
                cancel_on_reply=True,
            )
        per_user = 5  # react, typing, text, quick replies, template
        expected = users * per_user + users - len(replies)

        # 3. some users reply before their follow-up is due
        for r in sorted(replies):
            ev = sandbox.control.inbound(DEMO_ACCOUNT, r, text="Order status please")
            _post_webhook(web, secret, ev["webhook"])

        bar = tqdm(total=expected, desc="delivered", unit="msg", disable=not progress, file=sys.stdout)
        seen = 0
        deadline = time.monotonic() + 45
        while seen < expected and time.monotonic() < deadline:
            n = len(sandbox.control.sends(DEMO_ACCOUNT))
            bar.update(n - seen)
            seen = n
            time.sleep(0.2)
        time.sleep(0.5)
        bar.close()
        return _report(outbox, sandbox, recipients, replies, followups, expected, t_enqueue, t_start)
    finally:
        group.stop_all()
        sandbox.stop()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


def _make_publisher(settings: Settings) -> Any:
    from celery import Celery

    app = Celery("dmworker-demo-producer", set_as_current=False)
    app.conf.update(
        broker_url=redisconn.broker_url(settings),
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"global_keyprefix": f"{settings.key_prefix}:celery:"},
    )
    queue = f"{settings.key_prefix}.lanes"
    return lambda account, recipient: app.send_task(
        "dmworker.process_lane", (account, recipient), queue=queue
    )


def _report(
    outbox: Outbox,
    sandbox: Any,
    recipients: list[str],
    replies: set[str],
    followups: dict[str, Any],
    expected: int,
    t_enqueue: float,
    t_start: float,
) -> int:
    sends = sandbox.control.sends(DEMO_ACCOUNT)
    by_user: dict[str, list[dict[str, Any]]] = {}
    for s in sends:
        by_user.setdefault(s["recipient"], []).append(s)
    print("\nTimelines (ms after the business started answering):")
    for r in [recipients[1], recipients[2], recipients[0]]:
        tag = " (replied: follow-up cancelled)" if r in replies else ""
        print(f"  user {r}{tag}")
        for s in by_user.get(r, []):
            print(f"    +{s['t_ms'] - t_enqueue:7.0f}  {s['kind']}")
    cancelled = [r for r in replies if outbox.status(followups[r].id).state == "cancelled"]
    wrongly_sent = [
        r
        for r in replies
        if any(s["kind"] == "text" and "Still there" in json.dumps(s["body"]) for s in by_user.get(r, []))
    ]
    lat = [s["t_ms"] - t_enqueue for s in sends if "Still there" not in json.dumps(s["body"])]
    fu_lag = [
        s["t_ms"] - (outbox.status(followups[s["recipient"]].id).due_ms or 0)
        for s in sends
        if "Still there" in json.dumps(s["body"])
    ]
    store: LaneStore = outbox.store
    dead = int(store.redis.zcard(store.acct(DEMO_ACCOUNT).dlq))
    print(
        f"\nTotals: {len(sends)} delivered of {expected} expected; follow-ups cancelled by a reply: "
        f"{len(cancelled)}/{len(replies)}; dead letters: {dead}"
    )
    print(
        f"Delivery latency from enqueue (immediate messages): p50 {_percentile(lat, 0.5):.0f} ms, "
        f"p99 {_percentile(lat, 0.99):.0f} ms"
    )
    print(
        f"Follow-up lag after due time: p50 {_percentile(fu_lag, 0.5):.0f} ms, "
        f"p99 {_percentile(fu_lag, 0.99):.0f} ms"
    )
    print(f"Demo took {time.monotonic() - t_start:.1f} s.")
    ok = len(sends) == expected and len(cancelled) == len(replies) and not wrongly_sent and dead == 0
    if not ok:
        print("demo: something was not delivered as expected", file=sys.stderr)
    return 0 if ok else 1
