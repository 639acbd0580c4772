"""``/metrics`` (Prometheus) and ``/healthz``, both read from Redis on every request.

The counters live in Redis (``AccountKeys.stats``, written by the Lua scripts), so a scrape of any
web process shows the whole cluster, not what one process saw.  The collector reads each account
in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flask
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..lanes import LaneStore
from ..service import LATENCY_BUCKETS_S
from .context import ctx, error

bp = flask.Blueprint("metrics", __name__)

HEARTBEAT_MAX_AGE_MS = 30_000

# (metric name without _total, help, stats field)
_COUNTERS = (
    ("dmworker_jobs_accepted", "Jobs accepted by enqueue.", "accepted"),
    ("dmworker_retries", "Sends that failed temporarily and were retried.", "retried"),
    ("dmworker_throttle_pauses", "Account pauses after a throttling answer.", "throttled"),
    ("dmworker_limiter_waits", "Times a lane waited for the cluster-wide rate limiter.", "limiter_waits"),
    ("dmworker_jobs_cancelled", "Jobs cancelled (by the producer or by a user's reply).", "cancelled"),
)
_GAUGES = (
    ("dmworker_lane_backlog", "Lanes (recipients) with work waiting to be sent.", "ready"),
    ("dmworker_followups_scheduled", "Delayed follow-ups not yet due.", "sched"),
    ("dmworker_dead_letters", "Jobs in the dead-letter queue.", "dlq"),
)


def _redis_now_ms(store: LaneStore) -> int:
    sec, usec = store.redis.time()
    return int(sec) * 1000 + int(usec) // 1000


class RedisCollector(Collector):
    """A prometheus-client collector that reads every account's numbers from Redis per scrape."""

    def __init__(self, store: LaneStore) -> None:
        self.store = store

    def accounts(self) -> list[str]:
        known: set[str] = {str(a) for a in self.store.redis.smembers(self.store.keys.accounts)}
        return sorted(known | set(self.store.settings.accounts))

    def collect(self) -> Iterator[Metric]:
        r = self.store.redis
        now = _redis_now_ms(self.store)
        counters = {name: CounterMetricFamily(name, doc, labels=["account"]) for name, doc, _ in _COUNTERS}
        sent = CounterMetricFamily(
            "dmworker_jobs_sent", "Jobs delivered, by kind.", labels=["account", "kind"]
        )
        failed = CounterMetricFamily(
            "dmworker_jobs_failed", "Jobs failed for good, by kind.", labels=["account", "kind"]
        )
        latency = HistogramMetricFamily(
            "dmworker_send_latency_seconds", "Graph API send latency.", labels=["account"]
        )
        gauges = {name: GaugeMetricFamily(name, doc, labels=["account"]) for name, doc, _ in _GAUGES}
        paused = GaugeMetricFamily(
            "dmworker_account_paused", "1 while the account's sends are paused.", labels=["account", "reason"]
        )
        for acct in self.accounts():
            k = self.store.acct(acct)
            pipe = r.pipeline(transaction=False)
            pipe.hgetall(k.stats)
            for _, _, key in _GAUGES:
                pipe.zcard(getattr(k, key))
            pipe.hgetall(k.pause)
            stats, *cards, pause = pipe.execute()
            for name, _, field in _COUNTERS:
                counters[name].add_metric([acct], _num(stats.get(field)))
            for field, value in sorted(stats.items()):
                prefix, _, kind = field.partition(":")
                if kind and prefix in ("sent", "failed"):
                    (sent if prefix == "sent" else failed).add_metric([acct, kind], _num(value))
            latency.add_metric([acct], *_histogram(stats))
            for (name, _, _), card in zip(_GAUGES, cards, strict=True):
                gauges[name].add_metric([acct], float(card))
            until = int(pause.get("until") or 0)
            reason = pause.get("reason") or ""
            active = bool(until) and (until > now or reason == "token_invalid")
            paused.add_metric([acct, (reason or "paused") if active else "none"], 1.0 if active else 0.0)
        yield from counters.values()
        yield sent
        yield failed
        yield latency
        yield from gauges.values()
        yield paused


def _num(value: Any) -> float:
    return float(value) if value not in (None, "") else 0.0


def _histogram(stats: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets from the non-cumulative ``lat:<bound>`` counts, and the sum."""
    buckets, total = [], 0.0
    for bound in LATENCY_BUCKETS_S:
        total += _num(stats.get(f"lat:{bound:g}"))
        buckets.append((floatToGoString(bound), total))
    total += _num(stats.get("lat:+Inf"))
    buckets.append(("+Inf", total))
    return buckets, _num(stats.get("lat_sum_s"))


def registry_for(store: LaneStore) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(store))
    return registry


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    body = generate_latest(registry_for(ctx().store))
    return flask.Response(body, 200, content_type=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    store = ctx().store
    try:
        store.redis.ping()
        now = _redis_now_ms(store)
        workers = int(store.redis.zcount(store.keys.workers, now - HEARTBEAT_MAX_AGE_MS, "+inf"))
    except Exception as e:
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
