"""``deploy/grafana/``: the dashboard and the alert rules name only what ``/metrics`` really exports.

The PromQL of every dashboard target, of the ``account`` template variable and of every alert rule
is parsed for the metric names it selects and the labels it matches or groups by; each must be in
a real scrape of the app (real Redis, real sends through the sandbox, a real HTTP enqueue), parsed
with ``prometheus_client``.  Sample names are compared, not family names, so a histogram is only
found as ``_bucket``/``_sum``/``_count`` and a counter as ``_total``, as Prometheus stores them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ACCOUNT, ACCOUNT2, TOKEN2
from prometheus_client.parser import text_string_to_metric_families

from dmworker.accounts import Accounts
from dmworker.crypto import new_key
from dmworker.dispatcher import beat
from dmworker.keys import Keys
from dmworker.lanes import LaneStore
from dmworker.outbox import Outbox
from dmworker.runtime import live_settings
from dmworker.web import create_app
from dmworker.worker import LaneWorker

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dmworker-dashboard.json"
ALERTS = GRAFANA / "alerts.yml"
README = GRAFANA / "README.md"

API_TOKEN = "grafana-api-token-0123456789"
REGISTERED = "17841400000000771"  # a registry account with a known token expiry
U1, U2, U3 = "4440001", "4440002", "4440003"

# --------------------------------------------------------------------------- PromQL, just enough
#: Words that are neither metrics nor functions (a function or aggregation is a word before "(").
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"inf", "nan", "atan2", "start", "end"}
)
GROUPING = ("by", "without", "on", "ignoring", "group_left", "group_right")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GRAFANA_VAR = re.compile(r"\$\{?\w+(?::\w+)?\}?")
_NAME = r"[A-Za-z_:][A-Za-z0-9_:]*"
_SELECTOR = re.compile(rf"({_NAME})?\s*\{{([^}}]*)\}}")
_MATCHER = re.compile(rf"({_NAME})\s*(=~|!~|!=|=)\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')")
_GROUP = re.compile(rf"\b({'|'.join(GROUPING)})\s*\(([^)]*)\)")
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
)
_WORD = re.compile(rf"{_NAME}")


@dataclass
class Uses:
    """What one PromQL expression needs from the scrape."""

    metrics: set[str] = field(default_factory=set)
    #: (metric, label) pairs: a matcher on the metric, or a grouping over an expression that selects it
    labels: set[tuple[str, str]] = field(default_factory=set)
    #: (metric, label, value): an equality matcher (or a plain ``a|b`` regex) with a literal value
    values: set[tuple[str, str, str]] = field(default_factory=set)


def _metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, ranges, matchers and groupings removed)."""
    text = _STRING.sub('""', expr)
    text = _RANGE.sub(" ", text)
    text = _GROUP.sub(" ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = _GRAFANA_VAR.sub(" ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for m in _WORD.finditer(text):
        word = m.group(0)
        if word in KEYWORDS or re.match(r"\s*\(", text[m.end() :]):
            continue  # a keyword, or a function or aggregation (a metric is never followed by "(")
        names.add(word)
    return names


def _balanced(text: str, start: int) -> int:
    """The index just past the parenthesis closing the one at ``text[start]``."""
    assert text[start] == "("
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _opening(text: str, end: int) -> int:
    """The index of the parenthesis opening the one closing at ``text[end - 1]``."""
    assert text[end - 1] == ")"
    depth = 0
    for i in range(end - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {text!r}")


def promql_uses(expr: str) -> Uses:
    """Metric names, labels and label values ``expr`` relies on (a parser for the PromQL used here:
    selectors, matchers, functions, aggregations with ``by``/``without`` before or after their
    argument, vector matching with ``on``/``ignoring``/``group_*``, ranges, Grafana variables)."""
    uses = Uses(metrics=_metric_names(expr))
    masked = _STRING.sub(lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expr)  # same offsets
    for m in _SELECTOR.finditer(masked):
        metric = m.group(1)
        assert metric, f"a selector without a metric name in {expr!r}"
        body = expr[m.start(2) : m.end(2)]
        for label, op, quoted in _MATCHER.findall(body):
            uses.labels.add((metric, label))
            literal = quoted[1:-1]
            if "$" in literal:
                continue  # a Grafana variable
            if op == "=" or (op in ("=~", "!=", "!~") and re.fullmatch(r"[\w]+(\|[\w]+)*", literal)):
                uses.values.update((metric, label, v) for v in literal.split("|"))
    for m in _GROUP.finditer(masked):
        keyword, names = m.group(1), [n.strip() for n in m.group(2).split(",") if n.strip()]
        if keyword in ("by", "without"):
            after = masked[m.end() :]
            if after.lstrip().startswith("("):  # sum by (x) (expr)
                start = m.end() + len(after) - len(after.lstrip())
                scope = expr[start : _balanced(masked, start)]
            else:  # sum (expr) by (x)
                before = masked[: m.start()].rstrip()
                scope = expr[_opening(masked, len(before)) : len(before)]
        else:  # vector matching: the labels must be on both sides, so on every metric of the expression
            scope = expr
        metrics = _metric_names(scope)
        assert metrics, f"{keyword} ({m.group(2)}) groups no metric in {expr!r}"
        uses.labels.update((metric, name) for metric in metrics for name in names)
    return uses


# --------------------------------------------------------------------------- the files
def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_alerts() -> dict[str, Any]:
    return yaml.safe_load(ALERTS.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and of every query template variable."""
    out = []
    for p in all_panels(dashboard):
        out += [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(rf"label_values\(\s*(.+?)\s*,\s*({_NAME})\s*\)", q.strip())
            assert m, f"variable {var['name']}: not a label_values(metric, label) query: {q!r}"
            # label_values(sel, label): the selector must have the label
            out.append((f"variable {var['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def alert_exprs(alerts: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"alert {r['alert']}", r["expr"]) for g in alerts["groups"] for r in g["rules"]]


# --------------------------------------------------------------------------- a real scrape
@dataclass
class Scrape:
    #: sample name -> label name -> the values seen
    labels: dict[str, dict[str, set[str]]]

    def problems(self, exprs: list[tuple[str, str]]) -> list[str]:
        """Every metric, label or label value of ``exprs`` the scrape does not have."""
        out = []
        for where, expr in exprs:
            uses = promql_uses(expr)
            assert uses.metrics, f"{where}: no metric in {expr!r}"
            for metric in sorted(uses.metrics - set(self.labels)):
                out.append(f"{where}: no metric {metric} on /metrics")
            for metric, label in sorted(uses.labels):
                if metric in self.labels and label not in self.labels[metric]:
                    out.append(f"{where}: {metric} has no label {label} (has {sorted(self.labels[metric])})")
            for metric, label, value in sorted(uses.values):
                seen = self.labels.get(metric, {}).get(label)
                if seen is not None and value not in seen:
                    out.append(f"{where}: {metric}{{{label}}} is never {value!r} (seen {sorted(seen)})")
        return out


@pytest.fixture
def scraped(settings, rdb, sandbox, key_prefix) -> Scrape:
    """One scrape after real work: jobs enqueued (one through the HTTP API), sent and refused, a
    registered account with a token expiry, a worker heartbeat, a dead letter, a webhook POST."""
    s = live_settings(
        settings.with_overrides(
            secret_keys=(new_key(),),
            accounts_refresh_s=0.01,
            rate_burst=50,
            api_tokens=(API_TOKEN,),
            window_policy="trust",
        ),
        rdb,
    )
    now = time.time()
    Accounts(s, rdb).add(
        REGISTERED, "IGAAgrafana-token-0771", token_expires_at=now + 30 * 86400, token_issued_at=now
    )
    client = create_app(s, redis_client=rdb, publish=lambda a, r: None).test_client()
    ob = Outbox(settings=s, client=rdb, publish=lambda a, r: None)
    sandbox.open_windows(ACCOUNT, [U1, U2])
    sandbox.open_windows(ACCOUNT2, [U1])
    sandbox.revoke_token(TOKEN2)
    answer = client.post(
        "/v1/messages",
        data=json.dumps({"kind": "text", "recipient": U1, "text": "through the API"}),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
    )
    assert answer.status_code in (200, 201, 202), answer.get_data(as_text=True)
    ob.send_text(U1, "one")
    ob.send_text(U2, "two")
    ob.send_text(U2, "later", delay=3600)
    ob.send_text(U1, "refused", account=ACCOUNT2)
    worker = LaneWorker(s, LaneStore(s, rdb))
    try:
        sent = [worker.run_lane(ACCOUNT, U1).sent, worker.run_lane(ACCOUNT, U2).sent]
        worker.run_lane(ACCOUNT2, U1)
    finally:
        worker.clients.close()
    assert sent == [2, 1]
    ob.send_text(U3, "waiting")  # a backlog
    rdb.zadd(Keys(s.key_prefix).account(ACCOUNT).dlq, {f"{ACCOUNT}.deadletter": 1})
    beat(LaneStore(s, rdb), "grafana-test-worker")
    client.get("/v1/jobs/nope.nope", headers={"Authorization": f"Bearer {API_TOKEN}"})

    text = client.get("/metrics").get_data(as_text=True)
    labels: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen = labels.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                seen.setdefault(name, set()).add(value)
    # the scrape has what the dashboard is about (else a missing series would pass as "no label")
    assert labels["dmworker_jobs_sent_total"]["account"] >= {ACCOUNT}
    assert "dmworker_account_token_expires_in_seconds" in labels
    assert "dmworker_worker_heartbeat_age_seconds" in labels
    assert "/v1/messages" in labels["dmworker_http_requests_total"]["route"]
    return Scrape(labels)


# =========================================================================== tests
def test_dashboard_panels_are_well_formed() -> None:
    dashboard = load_dashboard()
    assert isinstance(dashboard["schemaVersion"], int) and 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = all_panels(dashboard)
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"panel ids: {ids}"
    titles = [p.get("title") for p in panels]
    assert all(titles) and len(set(titles)) == len(titles), f"panel titles: {titles}"
    for p in panels:
        gp = p.get("gridPos")
        assert gp and {"x", "y", "w", "h"} <= gp.keys(), f"{p['title']}: gridPos {gp}"
        assert gp["x"] >= 0 and gp["x"] + gp["w"] <= 24 and gp["h"] > 0, f"{p['title']}: gridPos {gp}"
        if p["type"] == "row":  # a row only groups panels: it has no query
            assert not p.get("targets"), p["title"]
            continue
        assert p.get("targets"), f"{p['title']}: no targets"
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs), f"{p['title']}: refIds {refs}"
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], f"{p['title']} {t['refId']}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    account = variables["account"]
    assert account["type"] == "query" and account["definition"].startswith("label_values(")
    assert account["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_readme_lists_every_panel_and_alert() -> None:
    readme = README.read_text()
    for p in all_panels(load_dashboard()):
        if p["type"] != "row":
            assert f"**{p['title']}**" in readme, f"README.md does not describe the panel {p['title']!r}"
    for _, rule in [(g, r) for g in load_alerts()["groups"] for r in g["rules"]]:
        assert rule["alert"] in readme, f"README.md does not list the alert {rule['alert']}"


def test_alert_rules_parse() -> None:
    alerts = load_alerts()
    assert isinstance(alerts, dict) and set(alerts) == {"groups"}
    assert alerts["groups"], "no rule group"
    names = []
    for group in alerts["groups"]:
        assert group["name"] and group["rules"], group
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule["alert"]
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", rule["for"]), f"{rule['alert']}: for {rule['for']}"
            assert rule["labels"].get("severity") in ("critical", "warning", "info"), rule["alert"]
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            names.append(rule["alert"])
    assert len(set(names)) == len(names), names
    wanted = {
        "DmworkerNoWorkerAlive",
        "DmworkerAccountPausedLong",
        "DmworkerAccountReauthRequired",
        "DmworkerDeadLettersRising",
        "DmworkerOldestDueJobAgeHigh",
        "DmworkerTokenExpiringSoon",
    }
    assert wanted <= set(names), wanted - set(names)


def test_every_metric_and_label_of_the_dashboard_and_alerts_is_exported(scraped: Scrape) -> None:
    exprs = dashboard_exprs(load_dashboard()) + alert_exprs(load_alerts())
    problems = scraped.problems(exprs)
    assert not problems, "\n".join(problems)


def test_a_wrong_metric_label_or_value_is_caught(scraped: Scrape) -> None:
    """The check is not vacuous: the dashboard's own expressions, each broken in one way, fail it."""
    sent = next(e for _, e in dashboard_exprs(load_dashboard()) if "dmworker_jobs_sent_total" in e)
    latency = next(e for _, e in dashboard_exprs(load_dashboard()) if "dmworker_enqueue_to_send_seconds" in e)
    assert not scraped.problems([("ok", sent), ("ok", latency)])
    broken = {
        "counter without _total": sent.replace("dmworker_jobs_sent_total", "dmworker_jobs_sent"),
        "misspelled": sent.replace("dmworker_jobs_sent_total", "dmworker_job_sent_total"),
        "histogram family name": latency.replace("_seconds_bucket", "_seconds"),
        "histogram _total": latency.replace("_seconds_bucket", "_seconds_total"),
        "label in by": sent.replace("by (account, kind)", "by (account, recipient)"),
        "label in a matcher": sent.replace('account=~"$account"', 'acct=~"$account"'),
        "label value": 'max by (account) (dmworker_account_state{state="reauth"})',
        "label in on()": "dmworker_jobs_queued > on (kind) dmworker_lanes_backlog",
        "postfix by": "sum(dmworker_workers_alive) by (account)",
    }
    for what, expr in broken.items():
        assert scraped.problems([(what, expr)]), f"{what}: not caught in {expr!r}"


def test_promql_parsing() -> None:
    uses = promql_uses(
        'histogram_quantile(0.95, sum by (route, le) (rate(a_bucket{x=~"$v", y="1|2"}[$__rate_interval])))'
        " / on (route) group_left sum without (z) (b_total offset 1h) > bool 1e3 and vector(0)"
    )
    assert uses.metrics == {"a_bucket", "b_total"}
    assert uses.labels >= {("a_bucket", "route"), ("a_bucket", "le"), ("a_bucket", "x"), ("b_total", "z")}
    assert ("b_total", "route") in uses.labels and ("b_total", "le") not in uses.labels
    assert uses.values == {("a_bucket", "y", "1"), ("a_bucket", "y", "2")}
    assert promql_uses("min(x) by (a)").labels == {("x", "a")}
    assert promql_uses("absent(up_total)").metrics == {"up_total"}
