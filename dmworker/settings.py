"""One frozen settings object, read from the environment once, at the edge.

Every setting is an environment variable ``DMWORKER_*``; units are part of the names
(``_s`` seconds, ``_ms`` milliseconds).  :func:`Settings.from_env` raises
:class:`ConfigError` naming the variable and what it expected when a value is bad, so a
process fails at start instead of at its first send.

Tokens of the static accounts (environment, accounts file) live here and are never written to
Redis, to a job payload, to a log line or to an error message (``repr`` of an
:class:`AccountConfig` hides them). Accounts added at run time live in the registry
(:mod:`dmworker.registry`, tokens encrypted); the runtime puts a live view of both in
``Settings.accounts`` (:class:`dmworker.live.LiveAccounts`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import DmworkerError

DEFAULT_GRAPH_URL = "https://graph.instagram.com/v25.0"
DEFAULT_FACEBOOK_GRAPH_URL = "https://graph.facebook.com/v25.0"
LOGINS = ("instagram", "facebook")

RATE_CLASSES = ("text", "media", "private_reply", "conversations")
DEFAULT_RATES = {
    "text": "100/s",
    "media": "10/s",
    "private_reply": "750/h",
    "conversations": "2/s",
}

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|m|min|h|hour)\s*$")
_PERIOD_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}


class ConfigError(DmworkerError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Rate:
    """A rate limit: ``count`` calls per ``period_s`` seconds (parsed from ``"N/s"``)."""

    count: float
    period_s: float

    @property
    def interval_us(self) -> int:
        """Microseconds between two calls at the steady rate."""
        return max(1, round(self.period_s * 1_000_000 / self.count))

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h"}.get(int(self.period_s), f"{self.period_s}s")
        count = int(self.count) if float(self.count).is_integer() else self.count
        return f"{count}/{unit}"


def parse_rate(value: str, name: str = "rate") -> Rate:
    """Parse a Celery-style rate string (``"100/s"``, ``"750/h"``, ``"30/5m"``).

    Raises:
        ConfigError: naming ``name`` when the string is not of that form or is not positive.
    """
    m = _RATE_RE.match(str(value))
    if not m:
        raise ConfigError(f"{name}: expected a rate like '100/s', '30/m' or '750/h', got {value!r}")
    count = float(m.group(1))
    mult = int(m.group(2)) if m.group(2) else 1
    if count <= 0 or mult <= 0:
        raise ConfigError(f"{name}: the rate must be positive, got {value!r}")
    return Rate(count=count, period_s=float(_PERIOD_S[m.group(3)] * mult))


@functools.lru_cache(maxsize=256)
def token_fingerprint(token: str) -> str:
    """A short, non-reversible fingerprint of a token (safe to store and log)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AccountConfig:
    """One Instagram professional account: its token and per-account overrides.

    ``login`` is how the business connected it: ``instagram`` (Instagram Login: an Instagram user
    token, graph.instagram.com, sends to ``/<ig id>/messages``) or ``facebook`` (Facebook Login: the
    linked Page's access token, graph.facebook.com, sends to ``/<page_id>/messages``).
    """

    account_id: str
    access_token: str = field(repr=False)
    graph_url: str | None = None
    rates: Mapping[str, Rate] = field(default_factory=dict)
    burst: int | None = None
    login: str = "instagram"
    page_id: str | None = None
    max_backlog_s: float | None = None  # this account's DMWORKER_MAX_BACKLOG_S (None: the global one)

    @property
    def fingerprint(self) -> str:
        return token_fingerprint(self.access_token)

    @property
    def path_id(self) -> str:
        """The id in Graph paths: the Page id for Facebook Login, else the account id."""
        if self.login == "facebook" and self.page_id:
            return self.page_id
        return self.account_id

    def __repr__(self) -> str:  # never show the token
        return f"AccountConfig(account_id={self.account_id!r}, token=<redacted {self.fingerprint}>)"


@dataclass(frozen=True)
class Settings:
    """Everything a dmworker process needs; build it with :meth:`from_env`."""

    redis_url: str | None = None
    key_prefix: str = "dmw"
    broker_url: str | None = None
    data_dir: str = str(Path.home() / ".local" / "share" / "dmworker")
    graph_url: str = DEFAULT_GRAPH_URL
    accounts: Mapping[str, AccountConfig] = field(default_factory=dict)
    default_account: str | None = None
    http_connect_timeout_s: float = 3.05
    http_read_timeout_s: float = 10.0
    http_pool_size: int = 64
    lease_ms: int = 30_000
    dispatch_grace_ms: int = 30_000
    max_attempts: int = 8
    max_age_s: float = 86_400.0
    backoff_base_ms: int = 1_000
    backoff_cap_ms: int = 300_000
    throttle_pause_s: float = 60.0
    policy_block_pause_s: float = 3_600.0
    rates: Mapping[str, Rate] = field(
        default_factory=lambda: {k: parse_rate(v) for k, v in DEFAULT_RATES.items()}
    )
    rate_burst: int = 5
    usage_slowdown_pct: int = 80
    thread_min_interval_ms: int = 0
    window_policy: str = "auto"
    retention_s: int = 7 * 86_400
    dlq_retention_s: int = 30 * 86_400
    dlq_max: int = 100_000
    usage_decay_s: float = 300.0
    events_retention_s: int = 86_400
    admit_window_s: float = 1.0
    admit_poll_ms: int = 10
    max_in_flight: int = 64
    max_backlog_s: float = 21_600.0
    scheduler_tick_ms: int = 50
    embedded_scheduler: bool = True
    lane_batch: int = 50
    worker_concurrency: int = 32
    worker_pool: str = "threads"
    verify_token: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    event_task: str | None = None
    event_queue: str = "celery"
    event_callback: str | None = None
    max_body_bytes: int = 1_048_576
    log_format: str = "plain"
    log_level: str = "INFO"
    # accounts and tokens
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    facebook_graph_url: str = DEFAULT_FACEBOOK_GRAPH_URL
    accounts_refresh_s: float = 1.0
    token_refresh_before_s: float = 7 * 86_400.0
    token_refresh_check_s: float = 3_600.0
    # callbacks
    callback_url: str | None = field(default=None, repr=False)
    callback_secret: str | None = field(default=None, repr=False)
    callback_max_age_s: float = 86_400.0
    callback_timeout_s: float = 10.0

    # ------------------------------------------------------------------ lookups
    def account(self, account_id: str | None = None) -> AccountConfig:
        """The configuration of ``account_id`` (or of the default account).

        Raises:
            ConfigError: when no such account is configured.
        """
        acct = account_id or self.default_account
        if acct is None:
            raise ConfigError(
                "no account given and none configured: set DMWORKER_ACCOUNT_ID and "
                "DMWORKER_ACCESS_TOKEN, or DMWORKER_ACCOUNTS_FILE"
            )
        try:
            return self.accounts[acct]
        except KeyError:
            raise ConfigError(f"account {acct!r} is not configured") from None

    def rate_for(self, account_id: str, klass: str) -> Rate:
        """The rate limit of ``klass`` for ``account_id`` (account override first)."""
        acct = self.accounts.get(account_id)
        if acct is not None and klass in acct.rates:
            return acct.rates[klass]
        return self.rates[klass]

    def burst_for(self, account_id: str) -> int:
        """The configured burst of ``account_id``: Meta sees at most rate x T + burst in any T."""
        acct = self.accounts.get(account_id)
        if acct is not None and acct.burst is not None:
            return acct.burst
        return self.rate_burst

    def decision_burst_for(self, account_id: str) -> int:
        """The burst the limiter decides with: one less than configured (when it is 2 or more).

        The slot held back absorbs the time between the limiter's decision and the request reaching
        Meta (thread scheduling, connection reuse): decisions keep to rate x T + burst - 1, so the
        requests as Meta receives them keep to rate x T + burst even when one arrives late.
        """
        burst = self.burst_for(account_id)
        return burst - 1 if burst >= 2 else burst

    def send_rate_per_s(self, account_id: str) -> float:
        """Sends per second ``account_id`` can make at its fastest rate class."""
        return max(
            self.rate_for(account_id, k).count / self.rate_for(account_id, k).period_s for k in RATE_CLASSES
        )

    def backlog_limit(self, account_id: str) -> int:
        """How many due jobs ``account_id`` may have queued: what it can send in its
        ``max_backlog_s`` (the account's own, else DMWORKER_MAX_BACKLOG_S); 0 = no limit."""
        acct = self.accounts.get(account_id)
        own = getattr(acct, "max_backlog_s", None) if acct is not None else None
        seconds = self.max_backlog_s if own is None else own
        if seconds <= 0:
            return 0
        return max(1, math.ceil(self.send_rate_per_s(account_id) * seconds))

    def admit_budget(self, account_id: str) -> int:
        """How many lanes ``account_id`` may have in play — a message outstanding on the broker, or held
        by a worker: what it can send in ``admit_window_s`` at its fastest rate, at most
        ``max_in_flight``, at least 4; 0 = no limit (window 0).

        Fairness between accounts: one account's backlog never puts more than this many messages
        ahead of another account's in the queue, nor holds more than this many worker threads.
        """
        if self.admit_window_s <= 0:
            return 0
        per_s = self.send_rate_per_s(account_id)
        return max(4, min(self.max_in_flight, math.ceil(per_s * self.admit_window_s)))

    def graph_url_for(self, account_id: str) -> str:
        """The Graph base URL of ``account_id``: its own override, else the host of its login."""
        acct = self.accounts.get(account_id)
        if acct is not None and acct.graph_url:
            return acct.graph_url.rstrip("/")
        if acct is not None and acct.login == "facebook":
            return self.facebook_graph_url.rstrip("/")
        return self.graph_url.rstrip("/")

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (tests, CLI flags)."""
        return replace(self, **changes)

    # --------------------------------------------------------------- building
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every ``DMWORKER_*`` variable once.

        Raises:
            ConfigError: naming the variable and what it expected, for any bad value.
        """
        e = dict(os.environ if env is None else env)
        r = _Reader(e)
        rates = {k: parse_rate(DEFAULT_RATES[k]) for k in RATE_CLASSES}
        for k in RATE_CLASSES:
            var = f"DMWORKER_RATE_{k.upper()}"
            if e.get(var):
                rates[k] = parse_rate(e[var], var)
        accounts: dict[str, AccountConfig] = {}
        default_account = r.str_("DMWORKER_ACCOUNT_ID")
        token = r.str_("DMWORKER_ACCESS_TOKEN")
        if token and not default_account:
            default_account = "me"
        if default_account:
            check_hash_tag_safe(default_account, "DMWORKER_ACCOUNT_ID")
        if default_account and token:
            accounts[default_account] = AccountConfig(default_account, token)
        path = r.str_("DMWORKER_ACCOUNTS_FILE")
        if path:
            for acct in _load_accounts_file(path):
                accounts[acct.account_id] = acct
        if default_account is None and len(accounts) == 1:
            default_account = next(iter(accounts))
        policy = r.choice_("DMWORKER_WINDOW_POLICY", ("auto", "enforce", "trust"), "auto")
        read_timeout = r.float_("DMWORKER_HTTP_READ_TIMEOUT_S", 10.0)
        lease_ms = r.int_("DMWORKER_LEASE_MS", 30_000)
        if lease_ms < read_timeout * 1000 * 1.5:
            raise ConfigError(
                f"DMWORKER_LEASE_MS: expected at least 1.5 x DMWORKER_HTTP_READ_TIMEOUT_S "
                f"({int(read_timeout * 1500)} ms), got {lease_ms}"
            )
        tokens = _api_tokens(r.str_("DMWORKER_API_TOKENS"))
        events_keep = r.int_("DMWORKER_EVENTS_RETENTION_S", 86_400, minimum=0)
        callback_age = r.float_("DMWORKER_CALLBACK_MAX_AGE_S", 86_400.0)
        if r.str_("DMWORKER_CALLBACK_URL") and callback_age > events_keep:
            raise ConfigError(
                f"DMWORKER_CALLBACK_MAX_AGE_S: expected at most DMWORKER_EVENTS_RETENTION_S "
                f"({events_keep} s): an event must outlive its delivery attempts, got {callback_age:g}"
            )
        return cls(
            redis_url=_redis_url(r.str_("DMWORKER_REDIS_URL"), r.str_("DMWORKER_BROKER_URL")),
            key_prefix=_key_prefix(r.str_("DMWORKER_KEY_PREFIX") or "dmw"),
            broker_url=r.str_("DMWORKER_BROKER_URL"),
            data_dir=r.str_("DMWORKER_DATA_DIR") or str(Path.home() / ".local" / "share" / "dmworker"),
            graph_url=(r.str_("DMWORKER_GRAPH_URL") or DEFAULT_GRAPH_URL).rstrip("/"),
            accounts=accounts,
            default_account=default_account,
            http_connect_timeout_s=r.float_("DMWORKER_HTTP_CONNECT_TIMEOUT_S", 3.05),
            http_read_timeout_s=read_timeout,
            http_pool_size=r.int_("DMWORKER_HTTP_POOL_SIZE", 64),
            lease_ms=lease_ms,
            dispatch_grace_ms=r.int_("DMWORKER_DISPATCH_GRACE_MS", 30_000),
            max_attempts=r.int_("DMWORKER_MAX_ATTEMPTS", 8),
            max_age_s=r.float_("DMWORKER_MAX_AGE_S", 86_400.0),
            backoff_base_ms=r.int_("DMWORKER_BACKOFF_BASE_MS", 1_000),
            backoff_cap_ms=r.int_("DMWORKER_BACKOFF_CAP_MS", 300_000),
            throttle_pause_s=r.float_("DMWORKER_THROTTLE_PAUSE_S", 60.0),
            policy_block_pause_s=r.float_("DMWORKER_POLICY_BLOCK_PAUSE_S", 3_600.0),
            rates=rates,
            rate_burst=r.int_("DMWORKER_RATE_BURST", 5, minimum=1),
            usage_slowdown_pct=r.int_("DMWORKER_USAGE_SLOWDOWN_PCT", 80),
            thread_min_interval_ms=r.int_("DMWORKER_THREAD_MIN_INTERVAL_MS", 0, minimum=0),
            window_policy=policy,
            retention_s=r.int_("DMWORKER_RETENTION_S", 7 * 86_400),
            dlq_retention_s=r.int_("DMWORKER_DLQ_RETENTION_S", 30 * 86_400),
            dlq_max=r.int_("DMWORKER_DLQ_MAX", 100_000),
            usage_decay_s=r.float_("DMWORKER_USAGE_DECAY_S", 300.0),
            events_retention_s=events_keep,
            admit_window_s=r.float_("DMWORKER_ADMIT_WINDOW_S", 1.0, minimum=0.0),
            admit_poll_ms=r.int_("DMWORKER_ADMIT_POLL_MS", 10),
            max_in_flight=r.int_("DMWORKER_MAX_IN_FLIGHT", 64),
            max_backlog_s=r.float_("DMWORKER_MAX_BACKLOG_S", 21_600.0, minimum=0.0),
            scheduler_tick_ms=r.int_("DMWORKER_SCHEDULER_TICK_MS", 50),
            embedded_scheduler=r.bool_("DMWORKER_EMBEDDED_SCHEDULER", True),
            lane_batch=r.int_("DMWORKER_LANE_BATCH", 50),
            worker_concurrency=r.int_("DMWORKER_WORKER_CONCURRENCY", 32),
            worker_pool=r.choice_(
                "DMWORKER_WORKER_POOL", ("threads", "gevent", "prefork", "solo"), "threads"
            ),
            verify_token=r.str_("DMWORKER_VERIFY_TOKEN"),
            app_secret=r.str_("DMWORKER_APP_SECRET"),
            api_tokens=tokens,
            event_task=r.str_("DMWORKER_EVENT_TASK"),
            event_queue=r.str_("DMWORKER_EVENT_QUEUE") or "celery",
            event_callback=r.str_("DMWORKER_EVENT_CALLBACK"),
            max_body_bytes=r.int_("DMWORKER_MAX_BODY_BYTES", 1_048_576),
            log_format=r.choice_("DMWORKER_LOG_FORMAT", ("plain", "json"), "plain"),
            log_level=r.choice_(
                "DMWORKER_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", upper=True
            ),
            # accounts and tokens
            secret_keys=_secret_keys(r.str_("DMWORKER_SECRET_KEY")),
            facebook_graph_url=(r.str_("DMWORKER_FACEBOOK_GRAPH_URL") or DEFAULT_FACEBOOK_GRAPH_URL).rstrip(
                "/"
            ),
            accounts_refresh_s=r.float_("DMWORKER_ACCOUNTS_REFRESH_S", 1.0),
            token_refresh_before_s=r.float_("DMWORKER_TOKEN_REFRESH_BEFORE_S", 7 * 86_400.0),
            token_refresh_check_s=r.float_("DMWORKER_TOKEN_REFRESH_CHECK_S", 3_600.0),
            # callbacks
            callback_url=_callback_url(r.str_("DMWORKER_CALLBACK_URL"), r.str_("DMWORKER_CALLBACK_SECRET")),
            callback_secret=r.str_("DMWORKER_CALLBACK_SECRET"),
            callback_max_age_s=callback_age,
            callback_timeout_s=r.float_("DMWORKER_CALLBACK_TIMEOUT_S", 10.0),
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str_(self, name: str) -> str | None:
        v = self.env.get(name)
        return v if v not in (None, "") else None

    def int_(self, name: str, default: int, minimum: int = 1) -> int:
        v = self.str_(name)
        if v is None:
            return default
        try:
            out = int(v)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {v!r}") from None
        if out < minimum:
            raise ConfigError(f"{name}: expected an integer >= {minimum}, got {v!r}")
        return out

    def float_(self, name: str, default: float, minimum: float | None = None) -> float:
        """A number above 0 (or at least ``minimum`` when given)."""
        v = self.str_(name)
        if v is None:
            return default
        try:
            out = float(v)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {v!r}") from None
        if minimum is not None:
            if not out >= minimum:
                raise ConfigError(f"{name}: expected a number >= {minimum:g}, got {v!r}")
        elif not out > 0:
            raise ConfigError(f"{name}: expected a positive number, got {v!r}")
        return out

    def bool_(self, name: str, default: bool) -> bool:
        v = self.str_(name)
        if v is None:
            return default
        low = v.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {v!r}")

    def choice_(self, name: str, options: tuple[str, ...], default: str, upper: bool = False) -> str:
        v = self.str_(name)
        if v is None:
            return default
        v = v.upper() if upper else v.lower()
        if v not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {v!r}")
        return v


def _load_accounts_file(path: str) -> list[AccountConfig]:
    var = "DMWORKER_ACCOUNTS_FILE"
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{var}: file {path!r} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{var}: expected a JSON object in {path!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{var}: expected a JSON object of account id -> settings in {path!r}")
    out = []
    for acct_id, conf in raw.items():
        where = f"{var} ({path}) account {acct_id!r}"
        check_hash_tag_safe(acct_id, where)
        if not isinstance(conf, dict) or not isinstance(conf.get("access_token"), str):
            raise ConfigError(f"{where}: expected an object with a string 'access_token'")
        known = {"access_token", "graph_url", "rates", "burst", "login", "page_id", "max_backlog_s"}
        unknown = set(conf) - known
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        rates = {}
        for k, v in (conf.get("rates") or {}).items():
            if k not in RATE_CLASSES:
                raise ConfigError(f"{where}: unknown rate class {k!r} (one of {RATE_CLASSES})")
            rates[k] = parse_rate(v, f"{where} rates.{k}")
        burst = conf.get("burst")
        if burst is not None and (not isinstance(burst, int) or burst < 1):
            raise ConfigError(f"{where}: 'burst' must be an integer >= 1")
        backlog = conf.get("max_backlog_s")
        if backlog is not None and (
            not isinstance(backlog, (int, float)) or isinstance(backlog, bool) or not backlog >= 0
        ):
            raise ConfigError(f"{where}: 'max_backlog_s' must be a number of seconds >= 0")
        login, page_id = conf.get("login", "instagram"), conf.get("page_id")
        if login not in LOGINS:
            raise ConfigError(f"{where}: 'login' must be one of {', '.join(LOGINS)}")
        if login == "facebook" and not (isinstance(page_id, str) and page_id):
            raise ConfigError(f"{where}: a facebook login needs 'page_id' (the linked Page's id)")
        out.append(
            AccountConfig(
                account_id=str(acct_id),
                access_token=conf["access_token"],
                graph_url=conf.get("graph_url"),
                rates=rates,
                burst=burst,
                login=login,
                page_id=page_id,
                max_backlog_s=None if backlog is None else float(backlog),
            )
        )
    return out


def _api_tokens(value: str | None) -> tuple[str, ...]:
    """``DMWORKER_API_TOKENS`` split on commas, each entry checked (``token`` or ``token:role[:a|b]``).

    Raises:
        ConfigError: naming the variable and the entry's position (never the token).
    """
    from .scopes import parse_entries

    tokens = tuple(t.strip() for t in (value or "").split(",") if t.strip())
    try:
        parse_entries(tokens)
    except ValueError as e:
        raise ConfigError(f"DMWORKER_API_TOKENS: {e}") from None
    return tokens


def _secret_keys(value: str | None) -> tuple[str, ...]:
    """``DMWORKER_SECRET_KEY``: one or more Fernet keys, comma-separated (the first encrypts).

    Raises:
        ConfigError: when a key is not a urlsafe-base64 32-byte Fernet key.
    """
    import base64
    import binascii

    keys = tuple(k.strip() for k in (value or "").split(",") if k.strip())
    for n, key in enumerate(keys, 1):
        try:
            ok = len(base64.urlsafe_b64decode(key.encode())) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise ConfigError(
                f"DMWORKER_SECRET_KEY: key {n} is not a Fernet key (32 urlsafe-base64 bytes; "
                "make one with `dmworker accounts new-key`)"
            )
    return keys


def _callback_url(url: str | None, secret: str | None) -> str | None:
    """``DMWORKER_CALLBACK_URL`` checked (an error never shows a password or a query string).

    Raises:
        ConfigError: not an http(s) URL with a host, or no ``DMWORKER_CALLBACK_SECRET`` to sign with.
    """
    if url is None:
        return None
    from .callbacks import check_url

    problem = check_url(url)
    if problem:
        raise ConfigError(f"DMWORKER_CALLBACK_URL: {problem}")
    if not secret:
        raise ConfigError("DMWORKER_CALLBACK_SECRET: required when DMWORKER_CALLBACK_URL is set")
    return url


def check_hash_tag_safe(value: str, name: str) -> str:
    """``value`` if it holds no ``{`` or ``}``: one account's keys share the hash tag
    ``{<account>}`` (and the prefix comes before it), so a brace would move keys of one account to
    different Redis Cluster slots.

    Raises:
        ConfigError: naming ``name``, when ``value`` contains ``{`` or ``}``.
    """
    if "{" in value or "}" in value:
        raise ConfigError(
            f"{name}: must not contain '{{' or '}}' (they would break the hash tag), got {value!r}"
        )
    return value


def _key_prefix(prefix: str) -> str:
    """``DMWORKER_KEY_PREFIX`` checked.

    Raises:
        ConfigError: a prefix with ``{`` or ``}``.
    """
    return check_hash_tag_safe(prefix, "DMWORKER_KEY_PREFIX")


def _redis_url(url: str | None, broker: str | None) -> str | None:
    """``DMWORKER_REDIS_URL`` checked at start (:func:`dmworker.redisconn.parse_redis_url`); a Redis
    Cluster needs ``DMWORKER_BROKER_URL``.  Errors never show the URL's password.

    Raises:
        ConfigError: an unknown scheme or a malformed Sentinel/Cluster URL; a cluster without a
            separate broker.
    """
    if url is None:
        return None
    from .redisconn import check_broker, check_redis_url

    check_redis_url(url)
    check_broker(Settings(redis_url=url, broker_url=broker))
    return url
