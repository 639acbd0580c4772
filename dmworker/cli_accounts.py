"""``dmworker accounts ...``: onboard and manage accounts and API tokens at run time.

::

    dmworker accounts [show [ACCOUNT]] [--json]      every account (or one): state, limits, pause, token
    dmworker accounts list [--json]                  id, state, login, token fingerprint and expiry
    dmworker accounts add ACCOUNT [--login facebook --page-id P] [--expires-at T] [--rate text=50/s]
    dmworker accounts set-token ACCOUNT [--expires-at T] [--issued-at T]
    dmworker accounts disable|enable ACCOUNT
    dmworker accounts remove ACCOUNT --jobs keep|fail|cancel
    dmworker accounts resume ACCOUNT                 lift any pause by hand
    dmworker accounts new-key | rotate-key           make a DMWORKER_SECRET_KEY / re-encrypt under the first
    dmworker accounts api-token add NAME --role R [--accounts A|B] | remove NAME | list
    dmworker forget IGSID [--account A] [--json]     remove what is kept about a person (exit 1: a
                                                     send was in flight; run it again once it ended)

A token is never taken on the command line (``ps`` shows arguments): ``add`` and ``set-token`` read
it from standard input (one line), or from the environment variable named by ``--token-env``.
Times (``--expires-at``, ``--issued-at``) are epoch seconds or ISO 8601 with a zone.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any

from .cli_common import UsageError, add_parser, print_json, when


def register(sub: Any) -> None:
    """Add ``accounts`` and its actions (``show`` and ``resume`` as before, and the registry's)."""
    a = add_parser(sub, "accounts", "accounts: show, add, set-token, disable, enable, remove, API tokens")
    a.add_argument("--json", action="store_true", help="machine-readable (with no ACTION)")
    a.set_defaults(handler=show, account=None)
    verbs = a.add_subparsers(dest="action", metavar="ACTION", help="what to do (none: show)")

    s = add_parser(verbs, "show", "every account (or one): state, limits, pause, token fingerprint")
    s.add_argument("account", nargs="?", help="one account in detail (none: every account)")
    s.add_argument("--json", action="store_true", help="machine-readable")
    s.set_defaults(handler=show)
    ls = add_parser(verbs, "list", "registered and configured accounts, one line each")
    ls.add_argument("--json", action="store_true", help="machine-readable")
    ls.set_defaults(handler=list_)

    for name, help_ in (("add", "register an account (token on stdin)"), ("set-token", "replace a token")):
        p = add_parser(verbs, name, help_)
        p.add_argument("account", help="the Instagram account id")
        p.add_argument("--token-env", metavar="VAR", help="read the token from this variable, not stdin")
        p.add_argument("--expires-at", help="token expiry: epoch s or ISO 8601 with a zone")
        p.add_argument("--issued-at", help="token issue time (default: 60 days before its expiry)")
        if name == "add":
            p.add_argument(
                "--login",
                choices=("instagram", "facebook"),
                default="instagram",
                help="Instagram Login (IG user token) or Facebook Login (Page token)",
            )
            p.add_argument("--page-id", help="the linked Page's id (facebook login)")
            p.add_argument("--rate", action="append", default=[], metavar="CLASS=RATE", help="e.g. text=50/s")
            p.add_argument("--burst", type=int, help="sends allowed at once above the rate")
            p.add_argument("--graph-url", help="this account's Graph base URL (default: by login)")
            p.add_argument("--callback-url", help="where this account's events go")
            p.add_argument("--replace", action="store_true", help="overwrite a registered account")
        p.set_defaults(handler=add if name == "add" else set_token)

    for name, fn in (("disable", disable), ("enable", enable), ("resume", resume)):
        p = add_parser(
            verbs,
            name,
            {
                "disable": "stop its sends (jobs wait)",
                "enable": "undo disable",
                "resume": "lift any pause by hand",
            }[name],
        )
        p.add_argument("account", help="the Instagram account id")
        p.set_defaults(handler=fn)
    rm = add_parser(verbs, "remove", "unregister an account")
    rm.add_argument("account", help="the Instagram account id")
    rm.add_argument(
        "--jobs",
        required=True,
        choices=("keep", "fail", "cancel"),
        help="its queued jobs: keep them held, fail them (dead letters) or cancel them",
    )
    rm.set_defaults(handler=remove)
    add_parser(verbs, "new-key", "print a new DMWORKER_SECRET_KEY").set_defaults(handler=new_key)
    add_parser(verbs, "rotate-key", "re-encrypt every stored token under the first key").set_defaults(
        handler=rotate_key
    )

    t = add_parser(verbs, "api-token", "API tokens kept in the registry (hashed)")
    t.add_argument(
        "op", choices=("add", "remove", "list"), help="create (prints the token once), revoke, list"
    )
    t.add_argument("name", nargs="?", help="the token's name (add, remove)")
    t.add_argument("--role", choices=("admin", "producer", "viewer"), help="what the token may do (add)")
    t.add_argument("--accounts", help="account|account... or * (producer, viewer)")
    t.set_defaults(handler=api_token)

    f = add_parser(
        sub,
        "forget",
        "forget a person (Meta data-deletion request): window, comments, jobs and their texts",
    )
    f.add_argument("igsid", help="the person's IGSID")
    f.add_argument("--account", help="only this account (default: every account with data or served)")
    f.add_argument("--json", action="store_true", help="machine-readable")
    f.set_defaults(handler=forget)


def _accounts() -> Any:
    from .accounts import Accounts

    return Accounts()


def _token(ns: argparse.Namespace) -> str:
    if ns.token_env:
        value = os.environ.get(ns.token_env, "")
        if not value:
            raise UsageError(f"the variable {ns.token_env} is unset or empty")
        return value.strip()
    if sys.stdin.isatty():
        print("access token (not echoed): ", end="", file=sys.stderr, flush=True)
        import getpass

        return getpass.getpass("").strip()
    return sys.stdin.readline().strip()


def _time(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{name}: expected epoch seconds or ISO 8601, got {value!r}") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{name}: give a zone (e.g. 2026-03-01T00:00:00Z)")
    return parsed.timestamp()


def _print_info(info: Any, as_json: bool) -> None:
    if as_json:
        print_json(info.to_dict())
        return
    d = info.to_dict()
    expiry = when(d["token_expires_at"] * 1000) if d["token_expires_at"] else "-"
    print(
        f"{d['account']}: {d['state']} ({d['source']}, {d['login']} login"
        f"{', page ' + d['page_id'] if d['page_id'] else ''}); "
        f"token {d['token_fingerprint']}, expires {expiry}"
    )
    print(
        f"  limits {', '.join(f'{k} {v}' for k, v in d['limits'].items())} (burst {d['burst']}); "
        f"graph {d['graph_url']}"
    )
    if d["pause_reason"]:
        print(f"  paused: {d['pause_reason']}")
    r = d["refresh"]
    if r and r.get("state") != "none":
        nxt = when(r["next_s"] * 1000) if r.get("next_s") else "-"
        print(
            f"  refresh: {r['state']}; next attempt {nxt}; failures {r['failures']}"
            f"{'; last error: ' + r['error'] if r.get('error') else ''}"
        )


def show(ns: argparse.Namespace) -> int:
    if ns.account:
        _print_info(_accounts().get(ns.account), ns.json)
        return 0
    from .admin import account_states
    from .runtime import get_runtime

    states = account_states(get_runtime().store)
    infos = {i.account: i for i in _accounts().list()}
    if ns.json:
        print_json(
            [{**s.to_dict(), **(infos[s.account].to_dict() if s.account in infos else {})} for s in states]
        )
        return 0
    from .cli_ops import describe_account, describe_workers, worker_liveness

    print(describe_workers(worker_liveness(get_runtime().store)))
    for s in states:
        info = infos.get(s.account)
        extra = f"; {info.state}; token {info.token_fingerprint}" if info and info.token_fingerprint else ""
        print(describe_account(s) + extra)
    return 0


def list_(ns: argparse.Namespace) -> int:
    infos = _accounts().list()
    if ns.json:
        print_json([i.to_dict() for i in infos])
        return 0
    for i in infos:
        exp = when(i.token_expires_at * 1000) if i.token_expires_at else "-"
        print(f"{i.account}\t{i.state}\t{i.source}\t{i.login}\t{i.token_fingerprint}\texpires {exp}")
    return 0


def add(ns: argparse.Namespace) -> int:
    rates = {}
    for item in ns.rate:
        klass, sep, rate = item.partition("=")
        if not sep:
            raise UsageError(f"--rate takes CLASS=RATE, got {item!r}")
        rates[klass] = rate
    info = _accounts().add(
        ns.account,
        _token(ns),
        login=ns.login,
        page_id=ns.page_id,
        token_expires_at=_time(ns.expires_at, "--expires-at"),
        token_issued_at=_time(ns.issued_at, "--issued-at"),
        rates=rates,
        burst=ns.burst,
        graph_url=ns.graph_url,
        callback_url=ns.callback_url,
        replace=ns.replace,
    )
    _print_info(info, False)
    return 0


def set_token(ns: argparse.Namespace) -> int:
    info = _accounts().set_token(
        ns.account,
        _token(ns),
        token_expires_at=_time(ns.expires_at, "--expires-at"),
        token_issued_at=_time(ns.issued_at, "--issued-at"),
    )
    _print_info(info, False)
    return 0


def disable(ns: argparse.Namespace) -> int:
    _print_info(_accounts().disable(ns.account), False)
    return 0


def enable(ns: argparse.Namespace) -> int:
    _print_info(_accounts().enable(ns.account), False)
    return 0


def resume(ns: argparse.Namespace) -> int:
    from .admin import resume_account
    from .runtime import get_runtime

    print("resumed" if resume_account(get_runtime().store, ns.account) else "not paused")
    return 0


def remove(ns: argparse.Namespace) -> int:
    out = _accounts().remove(ns.account, jobs=ns.jobs)
    print(f"removed {out['account']} (jobs: {out['jobs']}, {out['ended']} ended)")
    return 0


def new_key(ns: argparse.Namespace) -> int:
    from .crypto import new_key as make

    print(make())
    return 0


def rotate_key(ns: argparse.Namespace) -> int:
    accounts = _accounts()
    cipher = accounts.cipher
    n = 0
    for account in sorted(accounts.registry.snapshot()[1]):
        accounts.registry.update(account, lambda cur: cur.with_(tok=cipher.rotate(cur.tok)) if cur else None)
        n += 1
    print(f"re-encrypted {n} tokens under the first key of DMWORKER_SECRET_KEY")
    return 0


def api_token(ns: argparse.Namespace) -> int:
    from .apitokens import ApiTokens
    from .runtime import get_runtime

    rt = get_runtime()
    tokens = ApiTokens(rt.settings, rt.redis)
    if ns.op == "list":
        for t in tokens.list():
            accts = t["accounts"] if isinstance(t["accounts"], str) else "|".join(t["accounts"])
            print(f"{t['name']}\t{t['role']}\t{accts}")
        return 0
    if not ns.name:
        raise UsageError(f"api-token {ns.op} takes a NAME")
    if ns.op == "remove":
        print("removed" if tokens.remove(ns.name) else f"no API token named {ns.name!r}")
        return 0
    if not ns.role:
        raise UsageError("api-token add needs --role")
    print(tokens.create(ns.name, ns.role, ns.accounts))
    return 0


def forget(ns: argparse.Namespace) -> int:
    """Exit 0 when nothing of the person is left, 1 when a send was in flight (run it again)."""
    accounts = _accounts()
    reports = [accounts.forget(ns.account, ns.igsid)] if ns.account else accounts.forget_everywhere(ns.igsid)
    if ns.json:
        print_json([r.to_dict() for r in reports])
    for r in reports if not ns.json else []:
        if not r.removed and r.complete:
            continue
        print(
            f"{r.account}: {r.jobs_removed} jobs removed ({r.jobs_cancelled} cancelled first, "
            f"{r.dead_letters} dead letters), {r.lanes} lanes, window {r.window}, {r.comments} comments"
            + (f"; {r.in_flight} being sent now: run forget again once sent" if r.in_flight else "")
        )
    complete = all(r.complete for r in reports)
    if not ns.json and all(not r.removed and r.complete for r in reports):
        print(f"nothing stored about this person ({len(reports)} accounts searched)")
    return 0 if complete else 1
