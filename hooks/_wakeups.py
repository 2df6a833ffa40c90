"""What wakes the relay (T-016): a commit in this process (`WakeSignal`), a NOTIFY from any
process (`NotifyListener`, PostgreSQL), or the poll interval (the time-out of `wait`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from loguru import logger

__all__ = ["RETRY_NOTIFY_PAYLOAD", "NotifyListener", "WakeSignal"]

# `outbox_retry` sends this payload on the channel: the leader forgets its pauses at once.
RETRY_NOTIFY_PAYLOAD = "retry"


class WakeSignal:
    """`notify()` is cheap, thread-safe, coalesced (many commits between two rounds cost one
    loop call) and never raises: the outbox writer calls it in `after_commit`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = False  # a _fire is scheduled on the loop
        self._set = False  # notified since the last wait returned
        self._waiter: asyncio.Future[bool] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Binds the signal to the running loop of the relay that waits on it."""
        with self._lock:
            self._loop = loop or asyncio.get_running_loop()
            self._pending = self._set = False

    def detach(self) -> None:
        with self._lock:
            self._loop = None
            self._pending = self._set = False

    def notify(self) -> None:
        try:
            with self._lock:
                loop = self._loop
                if loop is None or self._pending:
                    return
                self._pending = True
            if loop.is_closed():
                return
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._fire()
            else:
                loop.call_soon_threadsafe(self._fire)
        except Exception:  # a wake-up must never break a commit
            return

    def _fire(self) -> None:  # on the loop
        with self._lock:
            self._pending = False
        self._set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def wait(self, timeout: float) -> bool:
        """True when woken by a notify, False after `timeout` seconds. One future and one timer
        (`asyncio.wait_for` would make a task per round, a measurable share of its cost)."""
        if self._set:
            self._set = False
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, _resolve, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._set = False


def _resolve(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class NotifyListener:
    """LISTENs on `channel` on a connection of `engine`, in a daemon thread, until `stop()`;
    reconnects after a failure. The payload RETRY_NOTIFY_PAYLOAD calls `on_retry`, any other
    notifies `wake`."""

    def __init__(
        self, engine: sa.Engine, channel: str, wake: WakeSignal, on_retry: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.channel = channel
        self._wake = wake
        self._on_retry = on_retry
        self._stopped = threading.Event()
        # Set once LISTEN is in place: the relay's first round waits for it (bounded), so no
        # commit falls between its first read and the first notification it can hear.
        self.listening = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-relay-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        delay = 0.5
        while not self._stopped.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception as exc:  # polling covers the gap
                logger.bind(channel=self.channel, error=f"{type(exc).__name__}: {exc}").warning(
                    "outbox relay lost its LISTEN connection; reconnecting"
                )
                self._stopped.wait(delay)
                delay = min(delay * 2, 10.0)

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            if not hasattr(driver, "notifies"):  # not psycopg 3: polling only
                self._stopped.wait()
                return
            driver.autocommit = True
            quoted = self.engine.dialect.identifier_preparer.quote(self.channel)
            driver.execute(f"LISTEN {quoted}")
            if self.listening.is_set():
                self._wake.notify()  # a reconnect: commits while we were not listening
            self.listening.set()
            while not self._stopped.is_set():
                for note in driver.notifies(timeout=0.5):
                    if note.payload == RETRY_NOTIFY_PAYLOAD:
                        self._on_retry()
                    else:
                        self._wake.notify()
        finally:
            # LISTEN state and autocommit must not go back to the application's pool.
            raw.invalidate()
            raw.close()
