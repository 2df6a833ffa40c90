"""The API's outbox relay as a child process at lower CPU priority (issue 15, T-016).

A relay round's CPU no longer lands on the API's requests: the child runs on an idle core, and
when CPU is short the kernel serves requests first (events then leave in bigger batches). The
parent (`RelayProcess`) restarts the child if it dies and stops it by closing its stdin, which a
killed API closes too; the child (`main()`) reports its status on stdout. See docs/relay.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest

from src.config import Settings, get_settings

if TYPE_CHECKING:
    from hooks import OutboxRelay
    from src.events.relay_service import Watch

__all__ = ["RelayProcess", "child_environment", "main"]

REPORT_EVERY = 1.0  # seconds between status lines, sooner when the state changes
_MAX_RESTART_DELAY = 30.0
_STATUS_LINE_LIMIT = 4 * 1024 * 1024


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives the child the parent's settings, whatever their source."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    for name, value in settings:
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        json_typed = isinstance(value, (bool, int, float, list, dict))
        env[name.upper()] = orjson.dumps(value).decode() if json_typed else str(value)
    return env


class RelayProcess:
    """Runs and supervises the child relay; `status()` and `metrics()` are its last report."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._report: dict[str, Any] = {}
        self.restarts = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="relay-process")

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = dict(self._report.get("status") or {"state": "starting"})
        proc = self._proc
        pid = proc.pid if proc is not None and proc.returncode is None else None
        status["process"] = {"pid": pid, "restarts": self.restarts}
        return status

    def metrics(self) -> bytes:
        """The child's relay metrics in Prometheus text form (empty before its first report)."""
        return str(self._report.get("metrics", "")).encode()

    async def _supervise(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code: int | str | None = await self._run_once()
            except OSError as exc:  # could not start it at all (e.g. out of processes)
                code = type(exc).__name__
            if self._stopping.is_set():
                return
            self.restarts += 1
            delay = 1.0 if time.monotonic() - started > 60 else delay
            logger.bind(relay_state="restarting").error(
                f"relay process ended ({code}); starting it again in {delay:.0f} s"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, _MAX_RESTART_DELAY)

    async def _run_once(self) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "src.events.relay_process",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=child_environment(self._settings),
            # Ctrl-C in a terminal goes to the API, which then stops the child by its stdin.
            start_new_session=True,
            limit=_STATUS_LINE_LIMIT,
        )
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        if self._stopping.is_set():  # stop() came while it was starting
            proc.stdin.close()
        async for line in proc.stdout:
            with contextlib.suppress(orjson.JSONDecodeError):
                self._report = orjson.loads(line)
        self._report = {}  # a dead child's last state is no longer true: "starting" again
        return await proc.wait()

    async def stop(self) -> None:
        """Closes the child's stdin: it drains for RELAY_DRAIN_TIMEOUT and exits."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(
                asyncio.shield(self._task), self._settings.relay_drain_timeout + 10
            )
        except TimeoutError:
            logger.warning("relay process did not stop in time; killing it")
            if self._proc is not None and self._proc.returncode is None:
                self._proc.kill()
            await self._task


def _reporting(report_fd: int, registry: CollectorRegistry) -> Watch:
    """Writes the relay's status to the parent (on change, at least every REPORT_EVERY
    seconds) and stops the relay when stdin closes: the API process stopped or died."""

    async def watch(relay: OutboxRelay, stop: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def on_stdin() -> None:
            if not os.read(0, 4096):
                loop.remove_reader(0)
                stop()

        loop.add_reader(0, on_stdin)
        last: dict[str, Any] = {}
        sent = 0.0
        while True:
            status = relay.status().as_dict()
            now = time.monotonic()
            if status != last or now - sent >= REPORT_EVERY:
                line = {"status": status, "metrics": generate_latest(registry).decode()}
                os.write(report_fd, orjson.dumps(line) + b"\n")
                last, sent = status, now
            await asyncio.sleep(REPORT_EVERY / 4)

    return watch


def _lower_priority(priority: str) -> None:
    """RELAY_PRIORITY, before any thread starts (threads inherit it). SCHED_IDLE measured
    best for requests (docs/benchmarks.md): the kernel preempts the relay as soon as a
    request's process wants the CPU. POSIX only, as the stdin watch: Linux and macOS."""
    if priority == "normal":
        return
    os.nice(19)
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main() -> None:
    """The child: `python -m src.events.relay_process`, started by `RelayProcess` only."""
    from src.events.relay_service import run_relay_forever

    settings = get_settings()
    _lower_priority(settings.relay_priority)
    # Status lines go to the parent through the original stdout; anything else written to
    # stdout lands on stderr beside the logs.
    report_fd = os.dup(1)
    os.dup2(2, 1)
    registry = CollectorRegistry()  # relay metrics only: the API reports its own process
    run_relay_forever(settings, registry=registry, watch=_reporting(report_fd, registry))


if __name__ == "__main__":
    main()
