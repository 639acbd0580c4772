"""The HTTP face of dmworker: Instagram webhooks, the producer API, health, metrics, OpenAPI.

Run it with ``gunicorn 'dmworker.web:create_app()'`` (settings from the environment).

===========================================  ==========================================  =======
``GET|POST /webhooks/instagram``             Meta's verification handshake / signed events  -
``POST /v1/messages``                        queue one job or a batch                    bearer
``GET|DELETE /v1/jobs/<id>``                 status / cancel                             bearer
``DELETE /v1/followups?key=``                cancel a follow-up by key                   bearer
``GET|DELETE /v1/dlq``, ``GET /v1/dlq/<id>``,  dead letters: list, purge, show, replay     bearer
``POST /v1/dlq/<id>/replay``
``GET /v1/windows/<igsid>``, ``/v1/accounts``  messaging window, account states            bearer
``GET /v1/callbacks/dead``, ``POST .../replay``  dead callbacks: list, replay                 bearer
``GET /livez``                               the process answers (no I/O)                -
``GET /readyz``                              Redis answers within 1 s                    -
``GET /healthz``                             Redis + a worker heartbeat (not a probe)    -
``GET /metrics``, ``/openapi.json``            Prometheus, the spec                        -
``/ui/...``                                  the operator's dashboard (:mod:`.ui`)          session
===========================================  ==========================================  =======

Probes of the web tier: liveness ``/livez``, readiness ``/readyz`` (see :mod:`.health`); a worker
outage never fails them, it shows as ``dmworker_workers_alive`` on ``/metrics``.

Every error is JSON (``{"error": code, "message": ...}``), never HTML, and never carries a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flask
import redis
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from ..admin import DeadLetters
from ..errors import RedisUnavailableError
from ..lanes import LaneStore
from ..outbox import Outbox
from ..settings import Settings
from .context import EXTENSION, WebContext, error, import_callback

log = logging.getLogger("dmworker.web")


def create_app(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    publish: Callable[[str, str], Any] | None = None,
) -> flask.Flask:
    """The Flask app.  ``settings=None``: this process's runtime (environment) and its logging.

    ``publish`` (``(account, recipient) -> None``) replaces the Celery publish of new lanes, so
    tests need no broker.

    Raises:
        ConfigError: when DMWORKER_EVENT_CALLBACK cannot be imported.
    """
    if settings is None:
        from ..logs import setup_logging
        from ..runtime import get_runtime

        rt = get_runtime()
        settings, redis_client = rt.settings, redis_client or rt.redis
        setup_logging(settings)
    if redis_client is None:
        from .. import redisconn

        redis_client = redisconn.client(settings)
    store = LaneStore(settings, redis_client)
    web = WebContext(
        settings=settings,
        redis=redis_client,
        store=store,
        outbox=Outbox(settings=settings, client=redis_client, publish=publish),
        dead_letters=DeadLetters(store, publish=publish),
        callback=import_callback(settings.event_callback),
    )
    app = flask.Flask("dmworker.web")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = web

    from . import api, api_callbacks, health, metrics, openapi, ui, webhook

    app.register_blueprint(webhook.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(api_callbacks.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(ui.bp)
    _error_handlers(app)
    web.telemetry.install(app)
    return app


def _error_handlers(app: flask.Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(e: HTTPException) -> Response:
        resp = e.get_response()  # keeps Allow, WWW-Authenticate, ...
        code = (e.name or "error").lower().replace(" ", "_")
        message = e.description or e.name or "error"
        if e.code == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            message = f"the body is larger than DMWORKER_MAX_BODY_BYTES ({limit} bytes)"
        resp.set_data(flask.json.dumps({"error": code, "message": message}))
        resp.content_type = "application/json"
        return resp

    @app.errorhandler(RedisUnavailableError)
    @app.errorhandler(redis.RedisError)
    def _redis(e: Exception) -> tuple[flask.Response, int]:
        log.error("Redis unavailable: %s", type(e).__name__)
        return error(503, "redis_unavailable", "Redis is unreachable; nothing was changed. Retry later.")

    @app.errorhandler(Exception)
    def _internal(e: Exception) -> tuple[flask.Response, int]:
        log.exception("unhandled error in %s %s", flask.request.method, flask.request.path)
        return error(500, "internal", "internal error (see the server log)")


__all__ = ["create_app"]
