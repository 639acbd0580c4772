"""The package as a user gets it: a license, SPDX metadata without deprecation warnings, an sdist
with what the README links to (and no tests), a wheel that installs and runs (a real build)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real processes: the full suite and CI run it

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ("dmworker", "docs", "README.md", "LICENSE", "MANIFEST.in", "pyproject.toml")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """sdist and wheel built from a copy of the source (``python -m build``, this environment's
    setuptools), and the build's output."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCE:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy(path, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    yield tmp / "dist", out.stdout + out.stderr


def _one(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_license_file_and_spdx_metadata(dist):
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the dmworker authors" in text
    with zipfile.ZipFile(_one(dist[0], "*.whl")) as whl:
        names = whl.namelist()
        meta = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "License-File: LICENSE" in meta
    assert not re.search(r"(?m)^License: ", meta)  # the deprecated free-text field
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_build_has_no_deprecation_warnings(dist):
    output = dist[1]
    assert "SetuptoolsDeprecationWarning" not in output and "deprecated" not in output.lower(), output


def test_the_sdist_ships_what_the_readme_links_to_and_no_tests(dist):
    with tarfile.open(_one(dist[0], "*.tar.gz")) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    links = re.findall(r"\]\(([^)#:]+)\)", (ROOT / "README.md").read_text())  # relative links
    assert links, "the README has relative links to check"
    assert all(link in names for link in links), sorted(set(links) - names)
    assert {"LICENSE", "README.md", "pyproject.toml", "dmworker/lua/step.lua"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/"))]


def test_the_wheel_installs_and_runs(dist, tmp_path):
    target = tmp_path / "site"
    wheel = _one(dist[0], "*.whl")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env["PYTHONPATH"] = str(target)
    ran = subprocess.run(
        [sys.executable, "-m", "dmworker.cli", "--version"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and ran.stdout.startswith("dmworker "), ran.stderr
    lua = subprocess.run(
        [sys.executable, "-c", "import dmworker, pathlib; print(pathlib.Path(dmworker.__file__).parent)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    installed = Path(lua.stdout.strip())
    assert installed.is_relative_to(target) and (installed / "lua" / "step.lua").exists()


def test_the_readme_says_how_to_install_before_the_package_is_published():
    install = (ROOT / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    assert "git+https://" in install  # from a git URL
    assert re.search(r"dmworker-[\w.]+-py3-none-any\.whl\[web\]", install)  # from a built wheel
    assert "python -m build" in install


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"\*\*Set up and run the tests\*\*.*?```bash\n(.+?)\n```", readme, re.S)
    assert command is not None
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] != "#"]
    assert ci[-1] == command.group(1).strip()


def test_the_readme_lag_figure_says_under_what_load():
    readme = " ".join((ROOT / "README.md").read_text().split())
    lag = re.search(r"Lag after the due time.*?not a test assertion", readme)
    assert lag is not None and "load average" in lag.group(0) and "p99" in lag.group(0)
