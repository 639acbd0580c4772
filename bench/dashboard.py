"""Dashboard page times at size, beside the same question asked through the HTTP API.

    cd bench && ../.venv/bin/python dashboard.py [--jobs 1000000] [--dead 200000] [--accounts 200]

Fills its own key prefix on ``DMWB_REDIS_URL`` (default DB 14) with ``--jobs`` ended jobs in
retention, ``--dead`` of them dead letters, over ``--accounts`` accounts (half of everything on the
first account, the rest spread evenly), then times each dashboard page and its HTTP API
counterpart over real HTTP (``dmworker web`` in a server thread, ``requests``), 30 times each, and
prints p50 / p95 / max in ms.  The records are written directly, in the formats the Lua scripts
write (status, payload, retention and dead-letter sets, the search index from
:func:`dmworker.jobindex.members`: the same strings the scripts write, checked by
tests/test_jobindex.py), because a million real sends take too long to set up; the bulk-replay line
replays real dead letters through the real scripts.  Deletes its keys at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import threading
import time
from typing import Any

import common as c
import requests
from werkzeug.serving import make_server

from dmworker import dashboard, jobindex
from dmworker.keys import Keys
from dmworker.settings import Settings
from dmworker.web import create_app

ADMIN = "bench-admin-token-0123456789abcdef"
KINDS = ("outside_window", "attempts_exhausted", "invalid_request", "recipient_unavailable")
HOUR_MS = 3_600_000


def fill(r: Any, prefix: str, n_jobs: int, n_dead: int, n_accounts: int) -> tuple[list[str], dict[str, Any]]:
    """Write the jobs; returns the accounts and a few known values to search for."""
    keys = Keys(prefix)
    accounts = [f"178414{i:011d}" for i in range(1, n_accounts + 1)]
    now = int(time.time() * 1000)
    share = [n_jobs // 2] + [max(1, (n_jobs - n_jobs // 2) // (n_accounts - 1))] * (n_accounts - 1)
    dead_share = [n_dead // 2] + [max(0, (n_dead - n_dead // 2) // (n_accounts - 1))] * (n_accounts - 1)
    known: dict[str, Any] = {}
    r.sadd(keys.accounts, *accounts)
    written = 0
    for a, n, nd in zip(accounts, share, dead_share, strict=True):
        k = keys.account(a)
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            jid = f"{a}.{i:08x}{random.getrandbits(32):08x}"
            lane = str(6_000_000 + (i % max(1, n // 4)))  # about 4 jobs per recipient
            created = now - HOUR_MS * 24 + (i * 86_000 // max(n, 1)) * 1000
            dead = i < nd
            err = {"kind": KINDS[i % len(KINDS)], "message": "refused"} if dead else None
            rec: dict[str, Any] = {
                "state": "failed" if dead else "sent",
                "attempts": 1,
                "rate_class": "text",
                "kind": "text",
                "lane": lane,
                "created_ms": created,
                "updated_ms": created + 1000,
                "due_ms": created,
                "ended_ms": created + 1000,
                "history": [[created, "accepted", ""], [created + 1000, "failed" if dead else "sent", ""]],
            }
            if dead:
                rec.update(error=err, dead_lettered=True)
            else:
                rec["message_id"] = f"m_{jid}"
            if i % 50 == 0:
                rec["key"] = f"nudge-{lane}"
            pipe.hset(k.status, jid, json.dumps(rec, separators=(",", ":")))
            pipe.hset(k.jobs, jid, json.dumps({"kind": "text", "text": f"hello {i}"}))
            if dead:
                pipe.zadd(k.dlq, {jid: created + 1000})
            else:
                pipe.zadd(k.done, {jid: created + 1000})
                pipe.hset(k.mids, rec["message_id"], jid)
            pipe.zadd(k.index, dict.fromkeys(jobindex.members(jid, rec), 0))
            if a == accounts[0] and i == n // 2:
                known.update(job=jid, recipient=lane, mid=rec.get("message_id"))
            if len(pipe) >= 20_000:
                pipe.execute()
        pipe.execute()
        written += n
        if a == accounts[0] or written % 100_000 < n:
            c.say(f"filled {written:,} jobs")
    return accounts, known


class Timer:
    def __init__(self, base: str, session: requests.Session) -> None:
        self.base, self.s = base, session
        self.rows: list[dict[str, Any]] = []

    def time(
        self, label: str, path: str, headers: dict[str, str] | None = None, n: int = 30, before: Any = None
    ) -> None:
        times = []
        for _ in range(n):
            if before is not None:
                before()
            t0 = time.perf_counter()
            resp = self.s.get(self.base + path, headers=headers or {}, allow_redirects=False, timeout=60)
            times.append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
        times.sort()
        row = {
            "what": label,
            "path": path,
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
            "max_ms": round(times[-1], 1),
        }
        self.rows.append(row)
        c.say(f"{label:55s} p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--dead", type=int, default=200_000)
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--idle-accounts", type=int, default=100_000, help="more accounts, without jobs")
    a = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    r = c.rdb()
    prefix = c.new_prefix("ui")
    settings = Settings.from_env({}).with_overrides(
        redis_url=c.REDIS_URL, key_prefix=prefix, api_tokens=(ADMIN,), events_retention_s=0
    )
    try:
        t0 = time.monotonic()
        accounts, known = fill(r, prefix, a.jobs, a.dead, a.accounts)
        c.say(
            f"filled in {time.monotonic() - t0:.0f} s; "
            f"Redis used_memory {r.info('memory')['used_memory_human']}"
        )
        ix = r.memory_usage(Keys(prefix).account(accounts[0]).index, samples=0) or 0
        n0 = r.hlen(Keys(prefix).account(accounts[0]).status)
        c.say(f"search index of the first account: {ix / n0:.0f} B per job ({n0:,} jobs)")
        app = create_app(settings, redis_client=r, publish=lambda acct, lane: None)
        srv = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_port}"
        ui = requests.Session()
        page = ui.get(base + "/ui/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        ui.post(base + "/ui/login", data={"token": ADMIN, "csrf": nonce}, allow_redirects=False)
        api = requests.Session()
        bearer = {"Authorization": f"Bearer {ADMIN}"}
        big = accounts[0]
        t_ui, t_api = Timer(base, ui), Timer(base, api)
        t_ui.time("overview (50 accounts of the page)", "/ui/")
        t_api.time("API: accounts, first page of 500 (GET /v1/accounts)", "/v1/accounts", bearer)
        t_ui.time(
            "jobs of a recipient (account of 500k jobs)",
            f"/ui/jobs?account={big}&recipient={known['recipient']}",
        )
        t_ui.time("jobs by message id (one account)", f"/ui/jobs?account={big}&message_id={known['mid']}")
        t_api.time(
            "API: job by message id (one account)",
            f"/v1/jobs?account={big}&message_id={known['mid']}",
            bearer,
        )
        t_ui.time("jobs by message id (every account)", f"/ui/jobs?message_id={known['mid']}")
        t_api.time("API: job by message id (every account)", f"/v1/jobs?message_id={known['mid']}", bearer)
        t_ui.time("jobs by state sent, newest (500k account)", f"/ui/jobs?account={big}&state=sent")
        t_ui.time(
            "jobs, recipient + state (filtered)",
            f"/ui/jobs?account={big}&recipient={known['recipient']}&state=dead",
        )
        t_ui.time("job page with timeline", f"/ui/jobs/{known['job']}")
        t_api.time("API: job status", f"/v1/jobs/{known['job']}", bearer)
        t_ui.time(
            "dead letters by error since 24h (100k in account)",
            f"/ui/dlq?account={big}&error=outside_window&since=24h",
        )
        t_ui.time("dead letters, newest (100k in account)", f"/ui/dlq?account={big}")
        t_api.time("API: dead letters, newest 50", f"/v1/dlq?account={big}&limit=50", bearer)
        t_ui.time(
            "bulk confirm page (count of the filter)",
            f"/ui/dlq/bulk?action=replay&account={big}&error=invalid_request",
        )
        t_ui.time("follow-ups of an account", f"/ui/followups?account={big}")
        t_ui.time("audit log", "/ui/audit")
        if a.idle_accounts:
            idle = [f"179{i:014d}" for i in range(a.idle_accounts)]
            for i in range(0, len(idle), 10_000):
                r.sadd(Keys(prefix).accounts, *idle[i : i + 10_000])
            n_all = a.accounts + a.idle_accounts
            cold = dashboard._account_lists.clear  # every request reads and sorts the account list
            t_ui.time(f"overview with {n_all:,} accounts, list re-read (first page)", "/ui/", before=cold)
            t_ui.time(
                f"overview with {n_all:,} accounts, list re-read (last page)",
                f"/ui/?page={n_all // 50 + 1}",
                before=cold,
            )
            t_ui.time(f"overview with {n_all:,} accounts (first page)", "/ui/")
            t_ui.time(f"overview with {n_all:,} accounts (last page)", f"/ui/?page={n_all // 50 + 1}")
            t_ui.time(f"overview, accounts filtered by id ({n_all:,})", f"/ui/?q={big[-6:]}")
            t_api.time(f"API: accounts, first page of 500 ({n_all:,} accounts)", "/v1/accounts", bearer)
            last = sorted(r.smembers(Keys(prefix).accounts))[-250]  # a page that ends the list
            t_api.time(f"API: accounts, last page ({n_all:,} accounts)", f"/v1/accounts?after={last}", bearer)
            r.srem(Keys(prefix).accounts, *idle[:1])  # (the rest go with the prefix at the end)
        # bulk replay, through the real scripts, of the dead letters of one error on the big account
        n_dead = jobindex.count(r, Keys(prefix).account(big), "d|outside_window|")
        html = ui.get(base + f"/ui/dlq/bulk?action=replay&account={big}&error=outside_window").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
        t0 = time.perf_counter()
        resp = ui.post(
            base + "/ui/dlq/bulk",
            data={"csrf": csrf, "action": "replay", "account": big, "error": "outside_window"},
            allow_redirects=False,
            timeout=600,
        )
        took = time.perf_counter() - t0
        c.say(
            f"bulk replay of {n_dead:,} dead letters: {took:.2f} s ({resp.headers.get('Location', '')[:120]})"
        )
        srv.shutdown()
        print(
            json.dumps(
                {
                    "jobs": a.jobs,
                    "dead": a.dead,
                    "accounts": a.accounts,
                    "ui": t_ui.rows,
                    "api": t_api.rows,
                    "index_bytes_per_job": round(ix / n0),
                    "bulk_replay": {"n": n_dead, "s": round(took, 2)},
                    "load": c.loadavg(),
                },
                indent=1,
            )
        )
    finally:
        c.say(f"deleted {c.cleanup(r, prefix):,} keys")


if __name__ == "__main__":
    main()
