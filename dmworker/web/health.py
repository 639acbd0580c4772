"""Probes of the web tier: ``/livez``, ``/readyz`` and the older ``/healthz``.

=============  ==========================================  =======================================
``/livez``     the process serves requests (no I/O)         Kubernetes liveness: restart when not 200
``/readyz``    Redis answers a PING within                 Kubernetes readiness: take the pod out of
               :data:`READY_TIMEOUT_S`                      the Service while Redis is unreachable
``/healthz``   Redis answers and a worker or dispatcher     the whole cluster's health, for a human or
               beat within :data:`HEARTBEAT_MAX_AGE_MS`     an external check; never a web-tier probe
=============  ==========================================  =======================================

The web tier does not need a worker to receive webhooks or queue jobs, so neither of its probes
looks at worker heartbeats: worker liveness is the metric ``dmworker_workers_alive`` (and
``dmworker_worker_heartbeat_age_seconds``) on ``/metrics``.  ``/healthz`` keeps its old answers
(``{"redis": "ok", "workers": n}``, 503 without a fresh heartbeat) for the checks that use it.
"""

from __future__ import annotations

import flask
import redis
from flask.typing import ResponseReturnValue
from redis.backoff import NoBackoff
from redis.retry import Retry

from .context import ctx, error

bp = flask.Blueprint("health", __name__)

#: A worker or dispatcher heartbeat younger than this counts as alive (milliseconds).
HEARTBEAT_MAX_AGE_MS = 30_000
#: How long ``/readyz`` waits for Redis (connect and answer), in seconds.
READY_TIMEOUT_S = 1.0


def probe_client(client: redis.Redis) -> redis.Redis:
    """A client to the same server as ``client`` that gives up after :data:`READY_TIMEOUT_S`, no retry.

    Its own pool of at most 2 connections, so a probe never waits behind a busy request pool.
    """
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(
        socket_timeout=READY_TIMEOUT_S,
        socket_connect_timeout=READY_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    probe_pool = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=2, **kwargs)
    return redis.Redis(connection_pool=probe_pool)


def redis_now_ms(client: redis.Redis) -> int:
    """Redis ``TIME`` in epoch milliseconds."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


@bp.get("/livez")
def livez() -> ResponseReturnValue:
    """200 while the process answers; touches nothing else."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """200 when Redis answers a PING within READY_TIMEOUT_S, else 503 (the error's type, no detail)."""
    try:
        ctx().probe_redis.ping()
    except (redis.RedisError, OSError) as e:
        return error(503, "not_ready", f"Redis does not answer ({type(e).__name__})", redis="down")
    return {"status": "ok", "redis": "ok"}


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Redis answers and a worker/dispatcher beat within HEARTBEAT_MAX_AGE_MS (the cluster's health).

    Not a probe for the web tier (a worker outage must not take the webhook receiver down): use
    ``/livez`` and ``/readyz`` there.
    """
    web = ctx()
    client = web.probe_redis
    try:
        now = redis_now_ms(client)
        workers = int(client.zcount(web.store.keys.workers, now - HEARTBEAT_MAX_AGE_MS, "+inf"))
    except (redis.RedisError, OSError) as e:
        return error(503, "unhealthy", f"Redis does not answer ({type(e).__name__})", redis="down", workers=0)
    if workers < 1:
        return error(
            503,
            "unhealthy",
            f"no worker or dispatcher heartbeat in the last {HEARTBEAT_MAX_AGE_MS // 1000} s",
            redis="ok",
            workers=0,
        )
    return flask.jsonify({"redis": "ok", "workers": workers})
