"""The relay's pick (hooks/_store.py): per-key order under any interleaving of commits, and
connections taken from the application's engine (issue 15, T-016)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hooks import WakeSignal, utc_now
from hooks._relay import RelayState
from hooks._store import OutboxStore
from tests.support.fake_transport import FakeTransport
from tests.support.relay_helpers import (
    Outbox,
    eventually,
    make_outbox,
    outbox_on,
    quick_relay,
    write_events,
)


@pytest.fixture
def pg_outbox(pg_database_url: str) -> Iterator[Outbox]:
    with outbox_on(pg_database_url, wipe=True) as made:
        yield made


@pytest.mark.postgres
def test_rows_committed_between_two_page_reads_never_reorder_a_key(pg_outbox: Outbox) -> None:
    """A pick spanning pages while rows of one key commit in between (PostgreSQL hands out
    sequence numbers at INSERT and rows appear at COMMIT). With a snapshot per page, the key's
    second row was picked from the later page while its first, committed below the first
    page's end, was missed: the second event went out first. (This test fails on the relay
    before issue 15.)"""
    engine, table = pg_outbox
    fake = FakeTransport()
    slow = engine.connect()
    slow_tx = slow.begin()
    (first_id,) = write_events(slow, table, [("task-events", "K")], commit=False)  # low seq
    # More than a page (200 rows) of one other task: the pick takes its first row and reads on.
    write_events(engine, table, [("task-events", "F")] * 250)
    second: list[str] = []
    fired = False

    def between_pages(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal fired
        if fired or "ORDER BY" not in statement or table.name not in statement:
            return
        fired = True  # right after the relay read its first page of the outbox:
        slow_tx.commit()  # the first row of K becomes visible below that page's end,
        # …and a second row of K commits, due at once: written by a server whose clock runs
        # a minute behind (a row's due time is stamped at INSERT, by the writer's clock).
        second.extend(write_events(engine, table, [("task-events", "K")], delay_seconds=-60))

    sa.event.listen(engine, "after_cursor_execute", between_pages)
    try:

        async def scenario() -> None:
            relay = quick_relay(pg_outbox, fake, batch_size=10)
            await relay.start()
            await eventually(lambda: len(fake.delivered) == 252, timeout=30)
            await relay.stop()

        asyncio.run(scenario())
    finally:
        sa.event.remove(engine, "after_cursor_execute", between_pages)
        slow.close()
    assert fired
    assert fake.per_key()[("task-events", "K")] == [first_id, *second]
    assert fake.overlaps == []


# --- the pick as a property ---------------------------------------------------------------------

_ROW = st.tuples(
    st.sampled_from(["t1", "t2"]),  # topic
    st.sampled_from(["a", "b", "c", "d", "e"]),  # key
    st.booleans(),  # due now
)


@pytest.fixture(scope="module")
def sqlite_outbox() -> Iterator[Outbox]:
    with tempfile.TemporaryDirectory() as tmp:
        engine, table = make_outbox(f"sqlite:///{tmp}/pick.db")
        yield engine, table
        engine.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(_ROW, max_size=40),
    batch_size=st.integers(1, 12),
    paused=st.sets(st.sampled_from(["t1", "t2"]), max_size=1),
)
def test_the_pick_never_sends_a_later_row_of_a_key_before_an_earlier_one(
    sqlite_outbox: Outbox, rows: list[tuple[str, str, bool]], batch_size: int, paused: set[str]
) -> None:
    engine, table = sqlite_outbox
    now = utc_now()
    with engine.begin() as conn:
        conn.execute(sa.delete(table))
        for n, (topic, key, due) in enumerate(rows):
            conn.execute(
                sa.insert(table).values(
                    event_id=f"e{n}",
                    topic=topic,
                    partition_key=key,
                    payload="{}",
                    created_at=now,
                    next_attempt_at=now if due else now + timedelta(hours=1),
                )
            )
    store = OutboxStore(engine, table)
    store.open()
    try:
        pick = store.submit(
            store.pick, now=now, batch_size=batch_size, scan_limit=1000, paused=frozenset(paused)
        ).result()
    finally:
        store.close()
    # The head of each (topic, key), in sequence order, among the topics not paused.
    heads: dict[tuple[str, str], tuple[int, bool]] = {}
    for n, (topic, key, due) in enumerate(rows):
        if topic not in paused:
            heads.setdefault((topic, key), (n, due))
    picked = [(r.message.topic, r.message.key, int(r.message.id[1:])) for r in pick.rows]
    assert len({(t, k) for t, k, _ in picked}) == len(picked)  # a key at most once
    for topic, key, n in picked:
        assert heads[(topic, key)] == (n, True)  # only a key's first row, and only when due
    assert [n for *_, n in picked] == sorted(n for *_, n in picked)
    sendable = sorted(n for n, due in heads.values() if due)
    assert [n for *_, n in picked] == sendable[:batch_size]  # nothing due is left behind
    not_due = [n for n, due in heads.values() if not due]
    assert (pick.next_due is not None) == bool(not_due) or len(picked) == batch_size


# --- connections from the engine ----------------------------------------------------------------


@pytest.mark.postgres
def test_leader_lock_and_listen_use_the_engines_creator(pg_database_url: str) -> None:
    """A deployment that authenticates through `creator` (IAM tokens, TLS files) must still
    elect a leader and LISTEN: both connections come from the engine, not from its URL."""
    real = sa.make_url(pg_database_url)
    conninfo = real.set(drivername="postgresql").render_as_string(hide_password=False)
    made: list[float] = []

    def creator() -> psycopg.Connection[Any]:
        made.append(time.monotonic())
        return psycopg.connect(conninfo)

    # The URL alone names no server or database: only the creator can connect.
    engine = sa.create_engine("postgresql+psycopg://", creator=creator)
    made_with_url, table = make_outbox(pg_database_url, wipe=True)
    made_with_url.dispose()
    fake = FakeTransport()
    writer = sa.create_engine(real)

    async def scenario() -> None:
        relay = quick_relay((engine, table), fake, wake=WakeSignal(), poll_interval=30.0)
        await relay.start()
        await eventually(lambda: relay.state is RelayState.LEADER, timeout=5)
        await asyncio.sleep(0.3)  # LISTEN is up; the relay now waits 30 s for a wake-up
        started = time.monotonic()
        ids = write_events(writer, table, [("task-events", "1")], notify="event_outbox")
        await eventually(lambda: [m.id for m in fake.delivered] == ids, timeout=2)
        assert time.monotonic() - started < 1.0  # woken by the NOTIFY, not the poll
        await relay.stop()

    try:
        asyncio.run(scenario())
    finally:
        writer.dispose()
        engine.dispose()
    assert len(made) >= 3  # the relay's queries, the leader lock and LISTEN


@pytest.fixture
def any_outbox(db_url: str) -> Iterator[Outbox]:
    with outbox_on(db_url) as made:
        yield made


def test_a_batch_on_the_wire_is_left_out_and_a_first_page_pick_is_one_statement(
    any_outbox: Outbox,
) -> None:
    """While a batch is on the wire the next pick reads past it in SQL, leaves out the later
    rows of its keys, and reads one page (no snapshot re-read) when that page fills the
    batch (issue 15: a drain read each row three times)."""
    engine, table = any_outbox
    write_events(engine, table, [("t", f"k{n}") for n in range(6)] + [("t", "k0"), ("u", "x")])
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if table.name in statement:
            statements.append(statement)

    store = OutboxStore(engine, table)
    store.open()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:

        def pick(**kw: Any) -> Any:
            kw.setdefault("paused", frozenset())
            return store.submit(store.pick, now=utc_now(), scan_limit=1000, **kw).result()

        first = pick(batch_size=3)
        assert [r.message.key for r in first.rows] == ["k0", "k1", "k2"] and first.more
        statements.clear()
        second = pick(batch_size=3, busy=first.rows)
        assert [r.message.key for r in second.rows] == ["k3", "k4", "k5"]
        assert len(statements) == 1  # the first page completed the pick: one statement
        rest = pick(batch_size=10, busy=first.rows + second.rows)
        assert [r.message.key for r in rest.rows] == ["x"]  # k0's second row waits for k0
        assert rest.more  # …and may go once k0's first is recorded
        assert pick(batch_size=10, paused=frozenset({"t"})).rows[0].message.key == "x"
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        store.close()
