"""factory-boy factories for tasks: rows in the database and REST request bodies.

Rows go through an ORM session, so they take the same path (and hooks) as application writes:

    with factory_session(engine) as session:
        task = TaskFactory(user_id="alice", done=True)
        TaskFactory.create_batch(3, user_id="bob")
    # committed here; `task.id` etc. stay readable (expire_on_commit=False)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, cast

import factory
import sqlalchemy as sa
from factory.alchemy import SQLAlchemyModelFactory
from sqlmodel import Session
from src.models import Task

from hooks import utc_now

__all__ = ["TaskFactory", "TaskPayloadFactory", "factory_session", "payload"]

_session: ContextVar[Session | None] = ContextVar("factory_session", default=None)


def _current_session() -> Session:
    session = _session.get()
    if session is None:
        raise RuntimeError("create rows inside `with factory_session(engine):`")
    return session


@contextmanager
def factory_session(engine: sa.Engine) -> Iterator[Session]:
    """Binds the factories to one session; commits when the block ends without error."""
    with Session(engine, expire_on_commit=False) as session:
        token = _session.set(session)
        try:
            yield session
            session.commit()
        finally:
            _session.reset(token)


class TaskFactory(SQLAlchemyModelFactory):
    class Meta:
        model = Task
        sqlalchemy_session_factory = _current_session
        sqlalchemy_session_persistence = "flush"  # ids are known right after creation

    class Params:
        done = factory.Trait(completed=True)
        due = factory.Trait(due_date=factory.LazyFunction(lambda: utc_now() + timedelta(days=1)))

    user_id = "alice"
    title = factory.Sequence(lambda n: f"Task {n}")
    description = factory.LazyAttribute(lambda task: f"Notes on {task.title}")
    completed = False
    due_date = None


class TaskPayloadFactory(factory.DictFactory):
    """A valid `POST /api/{user}/tasks` body."""

    class Params:
        due = factory.Trait(
            due_date=factory.LazyFunction(lambda: (utc_now() + timedelta(days=2)).isoformat())
        )

    title = factory.Sequence(lambda n: f"Payload task {n}")
    description = factory.LazyAttribute(lambda body: f"Notes on {body.title}")


def payload(**fields: Any) -> dict[str, Any]:
    """Shorthand for `TaskPayloadFactory(**fields)` with a precise return type."""
    return cast("dict[str, Any]", TaskPayloadFactory(**fields))
