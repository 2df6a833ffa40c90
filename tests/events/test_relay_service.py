"""The app's relay end to end: Task writes through the ORM hooks → outbox → relay → emulated
Dapr sidecar over loopback HTTP (issue 8, T-016). SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from src.config import SettingsError, get_settings
from src.db import create_tables, get_engine
from src.events.relay_service import (
    print_outbox_status,
    retry_outbox_now,
    run_relay_forever,
    running_relay,
    start_relay,
)
from src.events.wiring import reset_outbox_wakeup
from src.models import Task, outbox_table

from tests.support.app import app_environment, make_client
from tests.support.dapr_emulator import DaprEmulator
from tests.support.relay_helpers import eventually, wait_until

SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)


@pytest.fixture
def dapr_env(db_url: str, dapr: DaprEmulator) -> Iterator[sa.Engine]:
    """DAPR_ENABLED pointing at the emulator, tables created, a fresh wake-up signal."""
    with app_environment(
        db_url,
        dapr_enabled="true",
        dapr_http_port=str(dapr.port),
        relay_poll_interval="5",  # long: only wake-ups can explain a fast delivery
    ):
        reset_outbox_wakeup()
        engine = get_engine()
        create_tables(engine)
        yield engine


def backlog(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar_one())


def add_task(engine: sa.Engine, title: str, due_date: datetime | None = None) -> int:
    with Session(engine) as session:
        task = Task(user_id="alice", title=title, due_date=due_date)
        session.add(task)
        session.commit()
        assert task.id is not None
        return task.id


def complete(engine: sa.Engine, task_id: int) -> None:
    with Session(engine) as session:
        task = session.get(Task, task_id)
        assert task is not None
        task.completed = True
        session.commit()


def test_committed_task_changes_reach_the_sidecar_in_order_and_rollbacks_never_do(
    dapr_env: sa.Engine, dapr: DaprEmulator
) -> None:
    engine = dapr_env

    async def scenario() -> None:
        async with running_relay(get_settings()) as handle:
            await eventually(lambda: handle.status()["state"] == "leader")
            started = time.monotonic()
            task_id = await asyncio.to_thread(add_task, engine, "Buy milk", due_date=SOON)
            await asyncio.to_thread(complete, engine, task_id)

            def rolled_back() -> None:
                with Session(engine) as session:
                    session.add(Task(user_id="alice", title="never"))
                    session.flush()
                    session.rollback()

            await asyncio.to_thread(rolled_back)
            await eventually(lambda: len(dapr.received) >= 6, timeout=5)
            # Woken by the commits, not by the 5 s poll.
            assert time.monotonic() - started < 2.0
            await eventually(lambda: backlog(engine) == 0)
            status = handle.status()
            assert status["leader"] is True and status["published"] == 6
            metrics = handle.metrics().decode()
            assert 'outbox_events_published_total{topic="task-events"} 2.0' in metrics
            assert "process_resident_memory_bytes" in metrics

    asyncio.run(scenario())
    received = dapr.received
    by_topic: dict[str, list[str]] = {}
    for delivery in received:
        by_topic.setdefault(delivery.topic, []).append(delivery.event["type"])
        assert delivery.metadata["partitionKey"] == delivery.event["subject"]
    assert by_topic == {
        "task-events": ["task.created", "task.completed"],
        "task-updates": ["task.sync", "task.sync"],
        "reminders": ["reminder.scheduled", "reminder.cancelled"],
    }
    assert all(d.event["data"]["task_id"] == received[0].event["data"]["task_id"] for d in received)
    assert len({d.event["id"] for d in received}) == 6  # each once


def test_events_written_while_no_relay_ran_are_delivered_when_it_starts(
    dapr_env: sa.Engine, dapr: DaprEmulator
) -> None:
    engine = dapr_env
    ids = [add_task(engine, f"task {n}") for n in range(3)]  # the relay is not running
    assert backlog(engine) == 6

    async def scenario() -> None:
        async with running_relay(get_settings()):
            await eventually(lambda: len(dapr.received) == 6, timeout=5)

    asyncio.run(scenario())
    created = [d.event["data"]["task_id"] for d in dapr.received if d.topic == "task-events"]
    assert created == ids
    assert backlog(engine) == 0


def test_sidecar_down_then_back_delivers_everything_in_per_task_order(
    dapr_env: sa.Engine, dapr: DaprEmulator
) -> None:
    engine = dapr_env

    async def scenario() -> list[int]:
        async with running_relay(get_settings().model_copy(update={"relay_max_backoff": 0.5})):
            dapr.refuse()
            ids = []
            for n in range(4):
                task_id = await asyncio.to_thread(add_task, engine, f"task {n}")
                await asyncio.to_thread(complete, engine, task_id)
                ids.append(task_id)
            await asyncio.sleep(0.5)
            assert dapr.received == [] and backlog(engine) == 16
            dapr.resume()
            await eventually(lambda: backlog(engine) == 0, timeout=10)
            return ids

    ids = asyncio.run(scenario())
    per_task: dict[int, list[str]] = {}
    for d in dapr.received:
        if d.topic == "task-events":
            per_task.setdefault(d.event["data"]["task_id"], []).append(d.event["type"])
    assert per_task == {i: ["task.created", "task.completed"] for i in ids}


def test_thirty_percent_sidecar_errors_lose_nothing_and_keep_order(
    dapr_env: sa.Engine, dapr: DaprEmulator
) -> None:
    engine = dapr_env
    dapr.fail_fraction(0.3)

    async def scenario() -> None:
        settings = get_settings().model_copy(update={"relay_max_backoff": 0.2})
        async with running_relay(settings) as handle:
            for n in range(10):
                task_id = await asyncio.to_thread(add_task, engine, f"task {n}")
                await asyncio.to_thread(complete, engine, task_id)
            # Retries are woken by their own back-off (≤ 0.2 s here), not by the 5 s poll.
            await eventually(lambda: backlog(engine) == 0, timeout=4)
            assert handle.status()["failed"] > 0

    asyncio.run(scenario())
    failed_calls = [c for c in dapr.calls if c.status == 500]
    assert failed_calls, "the fault injection must have hit"
    per_task: dict[int, list[str]] = {}
    seen: set[str] = set()
    for d in dapr.received:
        if d.topic == "task-events" and d.event["id"] not in seen:
            seen.add(d.event["id"])
            per_task.setdefault(d.event["data"]["task_id"], []).append(d.event["type"])
    assert len(per_task) == 10
    assert all(types == ["task.created", "task.completed"] for types in per_task.values())


def test_relay_is_off_when_dapr_is_disabled(sqlite_url: str) -> None:
    with app_environment(sqlite_url):

        async def scenario() -> dict[str, object]:
            handle = await start_relay(get_settings())
            await handle.stop()
            return handle.status()

        status = asyncio.run(scenario())
        assert status["state"] == "disabled"
        assert "DAPR_ENABLED" in str(status["reason"])
        with pytest.raises(SettingsError, match="DAPR_ENABLED"):
            run_relay_forever(get_settings())


def test_outbox_status_and_retry_commands(dapr_env: sa.Engine) -> None:
    engine = dapr_env
    add_task(engine, "waiting")
    with engine.begin() as conn:
        conn.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.topic == "task-events")
            .values(attempts=2, last_error="HTTP 403: forbidden")
        )
    out = io.StringIO()
    print_outbox_status(get_settings(), out)
    text = out.getvalue()
    assert "backlog: 2 events" in text
    assert "retrying: 1 events (max attempts 2)" in text
    assert "HTTP 403: forbidden" in text
    assert "relay leader: none running" in text
    assert retry_outbox_now(get_settings()) == 1


def test_requests_never_wait_for_a_hung_sidecar(db_url: str, dapr: DaprEmulator) -> None:
    """T-016 through the real app: the relay runs in the API's event loop, and still a
    mutation answers long before the 2 s publish time-out the seed design waited for."""
    with make_client(
        db_url, dapr_enabled="true", dapr_http_port=str(dapr.port), dapr_publish_timeout="2"
    ) as api:
        wait_until(lambda: api.client.get("/health").json()["relay"]["state"] == "leader")
        dapr.hang(True)
        slowest = 0.0
        for n in range(6):
            started = time.monotonic()
            response = api.client.post(
                "/api/alice/tasks", json={"title": f"task {n}"}, headers=api.auth("alice")
            )
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 201
            time.sleep(0.1)  # let the relay try (and hang) in between
        assert slowest < 1.0  # the seed design: at least 2 s per event with a hung sidecar
        relay = api.client.get("/health").json()["relay"]
        assert relay["published"] == 0
        assert api.count(outbox_table) == 12  # every event waits in the outbox
        dapr.hang(False)
        wait_until(lambda: api.count(outbox_table) == 0, timeout=15)
