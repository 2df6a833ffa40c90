"""One active relay per database: advisory lock (PostgreSQL), lock file (SQLite); LISTEN wake-ups.

Issue 8 ("Replicas"). Two relays in one process stand in for two replicas here (each holds its
own lock connection or lock file descriptor); tests/hooks/test_relay_processes.py does it with
real processes and kill -9.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from loguru import logger

from hooks._leader import AlwaysLeader, describe_leader, leadership_for
from hooks._relay import RelayState
from hooks._wakeups import WakeSignal
from tests.support.fake_transport import FakeTransport
from tests.support.relay_helpers import (
    Outbox,
    eventually,
    expected_order,
    interleaved,
    outbox_on,
    quick_relay,
    write_events,
)


@pytest.fixture
def outbox(db_url: str) -> Iterator[Outbox]:
    with outbox_on(db_url) as made:
        yield made


@pytest.fixture
def pg_outbox(pg_database_url: str) -> Iterator[Outbox]:
    with outbox_on(pg_database_url, wipe=True) as made:
        yield made


def test_one_relay_leads_the_other_stands_by_and_takes_over_when_it_stops(outbox: Outbox) -> None:
    first, second = FakeTransport(), FakeTransport()
    events = interleaved(keys=5, per_key=4)
    later = [("task-events", f"after-{k}") for k in range(5)]

    async def scenario() -> tuple[list[str], list[str]]:
        a = quick_relay(outbox, first, leadership=leadership_for(outbox[0], "event_outbox"))
        await a.start()
        await eventually(lambda: a.state is RelayState.LEADER)
        b = quick_relay(outbox, second, leadership=leadership_for(outbox[0], "event_outbox"))
        await b.start()
        await eventually(lambda: b.state is RelayState.STANDBY)
        ids = write_events(*outbox, events)
        await eventually(lambda: len(first.delivered) == len(events))
        await asyncio.sleep(0.2)  # the standby polls meanwhile and must not send
        assert second.calls == []
        assert b.state is RelayState.STANDBY
        assert "pakaura-relay" in (describe_leader(outbox[0], "event_outbox") or "")

        started = time.monotonic()
        await a.stop()
        await eventually(lambda: b.state is RelayState.LEADER, timeout=5)
        assert time.monotonic() - started < 2.0
        later_ids = write_events(*outbox, later)
        await eventually(lambda: len(second.delivered) == len(later))
        await b.stop()
        return ids, later_ids

    ids, later_ids = asyncio.run(scenario())
    assert first.per_key() == expected_order(events, ids)
    assert [m.id for m in second.delivered] == later_ids
    assert describe_leader(outbox[0], "event_outbox") is None


def test_in_memory_sqlite_always_leads() -> None:
    assert isinstance(leadership_for(sa.create_engine("sqlite://"), "event_outbox"), AlwaysLeader)


@pytest.mark.postgres
def test_leader_whose_session_is_killed_stops_sending_and_leadership_moves(
    pg_outbox: Outbox,
) -> None:
    engine, _ = pg_outbox
    first, second = FakeTransport(), FakeTransport()
    lost: list[str] = []
    sink = logger.add(lambda m: lost.append(m), level="WARNING", filter="hooks._relay")

    async def scenario() -> None:
        a = quick_relay(pg_outbox, first)
        await a.start()
        await eventually(lambda: a.state is RelayState.LEADER)
        b = quick_relay(pg_outbox, second)
        await b.start()
        await eventually(lambda: b.state is RelayState.STANDBY)
        holder = describe_leader(engine, "event_outbox") or ""
        backend = int(re.search(r"backend (\d+)", holder).group(1))  # type: ignore[union-attr]
        with engine.connect() as conn:  # what a database fail-over or network cut does
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        await eventually(lambda: any("no longer the leader" in m for m in lost), timeout=5)
        # Exactly one of them leads again (either may win the next attempt).
        await eventually(
            lambda: {a.state, b.state} == {RelayState.LEADER, RelayState.STANDBY}, timeout=5
        )
        events = [("task-events", "k")] * 3
        ids = write_events(*pg_outbox, events)
        await eventually(lambda: len(first.delivered) + len(second.delivered) == 3)
        leader_fake = first if a.state is RelayState.LEADER else second
        assert [m.id for m in leader_fake.delivered] == ids
        await a.stop()
        await b.stop()

    try:
        asyncio.run(scenario())
    finally:
        logger.remove(sink)


@pytest.mark.postgres
def test_notify_from_another_connection_wakes_the_relay_and_rollbacks_do_not(
    pg_outbox: Outbox,
) -> None:
    fake = FakeTransport()
    engine, table = pg_outbox
    writer = sa.create_engine(engine.url)  # another "process": its own pool, no local signal

    async def scenario() -> None:
        relay = quick_relay(pg_outbox, fake, wake=WakeSignal(), poll_interval=30.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(0.2)  # LISTEN is up, the first round is done: it waits 30 s now
        write_events(writer, table, [("task-events", "1")], notify="event_outbox", rollback=True)
        await asyncio.sleep(0.2)
        assert fake.calls == []  # a rolled-back NOTIFY is never delivered
        started = time.monotonic()
        ids = write_events(writer, table, [("task-events", "2")], notify="event_outbox")
        await eventually(lambda: len(fake.delivered) == 1, timeout=2)
        assert time.monotonic() - started < 0.5
        assert [m.id for m in fake.delivered] == ids
        await relay.stop()

    try:
        asyncio.run(scenario())
    finally:
        writer.dispose()
