"""An ORM DELETE/UPDATE statement changes only rows it has events for, even when another
transaction commits a new match between the hooks' read and the statement (PostgreSQL,
READ COMMITTED). Before the fix, the new match was deleted without any task.deleted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select
from src.config import get_settings
from src.models import Task, outbox_table


@pytest.fixture
def engine(pg_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    monkeypatch.setenv("DAPR_ENABLED", "true")
    get_settings.cache_clear()
    engine = sa.create_engine(pg_database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _deleted_subjects(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox_table.c.partition_key, outbox_table.c.payload)).all()
    return {key for key, payload in rows if '"type":"task.deleted"' in payload}


@pytest.mark.parametrize("statement", ["delete", "update"])
def test_a_row_that_starts_matching_meanwhile_is_not_changed_silently(
    engine: sa.Engine, statement: str
) -> None:
    with Session(engine) as setup:
        done = Task(user_id="alice", title="done", completed=True)
        racing = Task(user_id="alice", title="racing", completed=False)
        setup.add_all([done, racing])
        setup.commit()
        done_id, racing_id = done.id, racing.id
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())  # the setup's task.created events

    other = sa.create_engine(engine.url)
    fired: list[Any] = []

    def complete_racing_task_now(conn, cursor, sql: str, *args: Any) -> None:  # type: ignore[no-untyped-def]
        # Right before the statement itself (after the hooks' SELECT … FOR UPDATE), another
        # transaction completes a second task and commits.
        if not fired and sql.lstrip().upper().startswith(statement.upper()) and "task" in sql:
            fired.append(sql)
            with other.begin() as racer:
                racer.execute(
                    sa.text("UPDATE task SET completed = true WHERE id = :id"), {"id": racing_id}
                )

    sa.event.listen(engine, "before_cursor_execute", complete_racing_task_now)
    try:
        with Session(engine) as session:
            if statement == "delete":
                session.execute(sa.delete(Task).where(Task.completed.is_(True)))  # type: ignore[attr-defined]
            else:
                session.execute(
                    sa.update(Task).where(Task.completed.is_(True)).values(title="archived")  # type: ignore[attr-defined]
                )
            session.commit()
    finally:
        sa.event.remove(engine, "before_cursor_execute", complete_racing_task_now)
        other.dispose()

    assert fired, "the racing commit did not happen"
    with Session(engine) as check:
        remaining = {t.id: t for t in check.exec(select(Task)).all()}
    if statement == "delete":
        assert done_id not in remaining
        # Every row the statement removed has its event; the racing task was left alone.
        assert racing_id in remaining
        assert _deleted_subjects(engine) == {str(done_id)}
    else:
        # The racing task, completed meanwhile, keeps its title: no change without an event.
        assert remaining[done_id].title == "archived"
        assert remaining[racing_id].title == "racing"
        with engine.connect() as conn:
            keys = {r.partition_key for r in conn.execute(sa.select(outbox_table.c.partition_key))}
        assert str(racing_id) not in keys
