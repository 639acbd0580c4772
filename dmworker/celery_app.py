"""dmworker's Celery app: ``celery -A dmworker.celery_app worker`` (or ``dmworker worker``).

Celery is transport only.  The one task, ``dmworker.process_lane(account, ref)``, means
"lane X may have work" (``ref`` is the lane's sealed reference, :mod:`dmworker.laneref`: a
message never carries the recipient); the lane itself (jobs, order, attempts, waits) lives in
Redis, so a lost or duplicated Celery message never loses, duplicates or reorders a send.  JSON only, late
acks, no result backend.  Configuration is read from the environment when the app is first
configured, not at import.  Each worker process also runs a dispatcher thread (promotes due
follow-ups, wakes waiting lanes) unless ``DMWORKER_EMBEDDED_SCHEDULER=false``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown

from . import redisconn
from .keys import Keys
from .laneref import LaneRefError, LaneRefs, is_ref, refs_for
from .lanes import LANES_PER_MESSAGE
from .runtime import get_runtime, set_runtime
from .settings import Settings

log = logging.getLogger("dmworker.celery")

app = Celery("dmworker", set_as_current=False)


def _guard_kombu_closed_channel() -> None:
    """Keep a worker alive through a Redis restart (a kombu 5.x bug on the Redis transport).

    When the broker connection drops, Celery collects the connection (the channel's ``connection``
    becomes None) and reconnects on a new channel.  Late acks of tasks that were running on the old
    channel, and its QoS putting unacked messages back, then try to build a Redis client from that
    None: ``AttributeError: 'NoneType' object has no attribute 'client'`` (or ``'hostname'``) aborts
    the worker instead of letting it go on.  Those messages are still in Redis' unacked hash (kombu
    restores them after the visibility timeout) and, for dmworker, are only hints: the dispatcher
    re-publishes every lane whose lease or grace has passed.  So dropping the ack or restore of a
    dead channel is safe.
    """
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # kombu without its Redis transport: nothing to guard
        return
    qos: Any = kombu_redis.QoS
    for name in ("ack", "reject", "restore_unacked"):
        original = getattr(qos, name)
        if getattr(original, "_dmworker_guard", False):
            continue

        def guarded(self: Any, *args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            try:
                return _original(self, *args, **kw)
            except AttributeError:
                transport = getattr(self.channel, "connection", None)
                if transport is not None and getattr(transport, "client", None) is not None:
                    raise  # a live channel: not the bug this guards against
                log.warning(
                    "broker connection was lost: %s of a lane message on the old channel skipped "
                    "(the message stays in Redis; the dispatcher re-publishes its lane)",
                    _name,
                )
                return None

        guarded._dmworker_guard = True  # type: ignore[attr-defined]
        setattr(qos, name, guarded)


_guard_kombu_closed_channel()


def celery_config(settings: Settings | None = None) -> dict[str, Any]:
    """The Celery settings dmworker needs, built from ``settings`` (default: the process's)."""
    settings = settings or get_runtime().settings
    broker = redisconn.broker_url(settings)
    queue = f"{settings.key_prefix}.lanes"
    conf: dict[str, Any] = {
        "broker_url": broker,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_default_queue": queue,
        "task_routes": {
            "dmworker.process_lane": {"queue": queue},
            "dmworker.process_lanes": {"queue": queue},
        },
        "worker_prefetch_multiplier": 4,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        "worker_hijack_root_logger": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_create_missing_queues": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
    if broker.startswith(("redis", "rediss", "redis+socket", "sentinel")):
        conf["broker_transport_options"] = {
            "global_keyprefix": f"{settings.key_prefix}:celery:",
            "visibility_timeout": 3600,
            # a stalled broker must not block a producer's publish for ever: a failed publish is
            # logged and the dispatcher publishes the lane after its grace
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            # on Sentinel (dmworker's own Redis): the service name, so kombu follows failovers
            **redisconn.broker_options(settings),
        }
        if broker.startswith("sentinel") and conf["broker_transport_options"].get("sentinel_kwargs"):
            conf["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}  # rediss+sentinel://
    return conf


app.add_defaults(celery_config)

TASK = "dmworker.process_lane"
TASK_MANY = "dmworker.process_lanes"

_producer_apps: dict[tuple[str, str], Celery] = {}
_producer_lock = threading.Lock()


def publish(account: str, recipient: str) -> None:
    """Tell the workers that lane (account, recipient) has work (the message carries a sealed
    lane reference, not the recipient: :mod:`dmworker.laneref`).

    Raises:
        kombu/Celery errors when the broker cannot be reached; redis errors when the lane
        reference key must be read from Redis and Redis cannot be reached.
    """
    rt = get_runtime()
    ref = _refs(rt.settings, rt.redis).seal(account, recipient)
    process_lane.apply_async((account, ref))


def publish_group(account: str, lanes: list[str]) -> None:
    """Tell the workers that these lanes of ``account`` have work: one message per
    :data:`LANES_PER_MESSAGE` lanes (a broadcast's one-message lanes cost a fraction of a Celery
    message each).

    Raises:
        as :func:`publish`.
    """
    rt = get_runtime()
    refs = _refs(rt.settings, rt.redis)
    for start in range(0, len(lanes), LANES_PER_MESSAGE):
        chunk = [refs.seal(account, lane) for lane in lanes[start : start + LANES_PER_MESSAGE]]
        if len(chunk) == 1:
            process_lane.apply_async((account, chunk[0]))
        else:
            process_lanes.apply_async((account, chunk))


def _refs(settings: Settings, client: Any = None) -> LaneRefs:
    """The lane references of ``settings`` (the Redis key is read through ``client`` or the
    process's shared client of ``settings``, only when needed)."""
    return refs_for(
        settings, (lambda: client) if client is not None else (lambda: redisconn.client(settings))
    )


def producer_app(settings: Settings) -> Celery:
    """A Celery app that publishes to ``settings``' broker and queue (one per broker and prefix).

    An :class:`dmworker.Outbox` built with its own settings (another Redis, another prefix)
    publishes through this, not through the process-wide app configured from the environment.
    """
    key = (redisconn.broker_url(settings), settings.key_prefix)
    got = _producer_apps.get(key)
    if got is None:
        with _producer_lock:
            got = _producer_apps.get(key)
            if got is None:
                got = Celery(f"dmworker-producer-{len(_producer_apps)}", set_as_current=False)
                got.conf.update(celery_config(settings))
                _producer_apps[key] = got
    return got


def publish_lanes(settings: Settings, lanes: list[tuple[str, str]]) -> None:
    """Publish one lane message per ``(account, lane)`` on ``settings``' broker, one connection
    (each carries the lane's sealed reference, not the lane name).

    Raises:
        kombu/Celery errors when the broker cannot be reached (the caller logs; the dispatcher
        publishes the lanes after DMWORKER_DISPATCH_GRACE_MS anyway); redis errors when the lane
        reference key must be read from Redis and Redis cannot be reached.
    """
    producer_celery = producer_app(settings)
    queue = Keys(settings.key_prefix).celery_queue
    refs = _refs(settings)
    by_account: dict[str, list[str]] = {}
    for a, r in lanes:
        by_account.setdefault(a, []).append(refs.seal(a, r))
    with producer_celery.producer_or_acquire() as producer:
        for a, sealed in by_account.items():
            for start in range(0, len(sealed), LANES_PER_MESSAGE):
                chunk = sealed[start : start + LANES_PER_MESSAGE]
                if len(chunk) == 1:
                    producer_celery.send_task(TASK, args=(a, chunk[0]), queue=queue, producer=producer)
                else:
                    producer_celery.send_task(TASK_MANY, args=(a, chunk), queue=queue, producer=producer)


@app.task(name=TASK_MANY, acks_late=True, ignore_result=True)
def process_lanes(account: str, refs: list[str]) -> list[dict[str, Any]]:
    """Deliver several lanes of ``account`` one after the other (see :func:`process_lane`); returns
    what each visit did (and, last, ``{"continued_lanes": n, "sent": ...}`` for the lanes of the
    account the thread went on with, see below).  The step that ends one lane takes the next lane
    in the same Redis call, and, while the visit has time left, a group of the account's lanes
    waiting for admission (:meth:`dmworker.worker.LaneWorker.run_lanes`)."""
    if not isinstance(refs, list):
        return [{"ended": "bad_ref"}]
    rt = get_runtime()
    out: list[dict[str, Any] | None] = []
    lanes: list[str] = []
    for ref in refs[:LANES_PER_MESSAGE]:
        recipient = _open(rt, account, ref)
        out.append(None if recipient is not None else {"ended": "bad_ref"})
        if recipient is not None:
            lanes.append(recipient)
    if not lanes:
        return [o for o in out if o is not None]
    runs = _worker_of(rt).run_lanes(account, lanes, publish, go_on=_threads_free, publish_group=publish_group)
    mine = iter(runs[: len(lanes)])
    done = [o if o is not None else next(mine).summary() for o in out]
    if len(runs) > len(lanes):
        done.append(_continued(runs[len(lanes) :]))
    return done


def _continued(runs: list[Any]) -> dict[str, Any]:
    """What the lanes a visit took on by itself did, together (never which lanes)."""
    out: dict[str, Any] = {"continued_lanes": len(runs)}
    for run in runs:
        for o in run.outcomes:
            out[o] = out.get(o, 0) + 1
    return out


@app.task(name=TASK, acks_late=True, ignore_result=True)
def process_lane(account: str, ref: str) -> dict[str, Any]:
    """Deliver what the lane of ``account`` sealed in ``ref`` holds; returns what the visit did
    (Flower shows it; never the recipient):
    ``{"ended": "empty" | "wait" | "yield" | ..., "sent": n, "failed": n, "waiting_until_ms": ...}``,
    with ``"continued": {"continued_lanes": n, "sent": n, ...}`` when the thread went on with other
    lanes of the account waiting for admission (see :func:`process_lanes`).

    ``ref`` is a lane reference (:mod:`dmworker.laneref`), or a plain lane name from a process
    not yet upgraded.  A reference that does not open is logged (without it) and dropped:
    ``{"ended": "bad_ref"}`` (the dispatcher publishes every waiting lane from Redis anyway).
    """
    rt = get_runtime()
    recipient = _open(rt, account, ref)
    if recipient is None:
        return {"ended": "bad_ref"}
    runs = _worker_of(rt).run_lanes(
        account, [recipient], publish, go_on=_threads_free, publish_group=publish_group
    )
    summary: dict[str, Any] = runs[0].summary()
    if len(runs) > 1:
        summary["continued"] = _continued(runs[1:])
    return summary


def _open(rt: Any, account: str, ref: Any) -> str | None:
    """The lane inside ``ref`` (a plain lane name of the older form as it is); ``None``, logged,
    when it does not open."""
    if not isinstance(ref, str):
        return None
    if not is_ref(ref):
        return ref  # the older form, published by a process not yet upgraded
    try:
        return _refs(rt.settings, rt.redis).open(account, ref)
    except LaneRefError:
        log.warning(
            "a lane message was dropped: its lane reference does not open under this "
            "deployment's keys (altered, or sealed with another DMWORKER_SECRET_KEY)",
            extra={"account": account},
        )
        return None


def _worker_of(rt: Any) -> Any:
    """This process's lane worker (built on first use, and again when the runtime's store changes)."""
    from .worker import LaneWorker

    worker = _lane_worker()
    if worker is None or worker.store is not rt.store:
        worker = _set_lane_worker(LaneWorker(rt.settings, rt.store))
    return worker


_worker_lock = threading.Lock()
_worker: Any = None
_dispatch_stop: threading.Event | None = None
_pool: Any = None  # the worker's task pool (set when the worker is ready)


def _threads_free() -> bool:
    """Whether no Celery message of this process waits for a thread (then a visit may go on with its
    account's lanes waiting for admission without making any other message wait). Only the
    ``threads`` pool can tell (its executor's queue of messages not yet started); any other pool:
    never."""
    queue = getattr(getattr(_pool, "executor", None), "_work_queue", None)
    qsize = getattr(queue, "qsize", None)
    return qsize is not None and qsize() == 0


def _lane_worker() -> Any:
    return _worker


def _set_lane_worker(w: Any) -> Any:
    global _worker
    with _worker_lock:
        if _worker is None or _worker.store is not w.store:
            _worker = w
    return _worker


@worker_init.connect
def _size_pools(sender: Any = None, **_: Any) -> None:
    """Size the Redis pool from the worker's real concurrency, however it was set
    (``--concurrency``, ``celery -A ... worker -c``, or DMWORKER_WORKER_CONCURRENCY)."""
    if sender is None or getattr(sender, "app", None) is not app:
        return
    concurrency = getattr(sender, "concurrency", None)
    rt = get_runtime()
    if isinstance(concurrency, int) and concurrency > rt.settings.worker_concurrency:
        set_runtime(rt.settings.with_overrides(worker_concurrency=concurrency))
        log.info("Redis connection pool sized for a concurrency of %d", concurrency)


@worker_ready.connect
def _start_dispatcher(sender: Any = None, **_: Any) -> None:
    global _dispatch_stop, _pool
    _pool = getattr(sender, "pool", None)
    from .dispatcher import Dispatcher, start_heartbeat, start_thread
    from .worker import LaneWorker

    rt = get_runtime()
    hostname = getattr(sender, "hostname", None) or "worker"
    worker = _lane_worker()
    if worker is None or worker.store is not rt.store:
        worker = _set_lane_worker(LaneWorker(rt.settings, rt.store))
    tokens = worker.clients.token  # a held account resumes once this process has a new token
    if not rt.settings.embedded_scheduler:
        _dispatch_stop = start_heartbeat(rt.store, hostname, tokens=tokens)
        return
    dispatcher = Dispatcher(rt.store, publish, name=hostname, tokens=tokens, publish_group=publish_group)
    _thread, _dispatch_stop = start_thread(dispatcher)
    log.info("dispatcher thread started")


@worker_shutdown.connect
def _stop_dispatcher(**_: Any) -> None:
    if _dispatch_stop is not None:
        _dispatch_stop.set()
