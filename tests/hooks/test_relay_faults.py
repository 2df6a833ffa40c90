"""The relay under failures: flaky, dead, hung and misconfigured sidecars; shutdown; readiness.

In-memory transport (`FakeTransport`), real databases (SQLite and PostgreSQL). Issue 8, T-016.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from loguru import logger

from hooks._relay import RelayState
from hooks._wakeups import WakeSignal
from tests.support.fake_transport import FakeTransport
from tests.support.relay_helpers import (
    Outbox,
    count_rows,
    eventually,
    expected_order,
    interleaved,
    outbox_on,
    outbox_rows,
    quick_relay,
    write_events,
)


@pytest.fixture
def outbox(db_url: str) -> Iterator[Outbox]:
    with outbox_on(db_url) as made:
        yield made


@pytest.fixture
def warnings_logged() -> Iterator[list[Any]]:
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="WARNING")
    yield records
    logger.remove(sink)


def test_thirty_percent_failed_calls_lose_nothing_and_keep_per_key_order(outbox: Outbox) -> None:
    fake = FakeTransport(seed=3)
    fake.fail_fraction = 0.3
    events = interleaved(keys=10, per_key=8)
    ids = write_events(*outbox, events)

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, batch_size=25)
        await relay.start()
        await eventually(lambda: len(fake.delivered) >= len(events), timeout=20)
        await relay.stop()

    asyncio.run(scenario())
    assert sum(c.outcome == "500" for c in fake.calls) >= 5  # failures really happened
    assert fake.per_key() == expected_order(events, ids)
    assert len(fake.delivered) == len(events)
    assert fake.overlaps == []
    assert count_rows(*outbox) == 0


def test_dead_sidecar_is_not_hammered_and_everything_arrives_once_it_is_back(
    outbox: Outbox, warnings_logged: list[Any]
) -> None:
    fake = FakeTransport()
    events = interleaved(keys=20, per_key=5)
    wake = WakeSignal()

    async def ready() -> bool:
        return not fake.down

    async def scenario() -> list[str]:
        relay = quick_relay(outbox, fake, wake=wake, batch_size=50, max_backoff=0.4, ready=ready)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        fake.down = True  # the sidecar dies after start-up
        ids = write_events(*outbox, events)
        wake.notify()
        backing_off = []
        for _ in range(16):
            await asyncio.sleep(0.05)
            backing_off.append(relay.status().backing_off_seconds)
        rounds_while_down = len(fake.calls)  # one transport call per round
        # Exponential back-off: 0.01, 0.02, ... 0.4 s → about eight rounds, not hundreds.
        assert 1 <= rounds_while_down <= 12
        assert fake.delivered == []
        assert sum(b is not None for b in backing_off) > len(backing_off) / 2
        # Only the head batch was tried; the backlog is intact and records the failures.
        rows = outbox_rows(*outbox)
        assert len(rows) == len(events)
        assert rows[0].attempts >= 1 and "connection refused" in rows[0].last_error
        fake.down = False
        started = time.monotonic()
        await eventually(lambda: len(fake.delivered) == len(events), timeout=10)
        # The readiness probe ends the pause early (< max_backoff after the sidecar is back).
        assert time.monotonic() - started < 1.0
        await relay.stop()
        return ids

    ids = asyncio.run(scenario())
    assert fake.per_key() == expected_order(events, ids)
    assert fake.overlaps == []
    assert any("delivery failed" in r["message"] for r in warnings_logged)


def test_refused_topic_is_logged_at_error_retried_and_does_not_block_other_topics(
    outbox: Outbox, warnings_logged: list[Any]
) -> None:
    fake = FakeTransport()
    fake.refuse_topics["reminders"] = 403
    # The refused topic fills the head of the outbox, well past one batch.
    events = [("reminders", f"task-{k % 10}") for k in range(40)]
    events += [("task-events", f"task-{k}") for k in range(20)]
    ids = write_events(*outbox, events)
    task_event_ids = ids[40:]

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, batch_size=5, max_backoff=0.2)
        await relay.start()
        await eventually(lambda: [m.id for m in fake.delivered] == task_event_ids)
        assert relay.status().failed >= 5
        await eventually(lambda: len(outbox_rows(*outbox)) == 40)  # sent rows are deleted
        remaining = outbox_rows(*outbox)
        assert {r.topic for r in remaining} == {"reminders"}
        assert max(r.attempts for r in remaining) >= 1
        fake.refuse_topics.clear()  # the deployment is fixed
        await eventually(lambda: len(fake.delivered) == len(events), timeout=5)
        await relay.stop()

    asyncio.run(scenario())
    assert fake.per_key() == expected_order(events, ids)
    refused = [r for r in warnings_logged if r["level"].name == "ERROR"]
    assert refused, "configuration errors must be logged at ERROR"
    extra = refused[0]["extra"]
    assert extra["topic"] == "reminders" and extra["dapr_status"] == 403
    assert extra["task_id"].startswith("task-") and extra["event_type"] == "reminders.test"


def test_hung_sidecar_stop_is_bounded_and_unsent_events_survive_for_the_next_start(
    outbox: Outbox,
) -> None:
    events = interleaved(keys=4, per_key=3)
    ids = write_events(*outbox, events)

    async def first_run() -> None:
        fake = FakeTransport()
        fake.hung = asyncio.Event()  # never set: the sidecar never answers
        relay = quick_relay(outbox, fake, drain_timeout=0.3, send_timeout=30.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await relay.stop()
        assert time.monotonic() - started < 0.9  # drain_timeout 0.3 s, not the 30 s send time-out
        assert relay.state is RelayState.STOPPED

    asyncio.run(first_run())
    assert count_rows(*outbox) == len(events)

    fake = FakeTransport()

    async def second_run() -> None:
        relay = quick_relay(outbox, fake)
        await relay.start()
        await eventually(lambda: len(fake.delivered) == len(events))
        await relay.stop()

    asyncio.run(second_run())
    assert fake.per_key() == expected_order(events, ids)


def test_stop_drains_the_backlog_within_the_drain_timeout(outbox: Outbox) -> None:
    fake = FakeTransport()
    fake.delay = 0.05  # each call takes 50 ms

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, poll_interval=30.0, batch_size=10, drain_timeout=0.4)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(0.1)
        # Committed without a wake-up: only the drain at shutdown sends them.
        small = write_events(*outbox, [("task-events", f"k{k}") for k in range(5)])
        started = time.monotonic()
        await relay.stop()
        assert time.monotonic() - started < 1.5
        assert sorted(m.id for m in fake.delivered) == sorted(small)

    asyncio.run(scenario())
    assert count_rows(*outbox) == 0

    # A backlog larger than the drain time allows: part is sent, the rest stays, none twice.
    fake2 = FakeTransport()
    fake2.delay = 0.05
    events = [("task-events", "one-key")] * 30  # one key: one event per round
    ids = write_events(*outbox, events)

    async def bounded() -> None:
        relay = quick_relay(outbox, fake2, poll_interval=30.0, drain_timeout=0.3)
        await relay.start()
        await eventually(lambda: len(fake2.delivered) >= 1)
        started = time.monotonic()
        await relay.stop()
        assert time.monotonic() - started < 1.5

    asyncio.run(bounded())
    sent = [m.id for m in fake2.delivered]
    left = [r.event_id for r in outbox_rows(*outbox)]
    assert 1 <= len(sent) < len(events)
    assert sent + left == ids  # order kept, nothing lost, nothing sent twice


def test_waits_for_the_sidecar_to_be_ready_before_the_first_send(outbox: Outbox) -> None:
    fake = FakeTransport()
    ready_now = False
    ids = write_events(*outbox, [("task-events", "1"), ("task-updates", "1")])

    async def ready() -> bool:
        return ready_now

    async def scenario() -> None:
        nonlocal ready_now
        relay = quick_relay(outbox, fake, ready=ready)
        await relay.start()
        await asyncio.sleep(0.3)
        assert relay.state is RelayState.WAITING_FOR_SIDECAR
        assert fake.calls == []
        ready_now = True
        await eventually(lambda: len(fake.delivered) == 2)
        assert relay.state is RelayState.LEADER
        await relay.stop()

    asyncio.run(scenario())
    assert sorted(m.id for m in fake.delivered) == sorted(ids)


def test_a_raising_transport_is_treated_as_transient(outbox: Outbox) -> None:
    class Broken(FakeTransport):
        broken = True

        async def send(self, messages: Any, /) -> Any:
            if self.broken:
                raise RuntimeError("bug in a transport")
            return await super().send(messages)

    fake = Broken()
    ids = write_events(*outbox, [("task-events", "1")])

    async def scenario() -> None:
        relay = quick_relay(outbox, fake)
        await relay.start()
        await eventually(lambda: relay.status().failed >= 1)
        assert "bug in a transport" in (relay.status().last_error or "")
        fake.broken = False
        await eventually(lambda: len(fake.delivered) == 1)
        await relay.stop()

    asyncio.run(scenario())
    assert [m.id for m in fake.delivered] == ids


def test_database_errors_are_logged_and_the_relay_carries_on(
    outbox: Outbox, warnings_logged: list[Any]
) -> None:
    engine, table = outbox
    fake = FakeTransport()

    def rename(old: str, new: str) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, max_backoff=0.2)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.to_thread(rename, table.name, "outbox_away")  # the table is gone
        await eventually(lambda: "database" in (relay.status().last_error or ""))
        assert relay.state is RelayState.LEADER  # still running
        await asyncio.to_thread(rename, "outbox_away", table.name)
        ids = await asyncio.to_thread(write_events, engine, table, [("task-events", "1")])
        await eventually(lambda: [m.id for m in fake.delivered] == ids)
        await relay.stop()

    asyncio.run(scenario())
    assert any(r["message"] == "outbox relay database error" for r in warnings_logged)


def test_an_unexpected_error_in_the_loop_is_logged_and_delivery_goes_on(
    outbox: Outbox, warnings_logged: list[Any]
) -> None:
    fake = FakeTransport()
    ids = write_events(*outbox, [("task-events", "1"), ("task-events", "2")])

    async def scenario() -> None:
        relay = quick_relay(outbox, fake)
        labels = relay.metrics.published.labels
        broken = [True]

        def flaky_labels(*args: Any) -> Any:
            if broken[0]:
                broken[0] = False
                raise RuntimeError("bug in the metrics")
            return labels(*args)

        setattr(relay.metrics.published, "labels", flaky_labels)  # noqa: B010 - a test double
        await relay.start()
        await eventually(lambda: count_rows(*outbox) == 0)
        assert relay.state is RelayState.LEADER
        await relay.stop()

    asyncio.run(scenario())
    assert set(ids) <= {m.id for m in fake.delivered}  # at least once (re-sent after the bug)
    assert any("loop failed" in r["message"] for r in warnings_logged)
