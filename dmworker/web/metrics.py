"""``/metrics`` (Prometheus): the cluster's numbers read from Redis, plus this process's own.

The job counters live in Redis (``AccountKeys.stats``, written by the Lua scripts; the global
``<prefix>:refused`` hash), so a scrape of any web process shows the whole cluster.  The
collector reads every account in three pipelined round trips, whatever the number of accounts.

**Bounded label values.**  No label value ever comes from a request:

- ``account``: only the accounts configured in this process (``DMWORKER_ACCOUNT_ID`` /
  ``DMWORKER_ACCOUNTS_FILE``; give the web tier the same accounts file as the workers).  An
  account id a producer sent that is not configured here is not a label: such accounts are
  counted by ``dmworker_accounts_unconfigured``, their jobs are not broken down;
- ``kind``: the send kinds (:data:`dmworker.schemas.KINDS`), anything else ``other``;
- ``reason``: :data:`FAILURE_REASONS`, :data:`REFUSAL_REASONS`, :data:`PAUSE_REASONS`, anything
  else ``other``; every series of these fixed sets is exported (0 when nothing happened).

Per-process metrics (HTTP requests by route, webhook requests and events, process and platform)
come from :mod:`.telemetry`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import flask
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..graph import errors as gerr
from ..jobs import JobStatus
from ..lanes import LaneStore
from ..schemas import KINDS
from ..service import LATENCY_BUCKETS_S
from .context import ctx
from .health import HEARTBEAT_MAX_AGE_MS
from .metrics_accounts import AccountsCollector

bp = flask.Blueprint("metrics", __name__)

OTHER = "other"
#: ``reason`` of ``dmworker_job_failures_total``: why jobs ended failed or expired.  The stats
#: field ``reason:<error kind>``; ``token_invalid`` is counted as ``token``, an unknown kind as other.
FAILURE_REASONS = (
    gerr.OutsideWindowError.kind,
    gerr.InvalidRequestError.kind,
    "expired",
    "attempts_exhausted",
    gerr.RecipientUnavailableError.kind,
    "token",
    gerr.PermissionDeniedError.kind,
    "private_reply_used",
    gerr.PermanentError.kind,
    gerr.TemporaryError.kind,
    gerr.OutcomeUnknownError.kind,
    "internal",
    OTHER,
)
_FAILURE_ALIASES = {gerr.TokenInvalidError.kind: "token"}
#: ``reason`` of ``dmworker_enqueue_refusals_total`` (fields of the global ``<prefix>:refused`` hash).
REFUSAL_REASONS = ("validation", "window", "key_exists", "idempotency_conflict", "backlog", OTHER)
#: ``reason`` of ``dmworker_account_paused`` (the ``reason`` of an account's pause).
PAUSE_REASONS = ("throttled", "policy_block", gerr.TokenInvalidError.kind, OTHER)
#: At most this many lanes per account are read per scrape for ``dmworker_jobs_queued`` and
#: ``dmworker_oldest_due_job_age_seconds`` (the lanes due soonest); beyond it both are estimates.
MAX_SCRAPE_LANES = 5000

# (metric name without _total, help, stats field)
_COUNTERS = (
    ("dmworker_jobs_accepted", "Jobs accepted by enqueue.", "accepted"),
    ("dmworker_retries", "Sends that failed temporarily and were retried.", "retried"),
    ("dmworker_throttle_pauses", "Account pauses after a throttling answer.", "throttled"),
    ("dmworker_limiter_waits", "Times a lane waited for the cluster-wide rate limiter.", "limiter_waits"),
    ("dmworker_jobs_cancelled", "Jobs cancelled (by the producer or by a user's reply).", "cancelled"),
    ("dmworker_jobs_expired", "Jobs that expired before they could be sent.", "expired"),
)
# (metric name, help, AccountKeys attribute of a sorted set whose size it is)
_ZCARDS = (
    ("dmworker_lanes_backlog", "Lanes (recipients) with jobs waiting to be sent.", "ready"),
    (
        "dmworker_lane_backlog",
        "DEPRECATED (removed in the next release): use dmworker_lanes_backlog (it counts lanes, not jobs).",
        "ready",
    ),
    ("dmworker_followups_scheduled", "Delayed follow-ups not yet due.", "sched"),
    ("dmworker_dead_letters", "Jobs in the dead-letter queue.", "dlq"),
)


def failure_reason(kind: str) -> str:
    """The ``reason`` label of an error kind (a fixed set)."""
    kind = _FAILURE_ALIASES.get(kind, kind)
    return kind if kind in FAILURE_REASONS else OTHER


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``."""
    return value if value in allowed else OTHER


class RedisCollector(Collector):
    """Reads every configured account's numbers from Redis at each scrape (see the module docstring)."""

    def __init__(self, store: LaneStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []  # no Redis I/O when registered

    def accounts(self) -> list[str]:
        """The accounts that get an ``account`` label: those this deployment serves — all of them up
        to :data:`ALL_ACCOUNTS_UP_TO`; past that, only the ones with work: something due in the next
        hour (``P:due``) or events in the last hour (``P:events:active``), so a scrape costs with the
        active accounts, not with every registered one."""
        return active_accounts(self.store)

    def collect(self) -> Iterator[Metric]:
        r = self.store.redis
        accounts = self.accounts()
        keys = self.store.keys
        refused_key = getattr(keys, "refused", f"{keys.prefix}:refused")
        # Round trip 1: clock, registry, heartbeats, refusals; per account stats, sizes, pause, lanes.
        pipe = r.pipeline(transaction=False)
        pipe.time()
        pipe.smembers(keys.accounts)
        pipe.zrange(keys.workers, -1, -1, withscores=True)
        pipe.hgetall(refused_key)
        for acct in accounts:
            k = self.store.acct(acct)
            pipe.hgetall(k.stats)
            for _, _, attr in _ZCARDS:
                pipe.zcard(getattr(k, attr))
            pipe.hgetall(k.pause)
            pipe.zrange(k.ready, 0, MAX_SCRAPE_LANES - 1)
            for other in (k.readyh, k.readyl):  # lanes of high and low priority
                pipe.zcard(other)
                pipe.zrange(other, 0, MAX_SCRAPE_LANES - 1)
        first = pipe.execute()
        (sec, usec), registered, newest, refused = first[:4]
        now = int(sec) * 1000 + int(usec) // 1000
        per = 3 + len(_ZCARDS) + 4  # stats, the sizes, pause, lanes; high and low lanes
        rows = [_merge_priorities(first[4 + i * per : 4 + (i + 1) * per]) for i in range(len(accounts))]
        lanes = {acct: row[-1] for acct, row in zip(accounts, rows, strict=True)}
        total_lanes = {acct: int(row[1]) for acct, row in zip(accounts, rows, strict=True)}  # ZCARD ready
        queued, oldest = self._lanes(accounts, lanes, total_lanes, now)

        yield from self._account_metrics(accounts, rows, queued, oldest, now)
        yield from self._global_metrics(now, registered, newest, refused)
        yield from callback_metrics(self.store, now)

    # ------------------------------------------------------------------ lanes: queued jobs, oldest
    def _lanes(
        self, accounts: list[str], lanes: Mapping[str, list[str]], total_lanes: Mapping[str, int], now: int
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Jobs in lanes and the age (s) of the oldest due head job, per account (rounds 2 and 3)."""
        r = self.store.redis
        pipe = r.pipeline(transaction=False)
        for acct in accounts:
            k = self.store.acct(acct)
            for lane in lanes[acct]:
                pipe.llen(k.lane(lane))
                pipe.lindex(k.lane(lane), 0)
        replies = pipe.execute() if len(pipe) else []
        heads: dict[str, list[str]] = {}
        queued: dict[str, float] = {}
        i = 0
        for acct in accounts:
            n, found = 0, []
            for _ in lanes[acct]:
                length, head = replies[i], replies[i + 1]
                i += 2
                n += int(length or 0)
                if head:
                    found.append(head)
            sampled = len(lanes[acct])
            total = int(total_lanes[acct])
            queued[acct] = float(n) if sampled >= total or not sampled else n * total / sampled
            heads[acct] = found
        pipe = r.pipeline(transaction=False)
        for acct in accounts:
            if heads[acct]:
                pipe.hmget(self.store.acct(acct).status, heads[acct])
        statuses = iter(pipe.execute() if len(pipe) else [])
        oldest: dict[str, float] = {}
        for acct in accounts:
            raws = next(statuses) if heads[acct] else []
            since = [_due_since(job_id, raw) for job_id, raw in zip(heads[acct], raws, strict=True)]
            known = [s for s in since if s is not None]
            oldest[acct] = max(0.0, (now - min(known)) / 1000) if known else 0.0
        return queued, oldest

    # ------------------------------------------------------------------ families
    def _account_metrics(
        self,
        accounts: list[str],
        rows: list[list[Any]],
        queued: Mapping[str, float],
        oldest: Mapping[str, float],
        now: int,
    ) -> Iterator[Metric]:
        counters = {name: CounterMetricFamily(name, doc, labels=["account"]) for name, doc, _ in _COUNTERS}
        sent = CounterMetricFamily(
            "dmworker_jobs_sent", "Jobs delivered, by kind.", labels=["account", "kind"]
        )
        failed = CounterMetricFamily(
            "dmworker_jobs_failed", "Jobs failed for good, by kind.", labels=["account", "kind"]
        )
        failures = CounterMetricFamily(
            "dmworker_job_failures",
            "Jobs that ended failed or expired, by reason (a fixed set; unknown reasons are 'other').",
            labels=["account", "reason"],
        )
        latency = HistogramMetricFamily(
            "dmworker_send_latency_seconds", "Graph API send latency.", labels=["account"]
        )
        e2e = HistogramMetricFamily(
            "dmworker_enqueue_to_send_seconds",
            "From when a job became due (enqueued, or its follow-up time) to sent.",
            labels=["account"],
        )
        sizes = {name: GaugeMetricFamily(name, doc, labels=["account"]) for name, doc, _ in _ZCARDS}
        jobs_queued = GaugeMetricFamily(
            "dmworker_jobs_queued",
            "Jobs in recipient lanes not yet sent (queued, waiting for a retry or the limiter, sending).",
            labels=["account"],
        )
        oldest_age = GaugeMetricFamily(
            "dmworker_oldest_due_job_age_seconds",
            "Age of the oldest due job not yet sent (0 when none), from when it became due.",
            labels=["account"],
        )
        paused = GaugeMetricFamily(
            "dmworker_account_paused",
            "1 while the account's sends are paused for this reason (one 0/1 series per reason).",
            labels=["account", "reason"],
        )
        e2e_bounds = _bounds([row[0] for row in rows], "e2e")
        for acct, row in zip(accounts, rows, strict=True):
            stats, cards, pause = row[0], row[1 : 1 + len(_ZCARDS)], row[1 + len(_ZCARDS)]
            for name, _, field in _COUNTERS:
                counters[name].add_metric([acct], _num(stats.get(field)))
            by_kind: dict[tuple[str, str], float] = {}
            by_reason = dict.fromkeys(FAILURE_REASONS, 0.0)
            for field, value in stats.items():
                prefix, _, rest = field.partition(":")
                if rest and prefix in ("sent", "failed"):
                    key = (prefix, bounded(rest, KINDS))
                    by_kind[key] = by_kind.get(key, 0.0) + _num(value)
                elif rest and prefix == "reason":
                    by_reason[failure_reason(rest)] += _num(value)
            for (prefix, kind), value in sorted(by_kind.items()):
                (sent if prefix == "sent" else failed).add_metric([acct, kind], value)
            for reason, value in by_reason.items():
                failures.add_metric([acct, reason], value)
            latency.add_metric([acct], *_histogram(stats, "lat", LATENCY_BUCKETS_S, "lat_sum_s"))
            e2e.add_metric([acct], *_histogram(stats, "e2e", e2e_bounds, "e2e_sum_s"))
            for (name, _, _), card in zip(_ZCARDS, cards, strict=True):
                sizes[name].add_metric([acct], float(card))
            jobs_queued.add_metric([acct], queued[acct])
            oldest_age.add_metric([acct], oldest[acct])
            until = int(pause.get("until") or 0)
            reason = pause.get("reason") or ""
            active = bool(until) and (until > now or reason == gerr.TokenInvalidError.kind)
            current = bounded(reason, PAUSE_REASONS) if active else None
            for name in PAUSE_REASONS:
                paused.add_metric([acct, name], 1.0 if name == current else 0.0)
        yield from counters.values()
        yield from (sent, failed, failures, latency, e2e)
        yield from sizes.values()
        yield from (jobs_queued, oldest_age, paused)

    def _global_metrics(
        self, now: int, registered: set[str], newest: list[tuple[str, float]], refused: Mapping[str, str]
    ) -> Iterator[Metric]:
        r = self.store.redis
        alive = int(r.zcount(self.store.keys.workers, now - HEARTBEAT_MAX_AGE_MS, "+inf"))
        workers = GaugeMetricFamily(
            "dmworker_workers_alive",
            f"Workers and dispatchers with a heartbeat in the last {HEARTBEAT_MAX_AGE_MS // 1000} s.",
            value=alive,
        )
        yield workers
        age = GaugeMetricFamily(
            "dmworker_worker_heartbeat_age_seconds",
            "Age of the newest worker or dispatcher heartbeat (no sample before the first one).",
        )
        if newest:
            age.add_metric([], max(0.0, (now - float(newest[0][1])) / 1000))
        yield age
        unconfigured = {str(a) for a in registered} - set(self.store.settings.accounts)
        yield GaugeMetricFamily(
            "dmworker_accounts_unconfigured",
            "Accounts that have had jobs but are not configured in this process (no metrics of their own).",
            value=len(unconfigured),
        )
        refusals = CounterMetricFamily(
            "dmworker_enqueue_refusals",
            "Jobs refused at enqueue, by reason (a fixed set; unknown reasons are 'other').",
            labels=["reason"],
        )
        by_reason = dict.fromkeys(REFUSAL_REASONS, 0.0)
        for field, raw in refused.items():
            by_reason[bounded(field, REFUSAL_REASONS)] += _num(raw)
        for reason, count in by_reason.items():
            refusals.add_metric([reason], count)
        yield refusals


#: Up to this many served accounts, every one gets its per-account series.
ALL_ACCOUNTS_UP_TO = 500


def active_accounts(store: LaneStore) -> list[str]:
    """The served accounts that get per-account series (see :meth:`RedisCollector.accounts`)."""
    served = store.settings.accounts
    if len(served) <= ALL_ACCOUNTS_UP_TO:
        return sorted(served)
    sec, _ = store.redis.time()
    now = int(sec) * 1000
    pipe = store.redis.pipeline(transaction=False)
    pipe.zrangebyscore(store.keys.due, "-inf", now + 3_600_000)
    pipe.zrangebyscore(store.keys.events_active, now - 3_600_000, "+inf")
    due, active = pipe.execute()
    return sorted(a for a in set(due) | set(active) if a in served)


def _merge_priorities(row: list[Any]) -> list[Any]:
    """Fold the high- and low-priority ready sets into the row's lane counts and lane sample."""
    row, (h_count, h_lanes, l_count, l_lanes) = list(row[:-4]), row[-4:]
    for i, (_, _, attr) in enumerate(_ZCARDS):
        if attr == "ready":
            row[1 + i] = int(row[1 + i]) + int(h_count) + int(l_count)
    row[-1] = (list(h_lanes) + list(row[-1]) + list(l_lanes))[:MAX_SCRAPE_LANES]
    return row


def _due_since(job_id: str, raw: str | None) -> int | None:
    """When the job of a status record became due (its due time, else its creation), epoch ms."""
    if not raw:
        return None
    try:
        st = JobStatus.from_redis(job_id, "", raw, None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return st.due_ms or st.created_ms or None


def _num(value: Any) -> float:
    """A stats value as a float (missing, empty or unreadable: 0)."""
    if value in (None, ""):
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _bounds(stats: Iterable[Mapping[str, str]], prefix: str) -> tuple[float, ...]:
    """Bucket bounds of a histogram: :data:`LATENCY_BUCKETS_S` and every ``<prefix>:<bound>`` present."""
    found = set(LATENCY_BUCKETS_S)
    for s in stats:
        for field in s:
            head, _, bound = field.partition(":")
            if head == prefix and bound and bound != "+Inf":
                try:
                    value = float(bound)
                except ValueError:
                    continue
                if math.isfinite(value) and value > 0:
                    found.add(value)
    return tuple(sorted(found))


def _histogram(
    stats: Mapping[str, str], prefix: str, bounds: Iterable[float], sum_field: str
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative buckets from the non-cumulative ``<prefix>:<bound>`` counts, and the sum."""
    buckets, total = [], 0.0
    for bound in bounds:
        total += _num(stats.get(f"{prefix}:{bound:g}"))
        buckets.append((floatToGoString(bound), total))
    total += _num(stats.get(f"{prefix}:+Inf"))
    buckets.append(("+Inf", total))
    return buckets, _num(stats.get(sum_field))


def callback_metrics(store: LaneStore, now: int) -> Iterator[Metric]:
    """Signed callbacks (:mod:`dmworker.callbacks`): outcomes, dead ones, the oldest undelivered.

    ``outcome`` is a fixed set (delivered, failed, dead); counts are (event, destination) pairs.
    """
    from ..callbacks_store import OUTCOMES, CallbackStore

    s = store.settings
    cbs = CallbackStore(store.redis, s.key_prefix, s.dlq_retention_s * 1000, s.dlq_max)
    outcomes = CounterMetricFamily(
        "dmworker_callbacks",
        "Callback deliveries by outcome: delivered (2xx), failed (an attempt, retried), dead (given up).",
        labels=["outcome"],
    )
    counts = cbs.counters()
    for outcome in OUTCOMES:
        outcomes.add_metric([outcome], counts[outcome])
    yield outcomes
    yield GaugeMetricFamily("dmworker_callbacks_dead", "Dead callbacks kept (replayable).", value=cbs.size())
    oldest = cbs.oldest_undelivered_ms(lambda a: store.acct(a).events)
    yield GaugeMetricFamily(
        "dmworker_callbacks_oldest_undelivered_age_seconds",
        "Age of the oldest event the callback deliverers have not acknowledged (0 when none).",
        value=max(0.0, (now - oldest) / 1000) if oldest is not None else 0.0,
    )


class _Forward(Collector):
    """The metrics of another registry (this process's own, :mod:`.telemetry`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def registry_for(store: LaneStore, own: CollectorRegistry | None = None) -> CollectorRegistry:
    """A registry with the cluster's metrics (read from Redis when collected) and ``own``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(store))
    registry.register(AccountsCollector(store))
    if own is not None:
        registry.register(_Forward(own))
    return registry


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    web = ctx()
    body = generate_latest(registry_for(web.store, web.telemetry.registry))
    return flask.Response(body, 200, content_type=CONTENT_TYPE_LATEST)
