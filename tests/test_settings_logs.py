"""Settings read once from the environment (bad values named), and logs that never carry secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest
from conftest import ACCOUNT, TOKEN

from dmworker.lanes import LaneStore
from dmworker.logs import setup_logging
from dmworker.outbox import Outbox
from dmworker.settings import ConfigError, Settings, parse_rate
from dmworker.worker import LaneWorker


def test_defaults_without_any_variable():
    s = Settings.from_env({})
    assert s.redis_url is None and s.graph_url == "https://graph.instagram.com/v25.0"
    assert str(s.rates["text"]) == "100/s" and str(s.rates["private_reply"]) == "750/h"
    assert s.window_policy == "auto" and s.accounts == {}


@pytest.mark.parametrize(
    ("var", "value", "expect"),
    [
        ("DMWORKER_HTTP_READ_TIMEOUT_S", "soon", "DMWORKER_HTTP_READ_TIMEOUT_S: expected a number"),
        ("DMWORKER_MAX_ATTEMPTS", "-1", "DMWORKER_MAX_ATTEMPTS: expected an integer >= 1"),
        ("DMWORKER_RATE_TEXT", "fast", "DMWORKER_RATE_TEXT: expected a rate like"),
        ("DMWORKER_RATE_MEDIA", "0/s", "DMWORKER_RATE_MEDIA: the rate must be positive"),
        ("DMWORKER_WINDOW_POLICY", "maybe", "DMWORKER_WINDOW_POLICY: expected one of auto, enforce, trust"),
        ("DMWORKER_EMBEDDED_SCHEDULER", "perhaps", "DMWORKER_EMBEDDED_SCHEDULER: expected true or false"),
        ("DMWORKER_LEASE_MS", "1000", "DMWORKER_LEASE_MS: expected at least 1.5 x"),
        ("DMWORKER_ACCOUNTS_FILE", "/nonexistent/a.json", "DMWORKER_ACCOUNTS_FILE: file"),
    ],
)
def test_a_bad_value_names_the_variable(var, value, expect):
    with pytest.raises(ConfigError) as e:
        Settings.from_env({var: value})
    assert str(e.value).startswith(expect)


def test_accounts_file_adds_to_the_single_account(tmp_path):
    f = tmp_path / "accounts.json"
    f.write_text(json.dumps({"222": {"access_token": "tok-222", "rates": {"text": "50/s"}, "burst": 3}}))
    s = Settings.from_env(
        {"DMWORKER_ACCOUNT_ID": "111", "DMWORKER_ACCESS_TOKEN": "tok-111", "DMWORKER_ACCOUNTS_FILE": str(f)}
    )
    assert set(s.accounts) == {"111", "222"} and s.default_account == "111"
    assert s.rate_for("222", "text") == parse_rate("50/s") and s.rate_for("111", "text") == parse_rate(
        "100/s"
    )
    assert s.burst_for("222") == 3
    assert "tok-222" not in repr(s) and "tok-111" not in repr(s)
    f.write_text(json.dumps({"333": {"access_token": "x", "rates": {"txt": "1/s"}}}))
    with pytest.raises(ConfigError, match="unknown rate class 'txt'"):
        Settings.from_env({"DMWORKER_ACCOUNTS_FILE": str(f)})


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("100/s", 100, 1), ("30/m", 30, 60), ("750/h", 750, 3600), ("10/5m", 10, 300)],
)
def test_rate_strings(text, count, period):
    r = parse_rate(text)
    assert (r.count, r.period_s) == (count, period)


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_no_log_line_carries_a_token_or_secret_even_at_debug(settings, sandbox, rdb, fmt):
    # Given DEBUG logging of everything (urllib3 included) in the configured format
    s = settings.with_overrides(
        log_format=fmt,
        log_level="DEBUG",
        app_secret="app-secret-value-123",
        api_tokens=("producer-token-xyz",),
        window_policy="trust",
    )
    stream = io.StringIO()
    handler = setup_logging(s, stream)
    w = LaneWorker(s, LaneStore(s, rdb))
    try:
        sandbox.open_window(ACCOUNT, "4242")
        ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None)
        job = ob.send_text("4242", "hello")
        bad = ob.send_text("4243", "no window here")
        w.run_lane(ACCOUNT, "4242")
        w.run_lane(ACCOUNT, "4243")
        logging.getLogger("dmworker.test").warning(
            "a message that quotes it: Bearer %s and %s", TOKEN, "app-secret-value-123"
        )
        logging.getLogger("dmworker.test").info("url https://x/?access_token=%s", TOKEN)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
        w.clients.close()
    out = stream.getvalue()
    # Then the job lines carry job id and recipient, and no secret appears anywhere
    assert job.id in out and bad.id in out and "recipient" in out
    for secret in (TOKEN, "app-secret-value-123", "producer-token-xyz"):
        assert secret not in out
    assert "[redacted]" in out
    if fmt == "json":
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert any(line.get("job_id") == job.id for line in lines)
