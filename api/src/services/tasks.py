"""Task operations. Every function takes the session and the acting user.

A task of another user behaves exactly as a missing one. Functions commit their own work so
that callers (REST, MCP, scripts) get one transaction per operation; events come from the ORM
hooks on commit, never from here.

Nothing is re-read after a commit: the app's sessions use `expire_on_commit=False` (the model
has no server-side defaults, so the object already holds what was written). On SQLite every
transaction holds the write lock (`BEGIN IMMEDIATE`), so a re-read would keep it until the
session closes.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from sqlmodel import Session, col, select

from src.models import Task, TaskCreate, TaskUpdate
from src.services.errors import TaskNotFound

__all__ = [
    "StatusFilter",
    "clear_completed",
    "complete_task",
    "create_task",
    "delete_task",
    "get_task",
    "list_tasks",
    "uncomplete_task",
    "update_task",
]

StatusFilter = Literal["all", "pending", "completed"]

# `task.id` is an INTEGER column (32-bit on PostgreSQL): a larger id cannot exist, and the
# driver would fail on it (a 500) instead of answering like for any other missing task.
MAX_TASK_ID = 2**31 - 1


def create_task(session: Session, user_id: str, data: TaskCreate) -> Task:
    task = Task(user_id=user_id, **data.model_dump())
    session.add(task)
    session.commit()
    return task


def get_task(session: Session, user_id: str, task_id: int) -> Task:
    if not 0 < task_id <= MAX_TASK_ID:
        raise TaskNotFound(task_id)
    task = session.exec(
        select(Task).where(Task.id == task_id, Task.user_id == user_id)
    ).one_or_none()
    if task is None:
        raise TaskNotFound(task_id)
    return task


def list_tasks(
    session: Session,
    user_id: str,
    status: StatusFilter = "all",
    *,
    limit: int | None = None,
    offset: int = 0,
) -> list[Task]:
    """Oldest first by id: ids only grow, so pages are stable while tasks are added."""
    query = select(Task).where(Task.user_id == user_id)
    if status == "pending":
        query = query.where(col(Task.completed).is_(False))
    elif status == "completed":
        query = query.where(col(Task.completed).is_(True))
    query = query.order_by(col(Task.id)).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.exec(query).all())


def update_task(session: Session, user_id: str, task_id: int, data: TaskUpdate) -> Task:
    """Only the fields sent are assigned, so only they can become dirty (and evented)."""
    task = get_task(session, user_id, task_id)
    for name, value in data.model_dump(exclude_unset=True).items():
        setattr(task, name, value)
    session.commit()
    return task


def _set_completed(session: Session, user_id: str, task_id: int, completed: bool) -> Task:
    task = get_task(session, user_id, task_id)
    if task.completed is not completed:  # idempotent: a repeat changes and emits nothing
        task.completed = completed
    # Also when nothing changed: ends the read transaction (and SQLite's write lock) now.
    session.commit()
    return task


def complete_task(session: Session, user_id: str, task_id: int) -> Task:
    return _set_completed(session, user_id, task_id, True)


def uncomplete_task(session: Session, user_id: str, task_id: int) -> Task:
    return _set_completed(session, user_id, task_id, False)


def delete_task(session: Session, user_id: str, task_id: int) -> Task:
    """Deletes and returns the (detached) task as it was."""
    task = get_task(session, user_id, task_id)
    session.delete(task)
    session.commit()
    return task


def clear_completed(session: Session, user_id: str) -> int:
    """One ORM bulk DELETE; the hooks emit one task.deleted + task.sync per removed row."""
    result = session.execute(
        sa.delete(Task).where(col(Task.user_id) == user_id, col(Task.completed).is_(True))
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)
