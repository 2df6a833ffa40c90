"""An in-memory `Transport` for relay tests, with fault controls and ordering checks.

It records every delivered message, every call, and every time two messages with the same
(topic, key) were in flight at once (which the relay must never do).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hooks import Message, Outcome, SendResult

__all__ = ["FakeTransport"]


@dataclass(frozen=True, slots=True)
class Call:
    topics: tuple[str, ...]
    size: int
    outcome: str


class FakeTransport:
    def __init__(self, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.delivered: list[Message] = []
        self.calls: list[Call] = []
        # (topic, key) pairs seen in flight twice at once: must stay empty.
        self.overlaps: list[tuple[str, str]] = []
        self._in_flight: set[tuple[str, str]] = set()
        self.down = False  # every message: TRANSIENT (connection refused)
        self.refuse_topics: dict[str, int] = {}  # topic -> HTTP status of a PERMANENT refusal
        self.fail_fraction = 0.0  # per call: the whole call fails with a 500
        self.fail_ids: set[str] = set()  # these messages fail with a 503 (TRANSIENT)
        self.delay = 0.0
        self.hung: asyncio.Event | None = None  # when set to an unset Event, calls wait on it

    # --- the Transport protocol -------------------------------------------------------------------

    async def send(self, messages: Sequence[Message], /) -> Sequence[SendResult]:
        keys = [(m.topic, m.key) for m in messages]
        with self._lock:
            for key in keys:
                if key in self._in_flight:
                    self.overlaps.append(key)
            if len(set(keys)) != len(keys):
                self.overlaps.extend(k for k in keys if keys.count(k) > 1)
            self._in_flight.update(keys)
        try:
            if self.hung is not None:
                await self.hung.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            return self._answer(messages)
        finally:
            with self._lock:
                self._in_flight.difference_update(keys)

    def _answer(self, messages: Sequence[Message]) -> list[SendResult]:
        topics = tuple(sorted({m.topic for m in messages}))
        with self._lock:
            if self.down:
                self.calls.append(Call(topics, len(messages), "down"))
                return [SendResult(Outcome.TRANSIENT, "connection refused")] * len(messages)
            if self.fail_fraction and self._random.random() < self.fail_fraction:
                self.calls.append(Call(topics, len(messages), "500"))
                return [SendResult(Outcome.TRANSIENT, "emulated failure", 500)] * len(messages)
            results = []
            for message in messages:
                status = self.refuse_topics.get(message.topic)
                if message.id in self.fail_ids:
                    results.append(SendResult(Outcome.TRANSIENT, "emulated 503", 503))
                elif status is not None:
                    results.append(SendResult(Outcome.PERMANENT, "forbidden", status))
                else:
                    self.delivered.append(message)
                    results.append(SendResult(Outcome.OK, status=204))
            self.calls.append(Call(topics, len(messages), "ok"))
            return results

    # --- reading ----------------------------------------------------------------------------------

    def snapshot(self) -> list[Message]:
        with self._lock:
            return list(self.delivered)

    def per_key(self) -> dict[tuple[str, str], list[str]]:
        """Delivered message ids per (topic, key), in delivery order."""
        out: dict[tuple[str, str], list[str]] = {}
        for m in self.snapshot():
            out.setdefault((m.topic, m.key), []).append(m.id)
        return out
