"""When the relay tries again: the one back-off and pause policy (T-016). A failure is
charged to the narrowest cause: the whole relay (nothing got through), a topic (all of its
messages refused as configuration errors) or the row itself (docs/relay.md, "Failures").
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hooks._store import OutboxRow
from hooks._types import HooksError, Outcome, SendResult

__all__ = ["RelayConfigError", "Schedule", "Settlement", "describe"]


class RelayConfigError(HooksError, ValueError):
    """A relay parameter is out of range; the message names it."""


def positive(name: str, value: float, *, zero_ok: bool = False) -> float:
    if value < 0 or (value == 0 and not zero_ok):
        raise RelayConfigError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return value


@dataclass(slots=True)
class Settlement:
    """What one round's answers mean for the outbox: rows to delete, rows to retry later."""

    delete: list[int] = field(default_factory=list)
    retry: list[dict[str, Any]] = field(default_factory=list)
    delivered: list[OutboxRow] = field(default_factory=list)
    failures: list[tuple[OutboxRow, SendResult]] = field(default_factory=list)

    def merged(self, other: Settlement) -> Settlement:
        """Both rounds' rows to record (the counts were taken when each was settled)."""
        if not (self.delete or self.retry):
            return other
        return Settlement(self.delete + other.delete, self.retry + other.retry)


class Schedule:
    """Back-off for rows, topics and the whole relay; `base`..`cap` seconds, with jitter."""

    def __init__(self, *, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.cap = positive("max_backoff", cap)
        self.base = min(positive("base_backoff", base), self.cap)
        self._random = rng or random.Random()
        self.pause_until = 0.0  # monotonic
        self.streak = 0  # rounds in a row where nothing got through
        self._topics: dict[str, tuple[float, int]] = {}  # topic -> (until, streak)

    def backoff(self, attempt: int) -> float:
        """In [d/2, d], d = base * 2^(attempt-1), capped."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt - 1, 60))
        return self._random.uniform(ceiling / 2, ceiling)

    def paused_for(self) -> float:
        return max(0.0, self.pause_until - time.monotonic())

    def paused_topics(self) -> frozenset[str]:
        now = time.monotonic()
        return frozenset(t for t, (until, _) in self._topics.items() if until > now)

    def next_topic_resume(self) -> float | None:
        """Seconds until the first topic pause ends, if any."""
        now = time.monotonic()
        ends = [until - now for until, _ in self._topics.values() if until > now]
        return min(ends) if ends else None

    def pause(self) -> float:
        """One more round where nothing got through: pause the relay; returns the seconds."""
        self.streak += 1
        seconds = self.backoff(self.streak)
        self.pause_until = time.monotonic() + seconds
        return seconds

    def resume(self) -> None:
        """Forget every pause (`pakaura outbox retry`, or the sidecar is back)."""
        self.pause_until = 0.0
        self.streak = 0
        self._topics.clear()

    def settle(
        self, rows: Sequence[OutboxRow], results: Sequence[SendResult], now: datetime
    ) -> Settlement:
        if all(r.outcome is Outcome.OK for r in results):  # the usual round, row by row no more
            self.streak = 0
            for topic in {r.message.topic for r in rows} if self._topics else ():
                self._topics.pop(topic, None)
            return Settlement([r.seq for r in rows], delivered=list(rows))
        out = Settlement()
        refused: dict[str, bool] = {}  # topic -> every message refused as PERMANENT so far
        for row, result in zip(rows, results, strict=True):
            topic = row.message.topic
            if result.outcome is Outcome.OK:
                out.delete.append(row.seq)
                out.delivered.append(row)
                refused[topic] = False
                self._topics.pop(topic, None)
            else:
                out.failures.append((row, result))
                refused[topic] = refused.get(topic, True) and result.outcome is Outcome.PERMANENT
        if not out.failures:
            self.streak = 0
            return out
        mono = time.monotonic()
        charged = {t for t, all_refused in refused.items() if all_refused}
        for topic in charged:
            _, streak = self._topics.get(topic, (0.0, 0))
            self._topics[topic] = (mono + self.backoff(streak + 1), streak + 1)
        if out.delete:
            self.streak = 0
        else:
            self.pause()
            charged = set(refused)
        for row, result in out.failures:
            # Rows of a paused topic or relay stay due: the pause already spaces their retry.
            delay = 0.0 if row.message.topic in charged else self.backoff(row.attempts + 1)
            out.retry.append(
                {
                    "b_seq": row.seq,
                    "b_error": describe(result),
                    "b_next": now + timedelta(seconds=delay),
                }
            )
        return out


def describe(result: SendResult) -> str:
    text = result.error or result.outcome.value
    if result.status is not None:
        text = f"HTTP {result.status}: {text}"
    return text[:1000]
