"""What every request handler of the web app shares: settings, Redis, the producer objects, and
the user's event sinks (``DMWORKER_EVENT_CALLBACK`` imported once, ``DMWORKER_EVENT_TASK``).

Kept apart from :mod:`dmworker.web` so the blueprints can import it without an import cycle.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
from flask import Response, current_app, jsonify
from redis import Redis

from ..admin import DeadLetters
from ..lanes import LaneStore
from ..outbox import Outbox
from ..settings import ConfigError, Settings
from .telemetry import Telemetry

log = logging.getLogger("dmworker.web")

EXTENSION = "dmworker"


@dataclass
class WebContext:
    settings: Settings
    redis: redis.Redis
    store: LaneStore
    outbox: Outbox
    dead_letters: DeadLetters
    callback: Callable[[dict[str, Any]], Any] | None = None
    warned_no_tokens: bool = False
    telemetry: Telemetry = field(default_factory=Telemetry)

    @cached_property
    def probe_redis(self) -> Redis:
        """A client to the same Redis with a short timeout and no retry (``/readyz``, ``/healthz``)."""
        from .health import probe_client

        return probe_client(self.redis)

    def deliver(self, event: dict[str, Any]) -> None:
        """Hand one new inbound event to the user's task and/or callback; never raises."""
        if self.settings.event_task:
            try:
                from ..celery_app import app

                app.send_task(self.settings.event_task, args=[event], queue=self.settings.event_queue)
            except Exception as e:  # the broker is down: log, the webhook still answers 200
                log.error(
                    "could not send event task %s: %s: %s", self.settings.event_task, type(e).__name__, e
                )
        if self.callback is not None:
            try:
                self.callback(event)
            except Exception:
                log.exception(
                    "DMWORKER_EVENT_CALLBACK %s raised on a %s event",
                    self.settings.event_callback,
                    event.get("kind"),
                )


def import_callback(spec: str | None) -> Callable[[dict[str, Any]], Any] | None:
    """The function named ``"package.module:function"`` (``None`` when unset).

    Raises:
        ConfigError: naming DMWORKER_EVENT_CALLBACK when it cannot be imported or is not callable.
    """
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"DMWORKER_EVENT_CALLBACK: expected 'package.module:function', got {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"DMWORKER_EVENT_CALLBACK: cannot import {spec!r}: {e}") from None
    if not callable(target):
        raise ConfigError(f"DMWORKER_EVENT_CALLBACK: {spec!r} is not callable")
    return target


def ctx() -> WebContext:
    """The context of the app handling the current request."""
    web: WebContext = current_app.extensions[EXTENSION]
    return web


def error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    """A JSON error response ``{"error": code, "message": message, ...}``."""
    return jsonify({"error": code, "message": message, **extra}), status
