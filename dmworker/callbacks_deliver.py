"""The callback deliverer: reads events as consumer group ``callbacks`` and POSTs them, signed, to
each destination (see :mod:`dmworker.callbacks` for the contract).

Isolation: each destination URL has its own queue, its own backoff and at most one batch in
flight; batches run on a bounded thread pool with a timeout, and the loop that reads events never
waits for a POST.  So a slow or failing receiver delays only its own callbacks, never sends (the
deliverer is not on the send path) and never another destination.  A destination holding
:data:`QUEUE_MAX` events takes no more: further events of its accounts stay pending in Redis and
come back through the group's claim (``claim_idle_ms``) once it has room.

An event is acknowledged (``XACK``) when every destination took it or gave it up (dead).  Events
held for a retry are re-claimed by this consumer regularly, so another deliverer of the group does
not take them while this one lives; if it dies they are claimed after ``claim_idle_ms``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import requests

from .callbacks import BACKOFF_BASE_S, BACKOFF_CAP_S, HEADER, MAX_BATCH, backoff_s, safe_url, sign
from .callbacks_store import GROUP, CallbackStore
from .events import Event, EventConsumer
from .lanes import LaneStore
from .settings import ConfigError, Settings

log = logging.getLogger("dmworker.callbacks")

#: Most events queued in memory per destination, and in all.
QUEUE_MAX = 10_000
HELD_MAX = 50_000
DEFAULT = "default"
ACCOUNT = "account"

Poster = Callable[[str, bytes, dict[str, str], float], int]


@dataclass(eq=False)
class _Held:
    """An event waiting for destinations (``left``: labels not yet done)."""

    data: dict[str, Any]
    event: Event | None  # None: a replay (not in a stream's pending list)
    left: set[str]
    origin_ms: int
    dead: set[str] = field(default_factory=set)
    reason: str = ""


@dataclass(eq=False)
class _Dest:
    url: str
    queue: deque[tuple[_Held, str]] = field(default_factory=deque)
    failures: int = 0
    next_at: float = 0.0
    busy: bool = False


class Deliverer:
    """Delivers events to ``DMWORKER_CALLBACK_URL`` and the accounts' ``callback_url``.

    Args:
        store: the lane store (settings and Redis).
        url_for: the ``callback_url`` of an account, or ``None`` (default: the account registry
            through ``settings.accounts``).
        post: ``(url, body, headers, timeout_s) -> HTTP status`` (0: no answer); default a
            ``requests.Session``.
        clock: epoch seconds (backoff times, event ages, the signature's ``t``).
        rand: the random source of the backoff jitter.
        workers: POSTs in flight at most (threads).

    Raises:
        ConfigError: ``DMWORKER_CALLBACK_SECRET`` unset, or a bad ``DMWORKER_CALLBACK_URL``.
    """

    def __init__(
        self,
        store: LaneStore,
        *,
        consumer: str | None = None,
        url_for: Callable[[str], str | None] | None = None,
        post: Poster | None = None,
        clock: Callable[[], float] = time.time,
        rand: random.Random | None = None,
        workers: int = 8,
        claim_idle_ms: int = 60_000,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        s: Settings = store.settings
        if not s.callback_secret:
            raise ConfigError("DMWORKER_CALLBACK_SECRET: required to sign callbacks")
        self.settings, self.store = s, store
        self.consumer = EventConsumer(
            GROUP,
            consumer or f"{socket.gethostname()}-{os.getpid()}",
            store=store,
            claim_idle_ms=claim_idle_ms,
        )
        self.dead = CallbackStore(store.redis, s.key_prefix, s.dlq_retention_s * 1000, s.dlq_max)
        self.url_for = url_for or _registry_urls(store)
        self._session: requests.Session | None = None
        self.post = post or self._post
        self.clock, self.rand = clock, rand or random.Random()
        self.base_s, self.cap_s = backoff_base_s, backoff_cap_s
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dmw-callback")
        self.dests: dict[str, _Dest] = {}
        self.held: dict[str, _Held] = {}
        self.inflight: dict[Future[tuple[int, str]], tuple[_Dest, list[tuple[_Held, str]]]] = {}
        self._touched = 0.0

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event, idle_s: float = 0.05) -> None:
        """Deliver until ``stop`` is set; then finish the POSTs in flight (events not yet
        delivered stay pending in Redis for the next deliverer)."""
        try:
            while not stop.is_set():
                if not self.step():
                    stop.wait(idle_s)
        finally:
            self.step(wait=True, intake=False)
            self.close()

    def step(self, wait: bool = False, intake: bool = True) -> bool:
        """One pass: take new events and replays, start due batches, settle finished ones.
        ``wait``: block until the batches in flight are settled (tests).  Returns whether anything
        happened."""
        busy = self._intake() if intake else False
        now = self.clock()
        for dest in self.dests.values():
            if dest.queue and not dest.busy and now >= dest.next_at:
                self._start(dest)
                busy = True
        if wait and self.inflight:
            wait_futures(list(self.inflight))
        for fut in [f for f in self.inflight if f.done()]:
            self._settle(fut)
            busy = True
        self._touch()
        return busy

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self._session is not None:
            self._session.close()

    # ------------------------------------------------------------------ intake
    def _intake(self) -> bool:
        now_ms = int(self.clock() * 1000)
        got = False
        for dc in self.dead.take_replays(now_ms):
            if f"replay:{dc.id}" in self.held:
                continue
            labels = {lbl for lbl in dc.to if self._url(lbl, dc.account)}
            h = _Held(dc.event, None, labels, now_ms)
            if not labels:  # no URL for it any more: it stays dead
                h.dead, h.reason = set(dc.to), "no destination configured"
            self.held[f"replay:{dc.id}"] = h
            self._route(h, dc.account)
            got = True
        if len(self.held) >= HELD_MAX:
            return got
        for e in self.consumer.poll(MAX_BATCH):
            if e.id in self.held:  # claimed again while held here
                continue
            got = True
            labels = {lbl for lbl in (DEFAULT, ACCOUNT) if self._url(lbl, e.account)}
            dests = {self._url(lbl, e.account) for lbl in labels}
            if any(len(self._dest(u).queue) >= QUEUE_MAX for u in dests if u):
                continue  # left pending: the group's claim brings it back later
            h = _Held(e.data, e, labels, int(e.data.get("created_ms") or now_ms))
            self.held[e.id] = h
            self._route(h, e.account)
        self._finish([h for h in list(self.held.values()) if not h.left])
        return got

    def _url(self, label: str, account: str) -> str | None:
        default = self.settings.callback_url
        if label == DEFAULT:
            return default
        url = self.url_for(account)
        return url if url and url != default else None

    def _dest(self, url: str) -> _Dest:
        dest = self.dests.get(url)
        if dest is None:
            dest = self.dests[url] = _Dest(url)
        return dest

    def _route(self, h: _Held, account: str) -> None:
        for label in sorted(h.left):
            url = self._url(label, account)
            if url is None:
                h.left.discard(label)
            else:
                self._dest(url).queue.append((h, label))

    # ------------------------------------------------------------------ POST
    def _start(self, dest: _Dest) -> None:
        batch = [dest.queue.popleft() for _ in range(min(MAX_BATCH, len(dest.queue)))]
        batch.sort(key=lambda item: _order(item[0].data))
        body = json.dumps({"events": [h.data for h, _ in batch]}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", HEADER: sign(body, self._secret, int(self.clock()))}
        dest.busy = True
        fut = self.pool.submit(self._call, dest.url, body, headers)
        self.inflight[fut] = (dest, batch)

    @property
    def _secret(self) -> str:
        return self.settings.callback_secret or ""

    def _call(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        try:
            status = self.post(url, body, headers, self.settings.callback_timeout_s)
        except Exception as e:  # never the URL or the message: either may carry a secret
            return 0, type(e).__name__
        return status, f"HTTP {status}" if status else "no answer"

    def _post(self, url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
        if self._session is None:
            self._session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_maxsize=self.pool._max_workers)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
        s = self.settings
        try:
            resp = self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=(s.http_connect_timeout_s, timeout_s),
                allow_redirects=False,
            )
        except requests.Timeout:
            raise TimeoutError("timeout") from None
        resp.close()
        return resp.status_code

    def _settle(self, fut: Future[tuple[int, str]]) -> None:
        dest, batch = self.inflight.pop(fut)
        dest.busy = False
        status, reason = fut.result()
        now = self.clock()
        if 200 <= status < 300:
            dest.failures, dest.next_at = 0, 0.0
            for h, label in batch:
                h.left.discard(label)
            self.dead.count("delivered", len(batch))
        else:
            dest.failures += 1
            dest.next_at = now + backoff_s(dest.failures, self.rand, self.base_s, self.cap_s)
            self.dead.count("failed", len(batch))
            log.warning("callback to %s failed (%s): %d events, retry in %.1f s", safe_url(dest.url),
                        reason, len(batch), dest.next_at - now)  # fmt: skip
            max_age_ms = self.settings.callback_max_age_s * 1000
            expired = [(h, lbl) for h, lbl in batch if now * 1000 - h.origin_ms >= max_age_ms]
            while dest.queue and now * 1000 - dest.queue[0][0].origin_ms >= max_age_ms:
                expired.append(dest.queue.popleft())
            kept = [item for item in batch if item not in expired]
            dest.queue.extendleft(reversed(kept))
            for h, label in expired:
                h.left.discard(label)
                h.dead.add(label)
                h.reason = reason
            self.dead.count("dead", len(expired))
        self._finish([h for h, _ in batch] + [h for h in self.held.values() if not h.left])

    def _finish(self, done: list[_Held]) -> None:
        """Acknowledge (or forget the replay of) events every destination is done with."""
        now_ms = int(self.clock() * 1000)
        acks, replays = [], []
        for h in {id(h): h for h in done if not h.left}.values():
            if h.dead:
                self.dead.bury(h.data, h.dead, h.reason, now_ms)
            key = h.event.id if h.event is not None else f"replay:{h.data.get('id')}"
            if self.held.pop(key, None) is None:
                continue
            if h.event is not None:
                acks.append(h.event)
            elif not h.dead:
                replays.append(str(h.data.get("id")))
        if acks:
            self.consumer.ack(acks)
        self.dead.done(replays)

    def _touch(self) -> None:
        """Re-claim the events held here, so no other deliverer of the group claims them."""
        now = time.monotonic()
        if now - self._touched < self.consumer.claim_idle_ms / 3000:
            return
        self._touched = now
        by_account: dict[str, list[str]] = {}
        for h in self.held.values():
            if h.event is not None:
                by_account.setdefault(h.event.account, []).append(h.event.entry)
        pipe = self.store.redis.pipeline(transaction=False)
        for account, entries in by_account.items():
            key = self.store.acct(account).events
            pipe.xclaim(key, GROUP, self.consumer.consumer, 0, entries, justid=True)
        if by_account:
            pipe.execute(raise_on_error=False)


def _order(data: dict[str, Any]) -> tuple[int, int]:
    """Sort key of an event: its stream entry (``<account>/<ms>-<seq>``), i.e. oldest first."""
    ms, _, seq = str(data.get("id", "")).rpartition("/")[2].partition("-")
    return (int(ms) if ms.isdigit() else 0, int(seq) if seq.isdigit() else 0)


def _registry_urls(store: LaneStore) -> Callable[[str], str | None]:
    """``callback_url`` of an account from the registry (the live view when the runtime has one)."""
    accounts: Any = store.settings.accounts
    if not hasattr(accounts, "record"):
        from .runtime import live_settings

        accounts = live_settings(store.settings, store.redis).accounts

    def url_for(account: str) -> str | None:
        rec = accounts.record(account)
        return rec.callback_url if rec is not None else None

    return url_for


def start_deliverer(store: LaneStore, stop: threading.Event) -> threading.Thread:
    """Run a :class:`Deliverer` in a daemon thread until ``stop`` is set (``dmworker scheduler``)."""
    deliverer = Deliverer(store)
    t = threading.Thread(target=deliverer.run, args=(stop,), name="dmw-callbacks", daemon=True)
    t.start()
    return t
