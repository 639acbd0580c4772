"""The deployment files parse, agree with each other, and run only commands that exist.

Every file under ``deploy/`` is parsed by the parser of its kind (YAML, Dockerfile, systemd unit,
env file); the Procfile too.  From all of them (k8s ``command``/``args``, compose ``command``,
Dockerfile ``RUN``/``CMD``, systemd ``Exec*``, Procfile lines, ``sh`` blocks of ``docs/``) the
commands are extracted, and:

- every ``dmworker <subcommand> ...`` names a subcommand of ``dmworker.cli.build_parser()`` and
  parses with it;
- every ``gunicorn`` serves ``dmworker.web:create_app()``;
- every ``celery`` names ``-A dmworker.celery_app``.

Every ``DMWORKER_*`` name they (and the docs) mention is a real setting, the shipped
configurations load with ``Settings.from_env``, and ``docs/configuration.md`` lists every setting.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from dmworker.settings import RATE_CLASSES, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
DOCS = ROOT / "docs"
PROCFILE = ROOT / "Procfile"

APP_FACTORY = "dmworker.web:create_app()"
CELERY_APP = "dmworker.celery_app"
PROCESS_TYPES = ("web", "worker", "scheduler")

EXPECTED_FILES = [
    "Dockerfile",
    "docker-compose.yml",
    "k8s/configmap.yaml",
    "k8s/secret.example.yaml",
    "k8s/web.yaml",
    "k8s/worker.yaml",
    "k8s/scheduler.yaml",
    "k8s/keda-scaledobject.yaml",
    "systemd/dmworker-worker.service",
    "systemd/dmworker-scheduler.service",
    "systemd/dmworker-web.service",
    "systemd/dmworker.env.example",
]

DOCKERFILE_INSTRUCTIONS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh"})
WRAPPERS = frozenset({"exec", "nice", "nohup", "tini", "dumb-init", "time"})
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|REDIS_URL|BROKER_URL", re.IGNORECASE)
SETTING_NAME = re.compile(r"\bDMWORKER_[A-Z0-9_]*[A-Z0-9]\b")
PLACEHOLDER = "CHANGE_ME"


# --------------------------------------------------------------------------- file discovery
def deploy_files() -> list[Path]:
    """Every file under deploy/ except a local ``.env`` (compose's secrets: never read here)."""
    if not DEPLOY.is_dir():
        return []
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name != ".env")


def kind_of(path: Path) -> str | None:
    name = path.name
    if name.endswith((".yaml", ".yml")):
        return "yaml"
    if name == "Dockerfile" or name.startswith("Dockerfile.") or name.endswith(".Dockerfile"):
        return "dockerfile"
    if name.endswith((".service", ".timer", ".socket", ".target")):
        return "systemd"
    if name.endswith(".env.example"):
        return "env"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".md"):
        return "markdown"
    return None


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------- parsers
def load_yaml(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


@dataclass(frozen=True)
class Instruction:
    line: int
    name: str
    value: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Logical lines (backslash continuations joined, comments dropped) as instructions.

    Raises:
        ValueError: for a logical line that does not start with a known instruction.
    """
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for no, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # comments are dropped even inside a continued instruction
        if not buf:
            start = no
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        logical = " ".join(part for part in buf if part)
        buf = []
        name, _, value = logical.partition(" ")
        if name.upper() not in DOCKERFILE_INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown Dockerfile instruction {name!r}")
        out.append(Instruction(start, name.upper(), value.strip()))
    if buf:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return out


def load_unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys keep their case
    cp.read_string(path.read_text(), source=str(path))
    return cp


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (systemd EnvironmentFile / compose .env); comments and blanks skipped."""
    out: dict[str, str] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        assert m, f"line {no}: expected KEY=VALUE, got {raw!r}"
        value = m.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[m.group(1)] = value
    return out


def parse_procfile(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(\S.*)", raw.strip())
        assert m, f"Procfile line {no}: expected 'name: command', got {raw!r}"
        assert m.group(1) not in out, f"Procfile line {no}: process type {m.group(1)!r} twice"
        out[m.group(1)] = m.group(2)
    return out


def systemd_seconds(value: str) -> float:
    """A systemd time span (``90``, ``90s``, ``1min 30s``, ``2m``) in seconds."""
    units = {
        "": 1,
        "s": 1,
        "sec": 1,
        "second": 1,
        "seconds": 1,
        "m": 60,
        "min": 60,
        "minute": 60,
        "minutes": 60,
        "h": 3600,
        "hr": 3600,
        "hour": 3600,
        "hours": 3600,
        "ms": 0.001,
        "msec": 0.001,
    }
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    assert parts and "".join(value.split()) == "".join(n + u for n, u in parts), value
    return sum(float(n) * units[u] for n, u in parts)


# --------------------------------------------------------------------------- command extraction
@dataclass(frozen=True)
class Command:
    """One simple command some deployment file runs: where it comes from and its words."""

    source: str
    argv: tuple[str, ...]


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ``;``, ``&&``, ``||``, ``|``, parentheses)."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = ""
    out: list[list[str]] = [[]]
    for tok in lex:
        if tok and set(tok) <= set(";&|()"):
            out.append([])
        else:
            out[-1].append(tok)
    return [argv for argv in out if argv]


def expand(argv: list[str]) -> list[list[str]]:
    """``argv`` plus, recursively, the commands of any ``sh -c SCRIPT`` it runs."""
    out = [argv]
    name = Path(argv[0]).name if argv else ""
    if name in SHELLS and "-c" in argv[1:-1]:
        for inner in shell_commands(argv[argv.index("-c", 1) + 1]):
            out.extend(expand(inner))
    return out


def commands_from(source: str, argv_or_text: list[str] | str) -> list[Command]:
    pieces = shell_commands(argv_or_text) if isinstance(argv_or_text, str) else [list(argv_or_text)]
    return [Command(source, tuple(words)) for piece in pieces for words in expand(piece)]


def program(argv: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """The program a command runs and its arguments, past ``exec``/``env``/``VAR=x``/``python -m``."""
    words = list(argv)
    while words:
        head = Path(words[0]).name
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or head in WRAPPERS:
            words.pop(0)
            if head in {"tini", "dumb-init"} and words[:1] == ["--"]:
                words.pop(0)
        elif head == "env":
            words.pop(0)
            while words and (words[0].startswith("-") or "=" in words[0]):
                words.pop(0)
        elif re.fullmatch(r"python[0-9.]*", head) and len(words) > 2 and words[1] == "-m":
            return words[2], tuple(words[3:])
        else:
            return head, tuple(words[1:])
    return "", ()


def yaml_commands(source: str, node: Any) -> Iterator[Command]:
    """k8s ``command`` + ``args`` (or ``args`` alone), compose ``command``/``entrypoint``, and
    compose ``healthcheck.test``, anywhere in a YAML document."""
    if isinstance(node, dict):
        parts: list[str] | str | None = None
        if "command" in node or "args" in node:
            cmd, args = node.get("command"), node.get("args")
            if isinstance(cmd, str):
                parts = cmd if args is None else f"{cmd} {shlex.join(map(str, args))}"
            else:
                parts = [str(w) for w in (cmd or [])] + [str(w) for w in (args or [])]
        elif isinstance(node.get("entrypoint"), list | str):
            ep = node["entrypoint"]
            parts = ep if isinstance(ep, str) else [str(w) for w in ep]
        elif isinstance(node.get("test"), list) and node["test"][:1] in (["CMD"], ["CMD-SHELL"]):
            test = [str(w) for w in node["test"]]
            parts = test[1:] if test[0] == "CMD" else " ".join(test[1:])
        if parts:
            yield from commands_from(source, parts)
        for value in node.values():
            yield from yaml_commands(source, value)
    elif isinstance(node, list):
        for value in node:
            yield from yaml_commands(source, value)


def dockerfile_commands(source: str, instructions: list[Instruction]) -> Iterator[Command]:
    for ins in instructions:
        if ins.name not in ("RUN", "CMD", "ENTRYPOINT"):
            continue
        where = f"{source}:{ins.line}"
        if ins.value.startswith("["):
            yield from commands_from(where, [str(w) for w in json.loads(ins.value)])
        else:
            yield from commands_from(where, ins.value)


def unit_commands(source: str, unit: configparser.ConfigParser) -> Iterator[Command]:
    for key, value in unit.items("Service") if unit.has_section("Service") else []:
        if key.startswith("Exec"):
            yield from commands_from(f"{source} {key}", value.lstrip("@-:+!"))


def docs_commands() -> Iterator[Command]:
    """Commands in ```sh / ```bash / ```console blocks of docs/*.md (a ``$ `` prompt is dropped)."""
    for path in sorted(DOCS.glob("*.md")) if DOCS.is_dir() else []:
        text = path.read_text()
        for m in re.finditer(r"^```(?:sh|bash|shell|console)\n(.*?)^```", text, re.M | re.S):
            for line in m.group(1).replace("\\\n", " ").splitlines():
                line = line.strip()
                line = line[2:] if line.startswith("$ ") else line
                if line and not line.startswith("#"):
                    yield from commands_from(rel(path), line)


def all_commands() -> list[Command]:
    out: list[Command] = []
    for path in deploy_files():
        kind = kind_of(path)
        if kind == "yaml":
            for doc in load_yaml(path):
                out.extend(yaml_commands(rel(path), doc))
        elif kind == "dockerfile":
            out.extend(dockerfile_commands(rel(path), parse_dockerfile(path.read_text())))
        elif kind == "systemd":
            out.extend(unit_commands(rel(path), load_unit(path)))
    if PROCFILE.exists():
        for name, line in parse_procfile(PROCFILE.read_text()).items():
            out.extend(commands_from(f"Procfile {name}", line))
    out.extend(docs_commands())
    return out


def invocations(name: str) -> list[tuple[Command, tuple[str, ...]]]:
    """Every command that runs the program ``name``, with the arguments it passes."""
    found = []
    for cmd in all_commands():
        prog, args = program(cmd.argv)
        if prog == name:
            found.append((cmd, args))
    return found


# --------------------------------------------------------------------------- the CLI contract
def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.fixture(scope="module")
def cli_parser() -> argparse.ArgumentParser:
    import dmworker.cli  # the contract: build_parser() returns the argparse parser of `dmworker`

    parser = dmworker.cli.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert subparsers_of(parser), "dmworker.cli.build_parser() has no subcommands"
    return parser


# --------------------------------------------------------------------------- settings helpers
def known_settings() -> set[str]:
    """Every DMWORKER_* variable the package reads: each quoted name in its source (Settings.from_env,
    the CLI's own defaults) and the one per rate class that from_env builds."""
    names = {f"DMWORKER_RATE_{k.upper()}" for k in RATE_CLASSES}
    for path in (ROOT / "dmworker").rglob("*.py"):
        names |= set(re.findall(r"[\"'](DMWORKER_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    return names


def suite_knobs() -> set[str]:
    """The test suite's own variables (DMWORKER_TEST_*, DMWORKER_CHAOS_*), which docs may describe."""
    names: set[str] = set()
    for path in [*(ROOT / "tests").rglob("conftest.py"), *(ROOT / "tests" / "chaos").glob("*.py")]:
        names |= set(re.findall(r"[\"'](DMWORKER_(?:TEST|CHAOS)_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    return names


def yaml_docs(name: str) -> list[dict[str, Any]]:
    return load_yaml(K8S / name)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def k8s_pod_env(spec: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The environment the first container of a pod spec gets from configmap.yaml and
    secret.example.yaml (envFrom, then env), with mounted secret files copied to ``tmp_path``."""
    maps = {d["metadata"]["name"]: d["data"] for d in yaml_docs("configmap.yaml")}
    secrets = {d["metadata"]["name"]: d["stringData"] for d in yaml_docs("secret.example.yaml")}
    container = spec["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ((kind, ref),) = source.items()
        env.update({k: str(v) for k, v in (maps if kind == "configMapRef" else secrets)[ref["name"]].items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ((kind, ref),) = var["valueFrom"].items()
        values = (maps if kind == "configMapKeyRef" else secrets)[ref["name"]]
        if ref["key"] in values:
            env[var["name"]] = str(values[ref["key"]])
        else:
            assert ref.get("optional"), f"{var['name']}: {ref['name']} has no key {ref['key']}"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        vol = volumes[mount["name"]]
        if "secret" in vol:
            for key, value in secrets[vol["secret"]["secretName"]].items():
                local = tmp_path / Path(mount["mountPath"]).relative_to("/") / key
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(str(value))
    if env.get("DMWORKER_ACCOUNTS_FILE"):
        local = tmp_path / Path(env["DMWORKER_ACCOUNTS_FILE"]).relative_to("/")
        assert local.is_file(), f"{env['DMWORKER_ACCOUNTS_FILE']} is not mounted from a Secret"
        env["DMWORKER_ACCOUNTS_FILE"] = str(local)
    return env


# =========================================================================== tests: files
def test_the_expected_deployment_files_exist() -> None:
    missing = [name for name in EXPECTED_FILES if not (DEPLOY / name).is_file()]
    assert not missing, f"missing in deploy/: {missing}"
    assert PROCFILE.is_file()
    assert (ROOT / ".dockerignore").is_file(), "deploy/Dockerfile relies on the top-level .dockerignore"


@pytest.mark.parametrize("path", deploy_files(), ids=rel)
def test_every_deploy_file_parses(path: Path) -> None:
    kind = kind_of(path)
    assert kind is not None, f"{rel(path)}: no parser for this kind of file (teach tests/test_deploy.py)"
    if kind == "yaml":
        docs = load_yaml(path)
        assert docs, f"{rel(path)}: no YAML document"
        assert all(isinstance(d, dict) for d in docs)
    elif kind == "dockerfile":
        assert parse_dockerfile(path.read_text())
    elif kind == "systemd":
        assert load_unit(path).sections()
    elif kind == "json":
        assert isinstance(json.loads(path.read_text()), dict)
    elif kind == "markdown":
        assert path.read_text().strip()
    else:
        assert parse_env_file(path.read_text())


def test_dockerfile() -> None:
    ins = parse_dockerfile((DEPLOY / "Dockerfile").read_text())
    first = next(i for i in ins if i.name != "ARG")
    assert first.name == "FROM" and first.value.split()[0].startswith("python:3.11-slim")
    last_from = max(n for n, i in enumerate(ins) if i.name == "FROM")
    final = ins[last_from:]  # the build stage that becomes the image
    users = [i.value for i in final if i.name == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    assert users[-1].split(":")[0] not in ("root", "0"), f"USER {users[-1]} is root"
    assert any(i.name in ("CMD", "ENTRYPOINT") for i in final)
    cmd = [i for i in ins if i.name == "CMD"][-1]
    assert json.loads(cmd.value) == ["dmworker", "worker"], "exec-form CMD, so SIGTERM reaches Celery"
    runs = " ".join(i.value for i in ins if i.name == "RUN")
    assert re.search(r"pip install [\"']?\.\[web\]", runs), "installs the repo with the web extra"
    for i in ins:
        if i.name in ("ENV", "ARG"):
            keys = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", i.value) or [i.value.split()[0]]
            baked = [k for k in keys if SECRET_NAME.search(k)]
            assert not baked, f"line {i.line}: secret-looking {baked} baked into the image"
        if i.name in ("COPY", "ADD") and "--from" not in i.value:
            for src in i.value.split()[:-1]:
                if not src.startswith("--"):
                    assert (ROOT / src).exists(), f"line {i.line}: {src} is not in the build context"


def test_dockerignore_keeps_secrets_out() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "**/.env" in lines
    assert "*" in lines or ".env" in lines


@pytest.mark.parametrize("path", sorted(SYSTEMD.glob("*.service")), ids=rel)
def test_systemd_unit(path: Path) -> None:
    unit = load_unit(path)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    assert svc.get("Type") == "simple"
    assert svc.get("User") and svc["User"] not in ("root", "0")
    assert svc.get("EnvironmentFile")
    assert svc.get("KillSignal") == "SIGTERM"
    assert svc.get("KillMode") == "mixed"
    assert svc.get("Restart") == "always"
    assert systemd_seconds(svc.get("TimeoutStopSec", "0")) >= 30
    assert svc.get("ExecStart")
    assert unit["Install"].get("WantedBy")


def test_procfile() -> None:
    procs = parse_procfile(PROCFILE.read_text())
    assert set(PROCESS_TYPES) <= set(procs)
    assert re.search(r"\$\{?PORT\b", procs["web"]), "web must bind $PORT"
    assert program(shell_commands(procs["web"])[0])[0] == "gunicorn"


def app_routes() -> set[str]:
    """The URL rules of the web app (built without Redis I/O)."""
    import redis

    from dmworker.settings import Settings
    from dmworker.web import create_app

    settings = Settings.from_env({"DMWORKER_REDIS_URL": "redis://127.0.0.1:1/0"})
    app = create_app(settings, redis_client=redis.Redis(port=1), publish=lambda a, r: None)
    return {rule.rule for rule in app.url_map.iter_rules()}


def probe_paths() -> list[tuple[str, str]]:
    """(where, path) of every HTTP path a deployment file probes or health-checks."""
    found = []
    for path in deploy_files():
        if kind_of(path) != "yaml":
            continue
        text = path.read_text()
        found += [(rel(path), p) for p in re.findall(r"path:\s*(/[A-Za-z0-9_/.-]*)", text)]
        found += [(rel(path), p) for p in re.findall(r"https?://[0-9A-Za-z.]+:\d+(/[A-Za-z0-9_/.-]*)", text)]
    return found


def test_every_probed_path_is_served_and_none_needs_a_worker() -> None:
    routes = app_routes()
    assert {"/livez", "/readyz", "/healthz", "/metrics"} <= routes
    found = probe_paths()
    assert {p for _, p in found} >= {"/livez", "/readyz"}
    for where, path in found:
        if path.startswith("/etc/") or path.startswith("/tmp"):
            continue  # volume mounts
        assert path in routes, f"{where}: {path} is not a route of dmworker.web:create_app()"
        assert path != "/healthz", f"{where}: /healthz fails whenever no worker runs; use /readyz"


def test_compose() -> None:
    compose = load_yaml(DEPLOY / "docker-compose.yml")[0]
    services = compose["services"]
    assert {"redis", *PROCESS_TYPES} <= set(services)
    redis = services["redis"]
    assert str(redis["image"]).split(":")[0] == "redis" and str(redis["image"]).startswith("redis:7")
    words = " ".join(map(str, redis["command"])) if isinstance(redis["command"], list) else redis["command"]
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in words
    assert any(str(v).endswith(":/data") for v in redis.get("volumes", []))
    for name in PROCESS_TYPES:
        svc = services[name]
        build = svc["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
        env_file = svc["env_file"]
        assert ".env" in ([env_file] if isinstance(env_file, str) else env_file)
        assert svc["environment"]["DMWORKER_REDIS_URL"] == "redis://redis:6379/0"
        if name == "web":
            test = " ".join(map(str, svc["healthcheck"]["test"]))
            assert "/readyz" in test and "/healthz" not in test, test
        grace = svc.get("stop_grace_period", "10s")
        assert systemd_seconds(grace) >= 30, f"{name}: stop_grace_period {grace} cuts warm shutdown"


# =========================================================================== tests: k8s
def pod_specs() -> dict[str, dict[str, Any]]:
    out = {}
    for name in ("web.yaml", "worker.yaml", "scheduler.yaml"):
        dep = one(yaml_docs(name), "Deployment")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), f"{name}: selector does not match the pod labels"
        out[dep["metadata"]["name"]] = dep["spec"]["template"]["spec"]
    return out


def test_k8s_documents_are_well_formed() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml(path):
            assert doc.get("apiVersion") and doc.get("kind"), rel(path)
            assert doc.get("metadata", {}).get("name"), rel(path)


def test_k8s_deployments() -> None:
    specs = pod_specs()
    assert set(specs) == {"dmworker-web", "dmworker-worker", "dmworker-scheduler"}
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
    assert specs["dmworker-worker"]["terminationGracePeriodSeconds"] >= 60
    web = specs["dmworker-web"]["containers"][0]
    # A worker outage must not restart or unready the webhook receiver and the API: liveness is
    # the process (/livez), readiness is Redis (/readyz); never /healthz (it needs a worker).
    assert web["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for name, spec in specs.items():
        for c in spec["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                path = c.get(probe, {}).get("httpGet", {}).get("path")
                assert path != "/healthz", f"{name}: {probe} on /healthz fails whenever no worker runs"
    service = one(yaml_docs("web.yaml"), "Service")
    web_labels = one(yaml_docs("web.yaml"), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= web_labels.items()


@pytest.mark.parametrize("name", ["dmworker-web", "dmworker-worker", "dmworker-scheduler"])
def test_k8s_pod_configuration_loads(name: str, tmp_path: Path) -> None:
    settings = Settings.from_env(k8s_pod_env(pod_specs()[name], tmp_path))
    assert settings.redis_url and settings.redis_url.startswith("rediss://")
    assert "ssl_cert_reqs=required" in settings.redis_url, "kombu skips certificate checks without it"
    if name == "dmworker-scheduler":  # least privilege: Redis only
        assert not settings.accounts and not settings.app_secret and not settings.api_tokens
    else:
        assert settings.default_account in settings.accounts
    if name == "dmworker-web":
        assert settings.app_secret and settings.verify_token and settings.api_tokens


def test_k8s_secret_example_holds_placeholders_only() -> None:
    for doc in yaml_docs("secret.example.yaml"):
        assert doc["kind"] == "Secret"
        assert "data" not in doc, "base64 data hides what it holds: use stringData placeholders"
        for key, value in doc["stringData"].items():
            assert PLACEHOLDER in str(value), f"{doc['metadata']['name']}.{key} is not a placeholder"


def test_keda_scales_the_worker_on_the_celery_queue_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmworker import celery_app

    docs = yaml_docs("keda-scaledobject.yaml")
    scaled = one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "dmworker-worker"
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
    one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    # The Redis key of the queue, as the Celery app configures kombu for the shipped prefix.
    prefix = one(yaml_docs("configmap.yaml"), "ConfigMap")["data"].get("DMWORKER_KEY_PREFIX", "dmw")
    settings = Settings.from_env(
        {"DMWORKER_REDIS_URL": "redis://redis:6379/0", "DMWORKER_KEY_PREFIX": prefix}
    )
    monkeypatch.setattr(celery_app, "get_runtime", lambda: SimpleNamespace(settings=settings))
    conf = celery_app.celery_config()
    key = conf.get("broker_transport_options", {}).get("global_keyprefix", "") + conf["task_default_queue"]
    assert trigger["metadata"]["listName"] == key
    keda = (K8S / "keda-scaledobject.yaml").read_text()
    assert "dmworker_lanes_backlog" in keda and "dmworker_lane_backlog" not in keda  # deprecated name


# =========================================================================== tests: commands
def test_command_extraction() -> None:
    def progs(text: str) -> list[tuple[str, tuple[str, ...]]]:
        return [program(c.argv) for c in commands_from("t", text)]

    assert progs("sh -c 'exec dmworker worker --concurrency 4'")[-1] == (
        "dmworker",
        ("worker", "--concurrency", "4"),
    )
    assert progs("env A=1 /opt/v/bin/dmworker scheduler && python -m dmworker web") == [
        ("dmworker", ("scheduler",)),
        ("dmworker", ("web",)),
    ]
    assert progs("useradd --system dmworker")[0][0] == "useradd"
    assert program(("python3", "-m", "celery", "-A", CELERY_APP, "inspect", "ping")) == (
        "celery",
        ("-A", CELERY_APP, "inspect", "ping"),
    )


def test_deployments_run_web_worker_and_scheduler() -> None:
    runs = {(c.source.split()[0].split(":")[0], args[0]) for c, args in invocations("dmworker") if args}
    assert {("Procfile", "worker"), ("Procfile", "scheduler")} <= runs
    for where in ("deploy/k8s/worker.yaml", "deploy/docker-compose.yml", "deploy/Dockerfile"):
        assert (where, "worker") in runs, where
    for where in ("deploy/k8s/scheduler.yaml", "deploy/docker-compose.yml"):
        assert (where, "scheduler") in runs, where
    gunicorns = {c.source.split()[0] for c, _ in invocations("gunicorn")}
    assert {
        "Procfile",
        "deploy/k8s/web.yaml",
        "deploy/docker-compose.yml",
        "deploy/systemd/dmworker-web.service",
    } <= gunicorns


def test_every_dmworker_subcommand_exists(cli_parser: argparse.ArgumentParser) -> None:
    found = invocations("dmworker")
    assert found
    for cmd, args in found:
        parser, path = cli_parser, ["dmworker"]
        for word in args:
            subs = subparsers_of(parser)
            if not subs or word.startswith("-"):
                break
            assert word in subs, (
                f"{cmd.source}: `{' '.join(path)} {word}` is not a subcommand "
                f"(known: {', '.join(sorted(subs))})"
            )
            parser, path = subs[word], [*path, word]
        assert len(path) > 1, f"{cmd.source}: `{shlex.join(cmd.argv)}` names no subcommand"
        # The whole line parses (action choices like `dlq list`, required arguments, option types).
        # Options the CLI does not know are accepted only by a subcommand that passes its remaining
        # arguments on (`worker` to `celery worker`: a REMAINDER positional).
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                _, unknown = cli_parser.parse_known_args(list(args))
            except SystemExit as e:
                pytest.fail(f"{cmd.source}: `{shlex.join(cmd.argv)}` does not parse: {err.getvalue()} ({e})")
        passes_on = any(a.nargs == argparse.REMAINDER for a in parser._actions if not a.option_strings)
        assert not unknown or passes_on, f"{cmd.source}: `{' '.join(path)}` does not know {unknown}"


def test_every_gunicorn_serves_the_app_factory() -> None:
    for cmd, args in invocations("gunicorn"):
        assert APP_FACTORY in args, f"{cmd.source}: gunicorn must serve {APP_FACTORY!r}: {args}"
        # One process per pod/unit: /metrics' per-process counters then describe what is scraped.
        workers = [args[i + 1] for i, w in enumerate(args[:-1]) if w in ("--workers", "-w")]
        assert workers in ([], ["1"]), f"{cmd.source}: gunicorn --workers {workers}: run one process"


def test_every_celery_names_the_dmworker_app() -> None:
    for cmd, args in invocations("celery"):
        apps = [args[i + 1] for i, w in enumerate(args[:-1]) if w in ("-A", "--app")]
        apps += [w.split("=", 1)[1] for w in args if w.startswith("--app=")]
        assert apps, f"{cmd.source}: celery without -A {CELERY_APP}"
        assert all(a.split(":")[0] == CELERY_APP for a in apps), f"{cmd.source}: {apps}"


# =========================================================================== tests: settings
def test_every_mentioned_setting_exists() -> None:
    known = known_settings() | suite_knobs()
    files = [*deploy_files(), PROCFILE, *sorted(DOCS.glob("*.md"))]
    for path in files:
        unknown = set(SETTING_NAME.findall(path.read_text())) - known
        assert not unknown, f"{rel(path)} mentions settings that do not exist: {sorted(unknown)}"


def test_configuration_doc_lists_every_setting() -> None:
    doc = (DOCS / "configuration.md").read_text()
    rows = {m for line in doc.splitlines() if line.startswith("|") for m in SETTING_NAME.findall(line)}
    missing = known_settings() - rows
    assert not missing, f"docs/configuration.md has no table row for {sorted(missing)}"


def test_configuration_doc_accounts_example_loads(tmp_path: Path) -> None:
    doc = (DOCS / "configuration.md").read_text()
    blocks = re.findall(r"^```json\n(.*?)^```", doc, re.M | re.S)
    assert blocks, "docs/configuration.md shows no ```json accounts file example"
    path = tmp_path / "accounts.json"
    path.write_text(blocks[0])
    settings = Settings.from_env({"DMWORKER_ACCOUNTS_FILE": str(path)})
    assert settings.accounts
    assert any(a.rates for a in settings.accounts.values())


def test_env_example_and_compose_configuration_load() -> None:
    env = parse_env_file((SYSTEMD / "dmworker.env.example").read_text())
    for name, value in env.items():
        assert name in known_settings(), name
        if SECRET_NAME.search(name) and "URL" not in name:
            assert PLACEHOLDER in value, f"{name} must be a {PLACEHOLDER} placeholder"
    settings = Settings.from_env(env)
    assert settings.default_account in settings.accounts
    compose = load_yaml(DEPLOY / "docker-compose.yml")[0]
    for name in PROCESS_TYPES:
        merged = {**env, **{k: str(v) for k, v in compose["services"][name]["environment"].items()}}
        assert Settings.from_env(merged).redis_url == "redis://redis:6379/0"


def test_every_k8s_process_that_reads_the_registry_gets_the_secret_key() -> None:
    # Web, worker and scheduler all read registry accounts (the scheduler refreshes their tokens):
    # each gets DMWORKER_SECRET_KEY from the dmworker-secrets Secret; optional, since without a
    # registry the key may be unset.
    for name, spec in pod_specs().items():
        container = spec["containers"][0]
        whole = any(
            s.get("secretRef", {}).get("name") == "dmworker-secrets" for s in container.get("envFrom", [])
        )
        refs = [
            v["valueFrom"]["secretKeyRef"]
            for v in container.get("env", [])
            if v["name"] == "DMWORKER_SECRET_KEY" and "secretKeyRef" in v.get("valueFrom", {})
        ]
        assert whole or refs, f"{name}: no DMWORKER_SECRET_KEY from the dmworker-secrets Secret"
        for ref in refs:
            assert (ref["name"], ref["key"], ref.get("optional")) == (
                "dmworker-secrets",
                "DMWORKER_SECRET_KEY",
                True,
            ), f"{name}: {ref}"
