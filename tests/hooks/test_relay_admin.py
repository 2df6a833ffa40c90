"""`outbox_status` / `outbox_retry` (the `pakaura outbox` commands) and the relay's metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest

from hooks import utc_now
from hooks._metrics import RelayMetrics
from hooks._outbox_admin import outbox_retry, outbox_status
from hooks._relay import RelayState
from tests.support.fake_transport import FakeTransport
from tests.support.relay_helpers import (
    Outbox,
    eventually,
    make_outbox,
    outbox_on,
    outbox_rows,
    quick_relay,
    write_events,
)


@pytest.fixture
def outbox(db_url: str) -> Iterator[Outbox]:
    with outbox_on(db_url) as made:
        yield made


def test_status_of_an_empty_outbox_without_relay(outbox: Outbox) -> None:
    status = outbox_status(*outbox)
    assert status.as_dict() == {
        "backlog": 0,
        "oldest_pending_age_seconds": None,
        "retrying": 0,
        "max_attempts": 0,
        "last_error": None,
        "leader": None,
    }
    assert "relay leader: none running" in status.lines()


def test_status_reports_backlog_age_failures_and_the_leader(outbox: Outbox) -> None:
    engine, table = outbox
    write_events(engine, table, [("task-events", "1"), ("task-events", "2"), ("reminders", "1")])
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(table.c.seq))).scalar_one()
        conn.execute(
            sa.update(table)
            .where(table.c.seq == first)
            .values(
                attempts=3,
                last_error="HTTP 403: topic not allowed",
                created_at=utc_now() - timedelta(seconds=90),
            )
        )
    status = outbox_status(engine, table)
    assert status.backlog == 3
    assert status.retrying == 1 and status.max_attempts == 3
    assert status.last_error == "HTTP 403: topic not allowed"
    assert status.oldest_pending_age_seconds is not None
    assert 89 <= status.oldest_pending_age_seconds < 120
    assert status.leader is None

    fake = FakeTransport()
    fake.down = True

    async def with_relay() -> str | None:
        relay = quick_relay(outbox, fake, max_backoff=5.0, base_backoff=5.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        leader = await asyncio.to_thread(lambda: outbox_status(engine, table).leader)
        await relay.stop()
        return leader

    leader = asyncio.run(with_relay())
    assert leader is not None and leader.startswith("pakaura-relay ")


def test_retry_makes_every_failed_event_due_now(outbox: Outbox) -> None:
    engine, table = outbox
    write_events(engine, table, [("task-events", "1"), ("task-events", "2")])
    later = utc_now() + timedelta(hours=1)
    with engine.begin() as conn:
        first = conn.execute(sa.select(sa.func.min(table.c.seq))).scalar_one()
        conn.execute(
            sa.update(table)
            .where(table.c.seq == first)
            .values(attempts=7, next_attempt_at=later, last_error="HTTP 404")
        )
    assert outbox_retry(engine, table) == 1
    now = utc_now()
    rows = outbox_rows(engine, table)
    assert all(r.next_attempt_at <= now for r in rows)
    assert [r.attempts for r in rows] == [7, 0]  # history is kept
    assert outbox_status(engine, table).retrying == 1


@pytest.mark.postgres
def test_retry_ends_the_running_relays_back_off_at_once_on_postgresql(
    pg_database_url: str,
) -> None:
    engine, table = make_outbox(pg_database_url, wipe=True)
    fake = FakeTransport()
    fake.refuse_topics["reminders"] = 404

    async def scenario() -> None:
        # Long back-off: without the retry the refused topic would wait 20-40 s.
        relay = quick_relay((engine, table), fake, base_backoff=40.0, max_backoff=40.0)
        await relay.start()
        ids = write_events(engine, table, [("reminders", "1"), ("task-events", "1")])
        await eventually(lambda: [m.id for m in fake.delivered] == ids[1:])
        await eventually(lambda: "reminders" in relay.status().paused_topics)
        await eventually(lambda: outbox_status(engine, table).retrying == 1)
        fake.refuse_topics.clear()
        assert await asyncio.to_thread(outbox_retry, engine, table) == 1
        await eventually(lambda: len(fake.delivered) == 2, timeout=2)
        await relay.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


def test_metrics_count_published_and_failed_events_per_topic(outbox: Outbox) -> None:
    registry = CollectorRegistry()
    metrics = RelayMetrics(registry)
    RelayMetrics()  # another relay's metrics in the same process: no duplicate registration
    fake = FakeTransport()
    ids = write_events(*outbox, [("task-events", "1"), ("task-events", "2"), ("task-updates", "1")])
    fake.fail_ids.add(ids[1])

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, metrics=metrics, stats_interval=0.05)
        await relay.start()
        await eventually(lambda: len(fake.delivered) == 2)
        failed = {"topic": "task-events", "outcome": "transient"}
        await eventually(
            lambda: (registry.get_sample_value("outbox_events_failed_total", failed) or 0) >= 1
        )
        assert registry.get_sample_value("outbox_relay_leader") == 1
        await eventually(lambda: registry.get_sample_value("outbox_backlog_events") == 1)
        age = registry.get_sample_value("outbox_oldest_pending_age_seconds")
        assert age is not None and age >= 0
        fake.fail_ids.clear()
        await eventually(lambda: len(fake.delivered) == 3)
        await relay.stop()
        assert registry.get_sample_value("outbox_relay_leader") == 0

    asyncio.run(scenario())
    sample = registry.get_sample_value
    assert sample("outbox_events_published_total", {"topic": "task-events"}) == 2
    assert sample("outbox_events_published_total", {"topic": "task-updates"}) == 1
    assert sample("outbox_publish_latency_seconds_count") == 3
    assert (sample("outbox_send_duration_seconds_count") or 0) >= 3
    text = generate_latest(registry).decode()
    assert "outbox_publish_latency_seconds_bucket" in text


def test_status_tells_a_relay_waiting_for_its_sidecar_from_no_relay(
    outbox: Outbox,
) -> None:
    """A relay started before its sidecar says so, with the address it waits for: in
    `pakaura outbox status` and in its log, repeated while it waits (T-016)."""
    fake = FakeTransport()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", filter="hooks._relay")

    async def never_ready() -> bool:
        return False

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, ready=never_ready, destination="http://127.0.0.1:3999")
        await relay.start()
        await eventually(lambda: relay.state is RelayState.WAITING_FOR_SIDECAR)
        await asyncio.sleep(1.5)
        status = await asyncio.to_thread(outbox_status, *outbox)
        await relay.stop()
        assert status.leader is not None
        assert "waiting for the sidecar at http://127.0.0.1:3999" in status.leader
        assert f"relay leader: {status.leader}" in status.lines()

    try:
        asyncio.run(scenario())
    finally:
        logger.remove(sink)
    waits = [line for line in lines if "waiting for the sidecar at http://127.0.0.1:3999" in line]
    assert len(waits) >= 2  # said again while waiting (on a back-off), not once
    assert fake.calls == []
    assert outbox_status(*outbox).leader is None  # stopped: no relay any more
