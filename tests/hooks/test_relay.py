"""The outbox relay with an in-memory transport, on SQLite and PostgreSQL (issue 8, T-016)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from hooks._relay import RelayConfigError, RelayState
from hooks._wakeups import WakeSignal
from tests.support.fake_transport import FakeTransport
from tests.support.relay_helpers import (
    Outbox,
    count_rows,
    eventually,
    expected_order,
    interleaved,
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


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_delivers_every_committed_row_once_in_per_key_order(outbox: Outbox) -> None:
    fake = FakeTransport()
    events = interleaved(keys=15, per_key=6)
    ids = write_events(*outbox, events)

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, batch_size=40)
        await relay.start()
        await eventually(lambda: len(fake.delivered) >= len(events))
        await relay.stop()
        assert relay.status().published == len(events)

    run(scenario)
    assert fake.per_key() == expected_order(events, ids)
    assert sorted(m.id for m in fake.delivered) == sorted(ids)  # nothing twice
    assert fake.overlaps == []
    assert max(c.size for c in fake.calls) > 1  # batches, not one call per event
    assert count_rows(*outbox) == 0


def test_local_wake_signal_starts_delivery_without_waiting_for_the_poll(outbox: Outbox) -> None:
    fake = FakeTransport()
    wake = WakeSignal()

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, wake=wake, poll_interval=30.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(0.1)  # the first (empty) round is done; now it waits 30 s
        write_events(*outbox, [("task-events", "1")])
        await asyncio.sleep(0.3)
        assert fake.delivered == []  # no wake-up, no delivery before the poll
        started = time.monotonic()
        wake.notify()  # what the outbox writer does after commit
        await eventually(lambda: len(fake.delivered) == 1, timeout=2.0)
        assert time.monotonic() - started < 1.0
        await relay.stop()

    run(scenario)


def test_rolled_back_writes_are_never_sent(outbox: Outbox) -> None:
    fake = FakeTransport()
    wake = WakeSignal()
    engine, table = outbox
    notify = "event_outbox" if engine.dialect.name == "postgresql" else None

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, wake=wake)
        await relay.start()
        write_events(engine, table, [("task-events", "1")] * 3, notify=notify, rollback=True)
        wake.notify()
        kept = write_events(engine, table, [("task-events", "2")], notify=notify)
        wake.notify()
        await eventually(lambda: len(fake.delivered) == 1)
        await asyncio.sleep(0.2)
        await relay.stop()
        assert [m.id for m in fake.delivered] == kept

    run(scenario)
    assert count_rows(engine, table) == 0


def test_a_failing_key_holds_back_only_its_own_later_events(outbox: Outbox) -> None:
    fake = FakeTransport()
    engine, table = outbox
    events = [("task-events", "slow"), ("task-events", "slow"), ("task-events", "fast")] * 3
    ids = write_events(engine, table, events)
    fake.fail_ids.add(ids[0])  # the first "slow" event fails until we let it through
    fast_ids = [i for e, i in zip(events, ids, strict=True) if e[1] == "fast"]

    async def scenario() -> None:
        relay = quick_relay(outbox, fake, base_backoff=0.05, max_backoff=0.2)
        await relay.start()
        await eventually(lambda: [m.id for m in fake.delivered] == fast_ids)
        await asyncio.sleep(0.3)  # several retries of the failing head
        assert all(m.key != "slow" for m in fake.delivered)
        head = outbox_rows(engine, table)[0]
        assert head.event_id == ids[0]
        assert head.attempts >= 2
        assert "503" in head.last_error
        fake.fail_ids.clear()
        await eventually(lambda: len(fake.delivered) == len(events))
        await relay.stop()

    run(scenario)
    assert fake.per_key() == expected_order(events, ids)
    assert fake.overlaps == []


def test_a_keys_next_event_follows_as_soon_as_the_previous_one_is_recorded(
    outbox: Outbox,
) -> None:
    fake = FakeTransport()
    wake = WakeSignal()
    events = [("task-events", "same-task")] * 4  # e.g. created, updated, completed, deleted

    async def scenario() -> list[str]:
        relay = quick_relay(outbox, fake, wake=wake, poll_interval=30.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(0.1)
        ids = write_events(*outbox, events)
        wake.notify()  # one wake-up for the commit; the rest must follow without the poll
        await eventually(lambda: len(fake.delivered) == 4, timeout=2.0)
        await relay.stop()
        return ids

    ids = asyncio.run(scenario())
    assert [m.id for m in fake.delivered] == ids
    assert [c.size for c in fake.calls] == [1, 1, 1, 1]  # one at a time, in order


def test_at_rest_a_commit_goes_out_at_once_and_under_load_commits_share_a_round(
    outbox: Outbox,
) -> None:
    # Adaptive batching (T-016): after a quiet spell a round starts right after the commit;
    # within `linger` of a round, commits wait for the window's end and share one round.
    fake = FakeTransport()
    wake = WakeSignal()

    async def scenario() -> list[str]:
        relay = quick_relay(outbox, fake, wake=wake, poll_interval=30.0, linger=0.5)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(1.0)  # the first rounds (start, LISTEN up) are past their window
        started = time.monotonic()
        ids = write_events(*outbox, [("task-events", "1")])
        wake.notify()
        await eventually(lambda: len(fake.delivered) == 1, timeout=2.0)
        assert time.monotonic() - started < 0.3  # at once, not after the linger
        ids += write_events(*outbox, [("task-events", "2")])
        wake.notify()
        await asyncio.sleep(0.05)
        ids += write_events(*outbox, [("task-events", "3")])
        wake.notify()
        await asyncio.sleep(0.1)
        assert len(fake.delivered) == 1  # within the window: gathering
        await eventually(lambda: len(fake.delivered) == 3, timeout=3.0)
        await relay.stop()
        return ids

    ids = asyncio.run(scenario())
    assert [m.id for m in fake.delivered] == ids
    assert [c.size for c in fake.calls] == [1, 2]  # three commits, two rounds


def test_a_keys_next_event_does_not_linger_behind_the_previous_one(outbox: Outbox) -> None:
    # The linger is for commits; a key's next row, waiting only for its predecessor to be
    # recorded, goes out at once, or a task's fourth event would wait four lingers.
    fake = FakeTransport()
    wake = WakeSignal()
    events = [("task-events", "same-task")] * 4

    async def scenario() -> float:
        relay = quick_relay(outbox, fake, wake=wake, poll_interval=30.0, linger=1.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER)
        await asyncio.sleep(1.6)  # at rest: the first rounds are past the window
        write_events(*outbox, events)
        started = time.monotonic()
        wake.notify()
        await eventually(lambda: len(fake.delivered) == 4, timeout=10.0)
        elapsed = time.monotonic() - started
        await relay.stop()
        return elapsed

    elapsed = asyncio.run(scenario())
    assert [c.size for c in fake.calls] == [1, 1, 1, 1]
    assert elapsed < 0.9  # not one linger per event


@pytest.mark.parametrize("linger", [-0.01, 1.5])
def test_a_linger_out_of_range_is_refused_by_name(outbox: Outbox, linger: float) -> None:
    with pytest.raises(RelayConfigError, match="linger"):
        quick_relay(outbox, FakeTransport(), linger=linger)


@pytest.mark.postgres
def test_a_row_committed_late_with_a_lower_sequence_still_goes_first(
    pg_database_url: str,
) -> None:
    """PostgreSQL numbers rows at INSERT and shows them at COMMIT: a scan may pass a lower
    sequence number that is still invisible. The key's next row must not overtake it."""
    engine, table = make_outbox(pg_database_url, wipe=True)
    fake = FakeTransport()
    wake = WakeSignal()

    async def scenario() -> tuple[str, str]:
        # Key B's first row fails and waits (30 s back-off): B's rows are a blocked stretch.
        relay = quick_relay(
            (engine, table), fake, wake=wake, poll_interval=30.0, base_backoff=30, max_backoff=30
        )
        b1, _x = write_events(engine, table, [("task-events", "B"), ("task-events", "X")])
        fake.fail_ids.add(b1)
        await relay.start()
        await eventually(lambda: [m.key for m in fake.delivered] == ["X"])
        for _ in range(3):  # B1's failure is recorded; a few idle rounds read past it
            await asyncio.sleep(0.1)
            wake.notify()
        await asyncio.sleep(0.1)
        with engine.connect() as slow:  # a writer whose transaction stays open…
            slow_txn = slow.begin()
            (first,) = write_events(slow, table, [("task-events", "K")], commit=False)
            write_events(engine, table, [("task-events", "B"), ("task-events", "J")])
            wake.notify()  # …while the relay reads past its row (B2 and J are after it)
            await eventually(lambda: [m.key for m in fake.delivered] == ["X", "J"])
            slow_txn.commit()
        (second,) = write_events(engine, table, [("task-events", "K")])
        wake.notify()
        await eventually(lambda: len(fake.delivered) == 4)
        await relay.stop()
        return first, second

    try:
        first, second = asyncio.run(scenario())
    finally:
        engine.dispose()
    assert [m.id for m in fake.delivered if m.key == "K"] == [first, second]
