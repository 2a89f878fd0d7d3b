"""Run a cdrpipe faust app (`cdrpipe privacy worker`, `cdrpipe aggregates worker`) as a child process.

For the demo, the latency bench and the integration tests: they need the real command in its own
process (so it can be SIGKILLed like a crashed pod), started, waited for until ``/health``
answers 200, and stopped by its pid — never by name, so other people's workers on the machine
are left alone. The child dies with its parent (PR_SET_PDEATHSIG on Linux), so a failed test
run leaves no worker behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO


class AppProcessError(RuntimeError):
    """The app exited or did not become healthy; the message carries its log's tail."""


def _pdeathsig() -> None:  # pragma: no cover  (runs in the child)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class AppProcess:
    """``python -m pipeline.cli <args>`` with its output in ``log_path`` and /health on ``web_port``."""

    def __init__(self, args: Sequence[str], *, web_port: int, log_path: str | os.PathLike[str],
                 env: Mapping[str, str] | None = None, log_level: str = "INFO") -> None:
        self.args = [sys.executable, "-m", "pipeline.cli", "--log-level", log_level, *args]
        self.web_port = web_port
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, healthy_within: float | None = 60.0) -> "AppProcess":
        """Launch; with ``healthy_within`` block until /health is 200 (raises AppProcessError)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
        if healthy_within is not None:
            self.wait_healthy(healthy_within)
        return self

    def health(self) -> int | None:
        """HTTP status of /health, or None when nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return None

    def metrics(self) -> str:
        """The /metrics text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise AppProcessError(f"the app exited with {self.proc.returncode if self.proc else None}:\n"
                                      f"{self.log_tail()}")
            if self.health() == 200:
                return
            time.sleep(0.25)
        raise AppProcessError(f"/health was not 200 within {timeout:g} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, like a node failure: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self._log is not None:
            self._log.close()
            self._log = None
        return int(self.proc.returncode)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "AppProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.terminate()
