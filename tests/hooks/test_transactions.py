"""Only the outermost commit emits: rollbacks and savepoints, with the outbox and with the
after-commit (log/memory) sink, on SQLite and PostgreSQL, sync and async sessions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.orm import Session

import hooks
from tests.support.tracked import (
    Note,
    Plain,
    create_schema,
    ensure_tracked,
    note_rule,
    open_ops,
    outbox,
    read_outbox,
    sink,
    summary,
)


class CountingSignal(hooks.WakeSignal):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def notify(self) -> None:
        self.count += 1
        super().notify()


class Harness:
    """Runs scenarios against one database with one kind of sink; reports committed events."""

    def __init__(self, url: str, engine: sa.Engine, kind: str, mode: str) -> None:
        self.url, self.engine, self.kind, self.mode = url, engine, kind, mode
        self.signal = CountingSignal()
        if kind == "outbox":
            self.memory: hooks.MemorySink | None = None
            sink.use(hooks.OutboxSink(outbox, wakeup=self.signal))
        else:
            self.memory = hooks.MemorySink()
            sink.use(self.memory)

    def ops(self, **kw: Any) -> Any:
        kw.setdefault("expire_on_commit", False)
        return open_ops(self.url, self.mode, **kw)

    def events(self) -> list[tuple[Any, ...]]:
        if self.memory is not None:
            return [summary(message.body) for message in self.memory.messages]
        return read_outbox(self.engine)

    def row_count(self, table: Any = Note) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@pytest.fixture(params=["outbox", "after-commit"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def harness(db_url: str, kind: str, mode: str) -> Iterator[Harness]:
    ensure_tracked()
    engine = create_schema(db_url)
    yield Harness(db_url, engine, kind, mode)
    engine.dispose()


def test_rollback_emits_nothing(harness: Harness) -> None:
    with harness.ops() as ops:
        note = Note(owner="a", body="x")
        ops.add(note)
        ops.flush()
        note.body = "y"
        ops.flush()
        ops.execute(update(Note).values(done=True))
        ops.rollback()
    assert harness.events() == []
    assert harness.row_count() == 0
    assert harness.signal.count == 0


def test_savepoint_rollback_drops_only_its_own_events(harness: Harness) -> None:
    with harness.ops() as ops:
        kept = Note(owner="a", body="kept")
        ops.add(kept)
        ops.flush()
        with pytest.raises(RuntimeError), ops.savepoint():
            ops.add(Note(owner="a", body="dropped"))
            ops.flush()
            ops.execute(update(Note).where(Note.id == kept.id).values(body="dropped too"))
            raise RuntimeError("roll the savepoint back")
        if ops.is_async:
            ops.refresh(kept)  # the rollback expired it; asyncio cannot load lazily
        kept.done = True
        ops.commit()
        kept_id = kept.id
    assert harness.events() == [("insert", kept_id, ()), ("update", kept_id, ("done",))]
    assert harness.row_count() == 1
    assert harness.signal.count == (1 if harness.kind == "outbox" else 0)


def test_savepoint_released_then_outer_rollback_emits_nothing(harness: Harness) -> None:
    with harness.ops() as ops:
        with ops.savepoint():  # first in the transaction: what the SQLite fix is for
            ops.add(Note(owner="a", body="inner"))
        ops.add(Note(owner="a", body="outer"))
        with ops.savepoint(), ops.savepoint():
            ops.add(Note(owner="a", body="nested twice"))
        ops.rollback()
    assert harness.events() == []
    assert harness.row_count() == 0  # the SQLite fix: released savepoints roll back too
    assert harness.signal.count == 0


def test_released_savepoints_commit_in_order(harness: Harness) -> None:
    with harness.ops() as ops:
        first = Note(owner="a", body="1")
        ops.add(first)
        ops.flush()
        with ops.savepoint():
            second = Note(owner="a", body="2")
            ops.add(second)
            ops.flush()
            with ops.savepoint():
                first.body = "1b"
        third = Note(owner="a", body="3")
        ops.add(third)
        ops.commit()
    assert harness.events() == [
        ("insert", first.id, ()),
        ("insert", second.id, ()),
        ("update", first.id, ("body",)),
        ("insert", third.id, ()),
    ]
    assert harness.signal.count == (1 if harness.kind == "outbox" else 0)


def test_failing_flush_inside_a_savepoint(harness: Harness) -> None:
    with harness.ops() as ops:
        kept = Note(owner="a", body="kept")
        ops.add(kept)
        ops.flush()
        with pytest.raises(sa.exc.IntegrityError), ops.savepoint():
            ops.add(Note(owner="a", body="fine"), Note(owner=None, body="violates NOT NULL"))  # type: ignore[arg-type]
            ops.flush()
        after = Note(owner="a", body="after")
        ops.add(after)
        ops.commit()
    assert harness.events() == [("insert", kept.id, ()), ("insert", after.id, ())]
    assert harness.row_count() == 2


def test_flush_that_fails_half_way_leaves_no_captured_change_behind(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule fails for the second row, after the first was captured: nothing of that
    flush may reach a later flush."""
    tracker = ensure_tracked()

    def picky_rule(change: hooks.RowChange) -> list[hooks.Message]:
        if change.new.get("body") == "boom":
            raise ValueError("rule refuses")
        return note_rule(change)

    monkeypatch.setattr(tracker, "rule", picky_rule)
    with harness.ops() as ops:
        with pytest.raises(ValueError, match="rule refuses"), ops.savepoint():
            ops.add(Note(owner="a", body="captured first"))
            ops.flush()  # separate statements: make the first row's after_insert run first
            ops.add(Note(owner="a", body="boom"))
            ops.flush()
        later = Note(owner="a", body="later")
        ops.add(later)
        ops.commit()
    assert [(kind, ident) for kind, ident, _ in harness.events()] == [("insert", later.id)]


def test_close_without_commit_emits_nothing(harness: Harness) -> None:
    with harness.ops() as ops:
        ops.add(Note(owner="a", body="x"))
        ops.flush()
        ops.close()
    assert harness.events() == []
    assert harness.row_count() == 0
    assert harness.signal.count == 0


def test_several_commits_on_one_session(harness: Harness) -> None:
    with harness.ops() as ops:
        note = Note(owner="a", body="1")
        ops.add(note)
        ops.commit()
        note.body = "2"
        ops.commit()
        ops.commit()  # nothing to do: no event, no wake-up
        note.body = "3"
        ops.flush()
        ops.rollback()
        ops.refresh(note)
        note.done = True
        ops.commit()
    assert harness.events() == [
        ("insert", note.id, ()),
        ("update", note.id, ("body",)),
        ("update", note.id, ("done",)),
    ]
    assert harness.signal.count == (3 if harness.kind == "outbox" else 0)


def test_create_update_delete_in_one_transaction(harness: Harness) -> None:
    with harness.ops() as ops:
        note = Note(owner="a", body="1")
        ops.add(note)
        ops.flush()
        note.body = "2"
        ops.flush()
        ops.delete(note)
        ops.flush()
        ghost = Note(owner="a", body="never flushed")
        ops.add(ghost)
        ops.session.expunge(ghost)
        ops.commit()
    assert harness.events() == [
        ("insert", note.id, ()),
        ("update", note.id, ("body",)),
        ("delete", note.id, ()),
    ]
    assert harness.signal.count == (1 if harness.kind == "outbox" else 0)


def test_no_op_updates_emit_nothing(harness: Harness) -> None:
    with harness.ops() as ops:
        note = Note(owner="a", body="same")
        ops.add(note)
        ops.commit()
        note.body = "same"
        note.body = "other"
        note.body = "same"  # changed and changed back before the flush
        ops.commit()
        ops.execute(update(Note).where(Note.id == note.id).values(body="same"))
        ops.commit()
    assert harness.events() == [("insert", note.id, ())]


def test_untracked_commits_do_not_wake_the_relay(harness: Harness) -> None:
    with harness.ops() as ops:
        ops.add(Plain(owner="a", body="b"))
        ops.commit()
    assert harness.events() == []
    assert harness.signal.count == 0


def test_after_commit_handler_errors_never_reach_commit(db_url: str) -> None:
    ensure_tracked()
    engine = create_schema(db_url)

    def broken(messages: list[hooks.Message]) -> None:
        raise RuntimeError("handler bug")

    sink.use(hooks.AfterCommitSink(broken))
    with Session(engine) as session:
        session.add(Note(owner="a", body="b"))
        session.commit()  # must not raise
        session.add(Note(owner="a", body="c"))
        session.commit()  # and the session stays usable
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Note)).scalar_one() == 2
    engine.dispose()


# -- wake-ups across processes (PostgreSQL NOTIFY) ----------------------------------------------


def test_postgres_notify_only_after_commit(pg_database_url: str) -> None:
    import psycopg

    ensure_tracked()
    engine = create_schema(pg_database_url)
    sink.use(hooks.OutboxSink(outbox, notify_channel="hook_outbox_test"))
    dsn = sa.make_url(pg_database_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN hook_outbox_test")

        def notifications() -> list[str]:
            return [n.channel for n in listener.notifies(timeout=0.3, stop_after=5)]

        with Session(engine) as session:
            session.add(Note(owner="a", body="rolled back"))
            session.flush()
            session.rollback()
            assert notifications() == []
            session.add(Note(owner="a", body="1"))
            session.flush()
            session.add(Note(owner="a", body="2"))
            session.flush()
            assert notifications() == []  # not before the commit
            session.commit()
        assert notifications() == ["hook_outbox_test"]  # one, however many flushes
    engine.dispose()


# -- the SQLite fix, for engines the application did not build ---------------------------------


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
def test_sqlite_released_savepoint_rolls_back_with_its_parent(sqlite_url: str, driver: str) -> None:
    ensure_tracked()  # installs the fix process-wide
    path = sa.make_url(sqlite_url).database
    create_schema(sqlite_url).dispose()
    if driver == "sqlite":
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            with conn.begin():
                with conn.begin_nested():
                    conn.execute(Plain.__table__.insert().values(owner="a", body="b"))
                conn.rollback()
            count = conn.execute(sa.select(sa.func.count()).select_from(Plain)).scalar_one()
        engine.dispose()
    else:
        import asyncio

        from sqlalchemy.ext.asyncio import create_async_engine

        async def scenario() -> int:
            engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
            async with engine.connect() as conn:
                await conn.begin()
                async with conn.begin_nested():
                    await conn.execute(Plain.__table__.insert().values(owner="a", body="b"))
                await conn.rollback()
                result = await conn.execute(sa.select(sa.func.count()).select_from(Plain))
                value = int(result.scalar_one())
            await engine.dispose()
            return value

        count = asyncio.run(scenario())
    assert count == 0


def test_sqlite_transactions_take_the_write_lock_up_front(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE: a second writer waits (here: fails fast) at BEGIN, not mid-way."""
    ensure_tracked()
    create_schema(sqlite_url).dispose()
    engine = sa.create_engine(sqlite_url, connect_args={"timeout": 0.05})
    errors: list[Exception] = []
    with engine.connect() as first:
        first.begin()
        first.execute(sa.select(1))  # a read-only transaction holds the lock too

        def second() -> None:
            try:
                with engine.connect() as conn, conn.begin():
                    pass
            except sa.exc.OperationalError as exc:
                errors.append(exc)

        worker = threading.Thread(target=second)
        worker.start()
        worker.join()
        first.rollback()
    engine.dispose()
    assert len(errors) == 1 and "locked" in str(errors[0])


def test_sqlite_autocommit_engines_are_left_alone(sqlite_url: str) -> None:
    ensure_tracked()
    create_schema(sqlite_url).dispose()
    engine = sa.create_engine(sqlite_url, isolation_level="AUTOCOMMIT")
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with engine.connect() as conn:
        conn.execute(Plain.__table__.insert().values(owner="a", body="b"))
    engine.dispose()
    assert not [s for s in statements if s.startswith("BEGIN")]
