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
