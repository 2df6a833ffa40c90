"""The task service layer on its own, the code REST and MCP share (issue 2)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from src import services
from src.db import create_tables, make_engine
from src.models import Task, TaskCreate, TaskUpdate

from tests.support.factories import TaskFactory, factory_session


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    # As the app's sessions: nothing re-read after commit, so no transaction (and on SQLite no
    # write lock) stays open while `stored()` reads through another session.
    with Session(engine, expire_on_commit=False) as session:
        yield session


def stored(engine: sa.Engine, task_id: int | None) -> Task | None:
    """The row as a fresh session reads it, independent of the session under test."""
    with Session(engine) as fresh:
        return fresh.get(Task, task_id)


def make(engine: sa.Engine, n: int = 1, **fields: object) -> list[Task]:
    with factory_session(engine):
        tasks: list[Task] = TaskFactory.create_batch(n, **fields)
    return tasks


def test_create_stores_the_task_for_the_user(engine: sa.Engine, session: Session) -> None:
    due = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    task = services.create_task(session, "alice", TaskCreate(title=" Write ", due_date=due))
    assert task.id is not None
    row = stored(engine, task.id)
    assert row is not None
    assert (row.user_id, row.title, row.completed, row.due_date) == ("alice", "Write", False, due)
    assert row.created_at.tzinfo is not None


def test_another_users_task_behaves_as_missing(engine: sa.Engine, session: Session) -> None:
    (bobs,) = make(engine, user_id="bob", title="bob's", done=True)
    assert bobs.id is not None
    operations = [
        lambda: services.get_task(session, "alice", bobs.id),
        lambda: services.update_task(session, "alice", bobs.id, TaskUpdate(title="mine now")),
        lambda: services.complete_task(session, "alice", bobs.id),
        lambda: services.uncomplete_task(session, "alice", bobs.id),
        lambda: services.delete_task(session, "alice", bobs.id),
    ]
    for operation in operations:
        with pytest.raises(services.TaskNotFound) as foreign:
            operation()
        assert foreign.value.task_id == bobs.id
    assert services.list_tasks(session, "alice") == []
    assert services.clear_completed(session, "alice") == 0
    row = stored(engine, bobs.id)
    assert row is not None
    assert (row.title, row.completed) == ("bob's", True)
    # The error reads like the one for an id nobody has.
    with pytest.raises(services.TaskNotFound) as missing:
        services.get_task(session, "alice", bobs.id + 1)
    assert str(missing.value).replace(str(bobs.id + 1), "N") == str(foreign.value).replace(
        str(bobs.id), "N"
    )


def test_impossible_ids_are_missing_tasks(session: Session) -> None:
    for task_id in (0, -3, 2**31, 2**64):
        with pytest.raises(services.TaskNotFound):
            services.get_task(session, "alice", task_id)
        with pytest.raises(services.TaskNotFound):
            services.complete_task(session, "alice", task_id)


def test_update_changes_only_the_fields_sent(engine: sa.Engine, session: Session) -> None:
    due = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    (task,) = make(engine, title="Old", description="keep", due_date=due)
    assert task.id is not None
    services.update_task(session, "alice", task.id, TaskUpdate(title="New"))
    row = stored(engine, task.id)
    assert row is not None
    assert (row.title, row.description, row.due_date, row.completed) == ("New", "keep", due, False)
    assert row.updated_at > task.updated_at
    assert row.created_at == task.created_at

    services.update_task(session, "alice", task.id, TaskUpdate(description=None))
    row = stored(engine, task.id)
    assert row is not None
    assert (row.title, row.description, row.due_date) == ("New", None, due)


def test_an_update_with_no_fields_writes_nothing(engine: sa.Engine, session: Session) -> None:
    (task,) = make(engine)
    assert task.id is not None
    services.update_task(session, "alice", task.id, TaskUpdate())
    row = stored(engine, task.id)
    assert row is not None
    assert row.updated_at == task.updated_at


@pytest.mark.parametrize("action", ["complete_task", "uncomplete_task"])
def test_complete_and_uncomplete_are_idempotent(
    engine: sa.Engine, session: Session, action: str
) -> None:
    target = action == "complete_task"
    (task,) = make(engine, completed=not target)
    assert task.id is not None
    operation = getattr(services, action)
    first = operation(session, "alice", task.id)
    assert first.completed is target
    changed = stored(engine, task.id)
    assert changed is not None
    assert changed.completed is target
    assert changed.updated_at > task.updated_at

    again = operation(session, "alice", task.id)
    assert again.completed is target
    unchanged = stored(engine, task.id)
    assert unchanged is not None
    assert unchanged.updated_at == changed.updated_at  # the repeat wrote nothing


def test_delete_returns_the_task_as_it_was(engine: sa.Engine, session: Session) -> None:
    (task, other) = make(engine, 2)
    assert task.id is not None
    deleted = services.delete_task(session, "alice", task.id)
    assert (deleted.id, deleted.title) == (task.id, task.title)
    assert stored(engine, task.id) is None
    assert stored(engine, other.id) is not None


def test_clear_completed_returns_the_count_and_leaves_others(
    engine: sa.Engine, session: Session
) -> None:
    make(engine, 3, user_id="alice", done=True)
    (open_task,) = make(engine, user_id="alice")
    bobs = make(engine, 2, user_id="bob", done=True)
    assert services.clear_completed(session, "alice") == 3
    assert [t.id for t in services.list_tasks(session, "alice")] == [open_task.id]
    assert [t.id for t in services.list_tasks(session, "bob", "completed")] == [t.id for t in bobs]
    assert services.clear_completed(session, "alice") == 0


def test_list_filters_pages_and_orders_by_id(engine: sa.Engine, session: Session) -> None:
    tasks = make(engine, 3) + make(engine, 2, done=True)
    make(engine, 2, user_id="bob")
    ids = [t.id for t in tasks]
    assert [t.id for t in services.list_tasks(session, "alice")] == ids
    assert [t.id for t in services.list_tasks(session, "alice", "pending")] == ids[:3]
    assert [t.id for t in services.list_tasks(session, "alice", "completed")] == ids[3:]
    assert [t.id for t in services.list_tasks(session, "alice", limit=2, offset=1)] == ids[1:3]


def test_the_session_stays_usable_after_a_not_found(engine: sa.Engine, session: Session) -> None:
    with pytest.raises(services.TaskNotFound):
        services.complete_task(session, "alice", 12345)
    task = services.create_task(session, "alice", TaskCreate(title="after the error"))
    assert stored(engine, task.id) is not None


def test_a_due_date_keeps_its_instant_on_every_backend(engine: sa.Engine, session: Session) -> None:
    # +05:30 in, UTC out: the same instant, never the wall-clock time with the offset dropped.
    local = datetime(2030, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    task = services.create_task(session, "alice", TaskCreate(title="t", due_date=local))
    row = stored(engine, task.id)
    assert row is not None
    assert row.due_date == datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
    assert row.due_date is not None and row.due_date.utcoffset() == timedelta(0)
