""":class:`SandboxProcess`: the sandbox in a child process (``python -m dmworker.sandbox``).

For chaos tests: ``kill()`` is SIGKILL; ``start()`` again binds the same port as before (the port
chosen by the first start when ``port=0``), so clients keep their configured URL. Tokens reach the
child through an environment variable, not its command line.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from .cli import TOKENS_ENV
from .control import SandboxControl

BANNER = "dmworker sandbox listening on "


class SandboxProcess:
    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        port: int = 0,
        latency_ms: float = 0.0,
        enforce_windows: bool = True,
        extra_args: Sequence[str] = (),
        host: str = "127.0.0.1",
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.tokens = dict(tokens or {})
        self.host, self.port = host, port
        self.latency_ms, self.enforce_windows = latency_ms, enforce_windows
        self.extra_args = tuple(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self._popen: subprocess.Popen[bytes] | None = None
        self._control: SandboxControl | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control(self) -> SandboxControl:
        if self._control is None:
            self._control = SandboxControl(self.url)
        return self._control

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> SandboxProcess:
        if self.running():
            raise RuntimeError("the sandbox process is already running")
        self._reap()
        cmd = [
            sys.executable,
            "-m",
            "dmworker.sandbox",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--latency-ms",
            str(self.latency_ms),
            *(() if self.enforce_windows else ("--no-windows",)),
            *self.extra_args,
        ]
        env = {**os.environ, TOKENS_ENV: json.dumps(self.tokens)}
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            self._popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
            line = self._first_line(deadline)
            if line.startswith(BANNER):
                break
            code = self._reap()
            if time.monotonic() >= deadline or self.port == 0:
                raise RuntimeError(f"the sandbox did not start (exit code {code}, said {line!r})")
            time.sleep(0.1)  # the port may still be held for a moment after a kill: try again
        self.port = int(line[len(BANNER) :].rsplit(":", 1)[1])
        if self._control is not None and self._control.url != self.url:
            self._control.close()
            self._control = None
        return self

    def _first_line(self, deadline: float) -> str:
        assert self._popen is not None and self._popen.stdout is not None
        fd = self._popen.stdout.fileno()
        data = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in data:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    break
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\n", 1)[0].decode("utf-8", "replace")

    def _reap(self, sig: int | None = None, timeout_s: float = 5.0) -> int | None:
        popen, self._popen = self._popen, None
        if popen is None:
            return None
        if sig is not None and popen.poll() is None:
            popen.send_signal(sig)
        try:
            code = popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            popen.kill()
            code = popen.wait()
        if popen.stdout is not None:
            popen.stdout.close()
        return code

    def stop(self) -> int | None:
        """SIGTERM, wait (SIGKILL after 5 s). Returns the exit code (None if not started)."""
        code = self._reap(signal.SIGTERM)
        if self._control is not None:
            self._control.close()
        return code

    def kill(self) -> int | None:
        """SIGKILL at once (a crash): in-flight requests get no answer."""
        return self._reap(signal.SIGKILL)

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
