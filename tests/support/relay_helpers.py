"""Helpers for relay tests and benchmarks: an outbox on its own metadata, rows written as the
outbox writer writes them (one transaction, optional NOTIFY), and polling with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from hooks import OutboxRelay, Transport, WakeSignal, build_outbox_table, utc_now
from tests.support.databases import wipe_postgres_schema

__all__ = [
    "TOPICS",
    "Outbox",
    "count_rows",
    "eventually",
    "expected_order",
    "interleaved",
    "make_outbox",
    "outbox_on",
    "outbox_rows",
    "quick_relay",
    "wait_until",
    "write_events",
]

TOPICS = ("task-events", "task-updates", "reminders")


Outbox = tuple[sa.Engine, sa.Table]


def make_outbox(url: str, *, name: str = "event_outbox", wipe: bool = False) -> Outbox:
    """An engine on `url` and a freshly created outbox table on it.

    `wipe` empties a PostgreSQL database first (the session's scratch database, for tests
    that take `pg_database_url` instead of the `db_url` fixture, which wipes it itself).
    """
    sa_url = sa.make_url(url)
    if wipe and sa_url.get_backend_name() == "postgresql":
        wipe_postgres_schema(sa_url)
    if sa_url.get_backend_name() == "sqlite":
        engine = sa.create_engine(sa_url, connect_args={"check_same_thread": False, "timeout": 30})
    else:
        engine = sa.create_engine(sa_url, pool_size=5)
    metadata = sa.MetaData()
    table = build_outbox_table(metadata, name)
    metadata.create_all(engine)
    return engine, table


def event_body(event_id: str, topic: str, key: str, index: int) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "relay-tests",
            "type": f"{topic}.test",
            "subject": key,
            "datacontenttype": "application/json",
            "partitionkey": key,
            "data": {"task_id": key, "n": index},
        }
    )


def write_events(
    engine: sa.Engine | sa.Connection,
    table: sa.Table,
    events: Iterable[tuple[str, str]],
    *,
    notify: str | None = None,
    rollback: bool = False,
    delay_seconds: float = 0.0,
    commit: bool = True,
) -> list[str]:
    """Inserts one row per (topic, key) in one transaction; returns the event ids in order.

    `notify` sends `pg_notify(notify, '')` inside the transaction, as the outbox writer does.
    `rollback` rolls the transaction back instead of committing. `delay_seconds` makes the
    rows due only that much later. Given a connection with `commit=False`, the rows are
    inserted in its open transaction and left uncommitted.
    """
    now = utc_now()
    rows: list[dict[str, Any]] = []
    for index, (topic, key) in enumerate(events):
        event_id = str(uuid.uuid4())
        rows.append(
            {
                "event_id": event_id,
                "topic": topic,
                "partition_key": key,
                "payload": event_body(event_id, topic, key, index),
                "created_at": now,
                "next_attempt_at": now + timedelta(seconds=delay_seconds),
            }
        )
    if isinstance(engine, sa.Connection):
        engine.execute(sa.insert(table), rows)
        if commit:
            engine.commit()
        return [r["event_id"] for r in rows]
    with engine.connect() as conn:
        trans = conn.begin()
        if rows:
            conn.execute(sa.insert(table), rows)
        if notify is not None:
            conn.execute(sa.select(sa.func.pg_notify(notify, "")))
        if rollback:
            trans.rollback()
        else:
            trans.commit()
    return [r["event_id"] for r in rows]


@contextmanager
def outbox_on(url: str, *, wipe: bool = False) -> Iterator[Outbox]:
    """`make_outbox` whose engine is disposed afterwards."""
    engine, table = make_outbox(url, wipe=wipe)
    try:
        yield engine, table
    finally:
        engine.dispose()


def count_rows(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def outbox_rows(engine: sa.Engine, table: sa.Table) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(table.c.seq)).all())


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Awaits until `predicate()` is true; fails the test with a time-out otherwise."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """The blocking form of `eventually`, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def interleaved(keys: int, per_key: int, topics: tuple[str, ...] = TOPICS) -> list[tuple[str, str]]:
    """Events of `keys` tasks, each key's events spread through the sequence, on every topic."""
    return [(topic, f"task-{k}") for _ in range(per_key) for k in range(keys) for topic in topics]


def expected_order(
    events: list[tuple[str, str]], ids: list[str]
) -> dict[tuple[str, str], list[str]]:
    """Event ids per (topic, key) in commit order: what a consumer must see per partition."""
    out: dict[tuple[str, str], list[str]] = {}
    for event, event_id in zip(events, ids, strict=True):
        out.setdefault(event, []).append(event_id)
    return out


def quick_relay(outbox: Outbox, transport: Transport, **options: Any) -> OutboxRelay:
    """A relay with test-sized intervals (tens of milliseconds); `options` override them."""
    engine, table = outbox
    settings: dict[str, Any] = {
        "wake": WakeSignal(),
        "poll_interval": 0.05,
        "base_backoff": 0.01,
        "max_backoff": 0.1,
        "standby_interval": 0.05,
        "ready_interval": 0.05,
        "drain_timeout": 1.0,
    }
    settings.update(options)
    return OutboxRelay(engine, table, transport, **settings)
