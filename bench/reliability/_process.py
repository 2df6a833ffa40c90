"""The API as a real subprocess (`python -m src.cli serve`), so SIGKILL is a real crash.

Output of every incarnation is appended to one log file: the secret scan reads it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["ApiProcess", "ApiStartError", "free_port", "random_secret"]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Inherited variables that would change the API's settings behind the harness's back.
_SETTING_PREFIXES = (
    "DAPR_",
    "TOPIC_",
    "RELAY_",
    "LOG_",
    "EVENTS_",
    "MCP_",
    "DATABASE_",
    "JWT_",
    "PYTEST",
)
_SETTING_NAMES = {"BETTER_AUTH_SECRET", "APP_ENV"}


def _inherited_environment() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_SETTING_PREFIXES) and k not in _SETTING_NAMES
    }


class ApiStartError(RuntimeError):
    """The API process exited or did not answer `/health` in time; the log tail is attached."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def random_secret(length: int = 48) -> str:
    """A random printable secret (URL-safe alphabet) of exactly `length` characters."""
    return secrets.token_urlsafe(length)[:length]


class ApiProcess:
    """One API server process; `kill()` sends SIGKILL, `start()` brings up a new incarnation."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        workdir: Path,
        port: int | None = None,
        log_path: Path | None = None,
        name: str = "api",
        command: tuple[str, ...] = ("serve",),
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.name = name
        self.log_path = log_path or workdir / f"{name}.log"
        self._command = command
        self._env = {
            **_inherited_environment(),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "api"), str(REPO_ROOT)]),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> ApiProcess:
        if self.alive():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "src.cli", *self._command]
        if self._command == ("serve",):
            args += ["--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals reach it; a Ctrl-C of the harness does not
            )
        self.starts += 1
        if wait and self._command == ("serve",):
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until `/health` answers at all (200, or 503 while the database is down)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise ApiStartError(
                    f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code in (200, 503):
                    return
            time.sleep(0.05)
        raise ApiStartError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like an OOM kill or a node loss."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)
            self.kills += 1

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), SIGKILL after `timeout`."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, *, hard: bool = True) -> None:
        self.kill() if hard else self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
