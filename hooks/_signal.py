"""A coalesced wake-up from commit hooks (any thread) to a relay's event loop."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["WakeSignal"]


class WakeSignal:
    """`notify()` is cheap, thread-safe, coalesced and never raises: it runs in `after_commit`.

    Many commits between two relay rounds cost one loop call, not one per commit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._pending = False

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Binds the signal to the running loop of the relay that waits on it."""
        with self._lock:
            self._loop = loop or asyncio.get_running_loop()
            self._event = asyncio.Event()
            self._pending = False

    def detach(self) -> None:
        with self._lock:
            self._loop = None
            self._event = None
            self._pending = False

    def notify(self) -> None:
        try:
            with self._lock:
                loop, event = self._loop, self._event
                if loop is None or event is None or self._pending:
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

    def _fire(self) -> None:
        with self._lock:
            self._pending = False
            event = self._event
        if event is not None:
            event.set()

    async def wait(self, timeout: float) -> bool:
        """Waits for a notify or `timeout` seconds; True when woken by a notify."""
        event = self._event
        if event is None:
            await asyncio.sleep(timeout)
            return False
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            event.clear()
        return True
