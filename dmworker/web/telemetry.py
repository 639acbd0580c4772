"""Per-process metrics of one web app: HTTP requests by route, webhook requests and events, process.

The job counters are cluster-wide and live in Redis (:mod:`.metrics`); these count what *this*
process answered, in a registry of its own per app (two apps in one process never mix).  Run one
gunicorn worker per pod or unit (``--workers 1 --threads N``, as ``deploy/`` does) so a scrape
always reads the same process.

Every label value comes from a fixed set, never from the request: ``route`` is Flask's URL rule
(``/v1/jobs/<job_id>``, or ``unmatched`` when no rule matched), ``method`` one of
:data:`METHODS` (else ``other``), ``status`` the answer's status code (``5xx``-``1xx``, produced
by the server).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import flask
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from werkzeug.wrappers import Response

#: HTTP methods counted by name; any other method is counted as ``other``.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: ``route`` label of a request no URL rule matched (404, 405 on an unknown path).
UNMATCHED = "unmatched"
#: Outcomes of a webhook POST (``dmworker_webhook_requests_total{result}``).
WEBHOOK_RESULTS = ("ok", "bad_signature", "bad_request", "ignored", "error")
#: Events of accepted webhook POSTs (``dmworker_webhook_events_total{result}``): every event in the
#: body (``received``), split into those recorded for the first time (``new``), redeliveries of
#: events recorded before (``duplicate``), kinds dmworker does not record (``ignored``: echoes,
#: reads, deliveries, unknown or malformed events, the account's own) and events of accounts this
#: deployment does not serve (``unserved``); ``not_new`` is the sum of the last three.
WEBHOOK_EVENT_RESULTS = ("received", "new", "duplicate", "ignored", "unserved", "not_new")
#: Buckets of ``dmworker_http_request_duration_seconds`` (seconds).
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Telemetry:
    """The per-process metrics of one app, in their own registry (plus process and platform metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.http_requests = Counter(
            "dmworker_http_requests",
            "HTTP requests answered by this process, by route (URL rule), method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "dmworker_http_request_duration_seconds",
            "Time to answer an HTTP request in this process, by route (URL rule) and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.webhook_requests = Counter(
            "dmworker_webhook_requests",
            "Webhook POSTs answered by this process: ok, bad_signature, bad_request, ignored, error.",
            ["result"],
            registry=self.registry,
        )
        self.webhook_events = Counter(
            "dmworker_webhook_events",
            "Events in accepted webhook POSTs: received = new (first delivery) + duplicate (redelivered) "
            "+ ignored (echo, read, unknown) + unserved (account not served here); not_new = the last three.",
            ["result"],
            registry=self.registry,
        )
        for result in WEBHOOK_RESULTS:  # every series exists from the start (rate() and absent())
            self.webhook_requests.labels(result)
        for result in WEBHOOK_EVENT_RESULTS:
            self.webhook_events.labels(result)

    def webhook(
        self,
        result: str,
        received: int = 0,
        new: int = 0,
        duplicate: int = 0,
        ignored: int = 0,
        unserved: int = 0,
    ) -> None:
        """Count one webhook POST (``result`` one of WEBHOOK_RESULTS) and its events by outcome."""
        self.webhook_requests.labels(result if result in WEBHOOK_RESULTS else "error").inc()
        counts = {"received": received, "new": new, "duplicate": duplicate, "ignored": ignored}
        counts.update(unserved=unserved, not_new=max(0, received - new))
        for label, n in counts.items():
            if n:
                self.webhook_events.labels(label).inc(n)

    def install(self, app: flask.Flask) -> None:
        """Time and count every request of ``app`` (also those answered by an error handler)."""

        @app.before_request
        def _start() -> None:
            flask.g.dmworker_t0 = time.perf_counter()

        @app.after_request
        def _count(resp: Response) -> Response:
            t0 = flask.g.pop("dmworker_t0", None)
            route, method = route_label(), method_label(flask.request.method)
            self.http_requests.labels(route, method, str(resp.status_code)).inc()
            if t0 is not None:
                self.http_duration.labels(route, method).observe(time.perf_counter() - t0)
            return resp


def route_label() -> str:
    """The matched URL rule of the current request (never the raw path), or ``unmatched``."""
    rule = flask.request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def method_label(method: str, known: Iterable[str] = METHODS) -> str:
    return method if method in known else "other"
