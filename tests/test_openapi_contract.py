"""The OpenAPI document is as strict as the server: schemathesis (``--checks all``) against the
running API (``create_app()`` served over real HTTP by werkzeug, on a real Redis), and the
document itself validated by openapi-spec-validator.

What a schema cannot say is state, not shape; the hooks below (run by schemathesis in its own
process through ``SCHEMATHESIS_HOOKS``) give positive cases that state, and nothing else:

- which accounts exist: a generated ``account`` (body or query) becomes the configured one;
- the clock: a generated ``expires_at`` is moved to the year 2996 (and ``at`` before it), since
  an expiry in the past is refused;
- pending follow-up keys: the ``key`` index is emptied before each call, and keys are made
  distinct within a batch (a second pending follow-up with the same key is refused);
- a sequence starting with a private reply never cancels on reply (refused: nothing to reply to).
- ``DELETE /v1/dlq`` names what it purges: ``account=<id>`` or ``all=true`` (OpenAPI 3.0 cannot
  say "at least one of two query parameters"); a positive case that gives neither names the
  configured account.

The registry needs a secret key (``DMWORKER_SECRET_KEY``) to store tokens, as in a deployment.

CI-sized: a fixed seed, at most ``MAX_EXAMPLES`` examples per operation in the fuzzing phase; the
coverage phase (every boundary of every schema) is most of the run, about 45 s on 2 cores, so
the test is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ACCOUNT
from cryptography.fernet import Fernet

from dmworker.dispatcher import start_heartbeat
from dmworker.lanes import LaneStore
from dmworker.web import create_app

schemathesis = pytest.importorskip("schemathesis")

API_TOKEN = "contract-api-token-0123456789"
MAX_EXAMPLES = 15
SEED = 20240611
TESTS = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- hooks (schemathesis side)
def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _fix_job(item: Any, index: int) -> None:
    if not isinstance(item, dict):
        return
    if item.get("account") is not None:
        item["account"] = os.environ["CONTRACT_ACCOUNT"]
    if isinstance(item.get("expires_at"), str):
        item["expires_at"] = "2996" + item["expires_at"][4:]
        if isinstance(item.get("at"), str) and item["at"][:4] >= "2996":
            item["at"] = "2995" + item["at"][4:]
    if isinstance(item.get("key"), str) and index:
        item["key"] = f"{item['key'][:180]}#{index}"
    steps = item.get("steps")
    first = steps[0] if isinstance(steps, list) and steps else None
    if isinstance(first, dict) and first.get("kind") == "private_reply" and item.get("cancel_on_reply"):
        item["cancel_on_reply"] = False


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    url = os.environ.get("CONTRACT_REDIS_URL")
    if not url or not _positive(case):
        return
    r = redis.Redis.from_url(url)
    for key in r.scan_iter(match=f"{os.environ['CONTRACT_KEY_PREFIX']}:*:fkey", count=1000):
        r.delete(key)
    if isinstance(case.query, dict) and case.query.get("account") is not None:
        case.query["account"] = os.environ["CONTRACT_ACCOUNT"]
    if case.method.upper() == "DELETE" and case.path == "/v1/dlq":
        query = case.query if isinstance(case.query, dict) else {}
        if not query.get("account") and str(query.get("all")).lower() not in ("true", "1"):
            case.query = {**query, "account": os.environ["CONTRACT_ACCOUNT"]}
    body = case.body
    for i, item in enumerate(body if isinstance(body, list) else [body]):
        _fix_job(item, i)


# --------------------------------------------------------------------------- the running API
@pytest.fixture
def api_url(settings, rdb) -> Iterator[str]:
    from werkzeug.serving import make_server

    s = settings.with_overrides(
        api_tokens=(API_TOKEN,), window_policy="trust", secret_keys=(Fernet.generate_key().decode(),)
    )
    app = create_app(s, redis_client=rdb, publish=lambda a, r: None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # a worker's heartbeat (else /healthz is rightly 503, which schemathesis counts as a server error)
    beating = start_heartbeat(LaneStore(s, rdb), "contract@test", every_s=1.0)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        beating.set()
        server.shutdown()
        thread.join(10)


def test_the_document_is_valid_openapi(api_url):
    from openapi_spec_validator import validate

    with urllib.request.urlopen(f"{api_url}/openapi.json", timeout=10) as resp:
        doc = json.load(resp)
    validate(doc)  # raises OpenAPIValidationError with the path of the first problem
    assert doc["openapi"].startswith("3.0")


def test_every_route_is_documented(api_url, settings, rdb):
    app = create_app(settings, redis_client=rdb, publish=lambda a, r: None)
    doc = app.test_client().get("/openapi.json").json
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    dashboard_doc = (TESTS.parent / "docs" / "dashboard.md").read_text()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "ui.static"):
            continue
        if rule.endpoint.startswith("ui."):  # the dashboard's HTML pages: documented in docs/dashboard.md
            page = rule.rule.split("<", 1)[0].rstrip("/") or "/ui"
            assert f"`{page}" in dashboard_doc, f"{rule.rule} is not in docs/dashboard.md"
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not in /openapi.json"


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 45 s on 2 quiet cores; several times that on a loaded machine
def test_schemathesis_finds_nothing(api_url, redis_url, key_prefix, tmp_path):
    # Given the API running over real HTTP on a real Redis
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "test_openapi_contract",
        "CONTRACT_REDIS_URL": redis_url,
        "CONTRACT_KEY_PREFIX": key_prefix,
        "CONTRACT_ACCOUNT": ACCOUNT,
    }
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{api_url}/openapi.json",
        "--checks",
        "all",
        "--mode",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--header",
        f"Authorization: Bearer {API_TOKEN}",
        "--request-timeout",
        "10",
        "--continue-on-failure",
        "--no-color",
        "--warnings",
        "off",
        "--workers",
        "2",
    ]

    # When schemathesis generates valid and invalid requests for every operation
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840)

    # Then no check fails: valid requests accepted, invalid ones refused, answers as documented
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Tested:" in run.stdout and "failures" not in run.stdout.split("SUMMARY")[-1].lower(), run.stdout
