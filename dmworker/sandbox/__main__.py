"""``python -m dmworker.sandbox --host 127.0.0.1 --port N [--token T=ACCOUNT ...] [--latency-ms X]
[--no-windows]``: see :mod:`dmworker.sandbox.cli`."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
