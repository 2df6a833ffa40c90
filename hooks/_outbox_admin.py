"""Looking at and nudging the outbox from outside the relay (`pakaura outbox status|retry`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from hooks._leader import describe_leader
from hooks._outbox import DEFAULT_NOTIFY_CHANNEL
from hooks._sqltypes import utc_now
from hooks._wakeups import RETRY_NOTIFY_PAYLOAD

__all__ = ["OutboxStatus", "outbox_retry", "outbox_status"]


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    backlog: int
    oldest_pending_age_seconds: float | None
    # Events that failed at least once and wait for another attempt.
    retrying: int
    max_attempts: int
    last_error: str | None
    # Who relays now ("pakaura-relay HOST pid N …"), None when no relay runs.
    leader: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backlog": self.backlog,
            "oldest_pending_age_seconds": self.oldest_pending_age_seconds,
            "retrying": self.retrying,
            "max_attempts": self.max_attempts,
            "last_error": self.last_error,
            "leader": self.leader,
        }

    def lines(self) -> list[str]:
        age = self.oldest_pending_age_seconds
        return [
            f"backlog: {self.backlog} events",
            f"oldest pending: {'-' if age is None else f'{age:.1f} s'}",
            f"retrying: {self.retrying} events (max attempts {self.max_attempts})",
            f"last error: {self.last_error or '-'}",
            f"relay leader: {self.leader or 'none running'}",
        ]


def outbox_status(
    engine: sa.Engine, table: sa.Table, *, now: datetime | None = None
) -> OutboxStatus:
    """Backlog, oldest pending age, retry state and the current relay leader."""
    t = table
    with engine.connect() as conn:
        count, retrying, max_attempts = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(t.c.attempts > 0),
                sa.func.coalesce(sa.func.max(t.c.attempts), 0),
            )
        ).one()
        oldest = conn.execute(sa.select(t.c.created_at).order_by(t.c.seq).limit(1)).scalar()
        last_error = conn.execute(
            sa.select(t.c.last_error).where(t.c.last_error.is_not(None)).order_by(t.c.seq).limit(1)
        ).scalar()
    age = None
    if oldest is not None:
        age = round(max(0.0, ((now or utc_now()) - oldest).total_seconds()), 3)
    return OutboxStatus(
        backlog=int(count),
        oldest_pending_age_seconds=age,
        retrying=int(retrying),
        max_attempts=int(max_attempts),
        last_error=last_error,
        leader=describe_leader(engine, t.name),
    )


def outbox_retry(
    engine: sa.Engine,
    table: sa.Table,
    *,
    notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
    now: datetime | None = None,
) -> int:
    """Makes every event that failed before due now; returns how many.

    On PostgreSQL the running relay is told at once (NOTIFY) and drops its back-off pauses;
    elsewhere it picks the events up at its next attempt (at most `max_backoff` later).
    """
    t = table
    with engine.begin() as conn:
        count = conn.execute(
            sa.update(t).where(t.c.attempts > 0).values(next_attempt_at=now or utc_now())
        ).rowcount
        if notify_channel is not None and conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(notify_channel, RETRY_NOTIFY_PAYLOAD)))
    return int(count)
