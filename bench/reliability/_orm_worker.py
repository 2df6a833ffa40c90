"""ORM scripts as a separate process: commits and deliberate rollbacks through plain Sessions.

`python -m bench.reliability orm-worker --user U --ops N` (with DATABASE_URL and
DAPR_ENABLED=true in the environment) writes one JSON `Mutation` per line on stdout. Each
transaction sets the correlation id itself (`src.request_context.correlation_id`), since no
request does it here; the ORM hooks copy it into the events' `correlationid`.

The scripts are the only writer of their user's tasks, so they read the state they need from
the database before each write.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from bench.reliability._load import _Task, expected_for_change
from bench.reliability._verifier import ExpectedEvent, Mutation, Outcome

__all__ = ["run_orm_worker"]

_DUES = [datetime(2032 + i, 3, 1, 8, 0, tzinfo=UTC) for i in range(3)]


class _Script:
    def __init__(self, user: str, seed: int, out: IO[str]) -> None:
        from src.db import get_engine
        from src.models import Task

        self.Task = Task
        self.engine = get_engine()
        self.user = user
        self.rng = random.Random(f"{seed}-{user}")
        self.out = out
        self.seq = 0
        self.counter = 0

    @contextmanager
    def correlated(self, op_id: str) -> Iterator[None]:
        from src.request_context import correlation_id

        token = correlation_id.set(op_id)
        try:
            yield
        finally:
            correlation_id.reset(token)

    def op_id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.user}-{self.counter}-{kind}-{self.rng.getrandbits(32):08x}"

    def emit(
        self, op_id: str, kind: str, outcome: Outcome, expected: tuple[ExpectedEvent, ...]
    ) -> None:
        self.seq += 1
        mutation = Mutation(op_id, self.user, kind, "orm", outcome, expected, self.seq)
        self.out.write(mutation.to_json() + "\n")
        self.out.flush()

    def tasks(self, session: Session) -> list[Any]:
        Task = self.Task
        return list(session.scalars(sa.select(Task).where(col(Task.user_id) == self.user)))

    def state(self, task: Any) -> _Task:
        return _Task(task.title, task.description, task.due_date, task.completed)

    def new_task(self) -> Any:
        due = self.rng.choice([None, *_DUES])
        return self.Task(user_id=self.user, title=f"orm {self.rng.randrange(10**6)}", due_date=due)

    # --- scripts: each is one transaction (or two, for the savepoint ones) ---------------------

    def create_commit(self) -> None:
        op = self.op_id("orm-create")
        with self.correlated(op), Session(self.engine) as session:
            task = self.new_task()
            session.add(task)
            self.commit(
                session, op, "create", lambda: expected_for_change(task.id, None, self.state(task))
            )

    def commit(
        self,
        session: Session,
        op: str,
        kind: str,
        expected: Callable[[], tuple[ExpectedEvent, ...]],
    ) -> None:
        """Commits; a failure during the commit leaves its fate unknown."""
        try:
            session.flush()
            events = expected()
        except sa.exc.DBAPIError:
            self.emit(op, kind, Outcome.ROLLED_BACK, ())  # nothing reached the database
            session.rollback()
            return
        try:
            session.commit()
        except sa.exc.DBAPIError:
            self.emit(op, kind, Outcome.UNKNOWN, events)
            return
        self.emit(op, kind, Outcome.COMMITTED, events)

    def create_rollback(self) -> None:
        op = self.op_id("orm-create-rollback")
        with self.correlated(op), Session(self.engine) as session:
            task = self.new_task()
            session.add(task)
            session.flush()  # the row and its outbox rows exist in the transaction
            expected = expected_for_change(task.id, None, self.state(task))
            session.rollback()
        self.emit(op, "create", Outcome.ROLLED_BACK, expected)

    def savepoint(self) -> None:
        """A savepoint rolled back inside a transaction that commits another change."""
        dropped, kept = self.op_id("orm-savepoint-dropped"), self.op_id("orm-savepoint-kept")
        with Session(self.engine) as session:
            with self.correlated(dropped):
                nested = session.begin_nested()
                ghost = self.new_task()
                session.add(ghost)
                session.flush()
                ghost_events = expected_for_change(ghost.id, None, self.state(ghost))
                nested.rollback()
            with self.correlated(kept):
                task = self.new_task()
                session.add(task)
                self.commit(
                    session,
                    kept,
                    "create",
                    lambda: expected_for_change(task.id, None, self.state(task)),
                )
        self.emit(dropped, "create", Outcome.ROLLED_BACK, ghost_events)

    def released_then_rolled_back(self) -> None:
        """A savepoint released, then its transaction rolled back: nothing happened."""
        op = self.op_id("orm-released-rollback")
        with self.correlated(op), Session(self.engine) as session:
            with session.begin_nested():
                task = self.new_task()
                session.add(task)
            session.flush()
            expected = expected_for_change(task.id, None, self.state(task))
            session.rollback()
        self.emit(op, "create", Outcome.ROLLED_BACK, expected)

    def update_statement(self) -> None:
        """`session.execute(update(Task))`: an ORM statement, no unit of work."""
        op = self.op_id("orm-update-stmt")
        with self.correlated(op), Session(self.engine) as session:
            tasks = self.tasks(session)
            if not tasks:
                return
            task = self.rng.choice(tasks)
            before = self.state(task)
            title = f"stmt {self.rng.randrange(10**6)}"
            after = _Task(title, before.description, before.due_date, before.completed)
            Task = self.Task
            session.execute(sa.update(Task).where(Task.id == task.id).values(title=title))
            task_id = task.id
            self.commit(session, op, "update", lambda: expected_for_change(task_id, before, after))

    def update_rollback(self) -> None:
        op = self.op_id("orm-update-rollback")
        with self.correlated(op), Session(self.engine) as session:
            tasks = self.tasks(session)
            if not tasks:
                return
            task = self.rng.choice(tasks)
            before = self.state(task)
            task.title = f"never {self.rng.randrange(10**6)}"
            task.completed = not task.completed
            session.flush()
            expected = expected_for_change(task.id, before, self.state(task))
            session.rollback()
        self.emit(op, "update", Outcome.ROLLED_BACK, expected)

    def complete_attribute(self) -> None:
        """Unit of work: attribute change on a loaded task, committed."""
        op = self.op_id("orm-toggle")
        with self.correlated(op), Session(self.engine) as session:
            tasks = self.tasks(session)
            if not tasks:
                return
            task = self.rng.choice(tasks)
            before = self.state(task)
            task.completed = not task.completed
            after = self.state(task)
            task_id = task.id
            self.commit(session, op, "toggle", lambda: expected_for_change(task_id, before, after))

    def failing_block(self) -> None:
        """An exception inside `with session.begin()`: the block rolls back."""
        op = self.op_id("orm-exception")
        expected: tuple[ExpectedEvent, ...] = ()
        with self.correlated(op), Session(self.engine) as session:
            try:
                with session.begin():
                    task = self.new_task()
                    session.add(task)
                    session.flush()
                    expected = expected_for_change(task.id, None, self.state(task))
                    raise _Abort
            except _Abort:
                pass
        self.emit(op, "create", Outcome.ROLLED_BACK, expected)

    def delete_statement(self) -> None:
        op = self.op_id("orm-delete-stmt")
        with self.correlated(op), Session(self.engine) as session:
            tasks = self.tasks(session)
            if len(tasks) < 3:
                return
            task = self.rng.choice(tasks)
            before = self.state(task)
            Task = self.Task
            session.execute(sa.delete(Task).where(Task.id == task.id))
            task_id = task.id
            self.commit(session, op, "delete", lambda: expected_for_change(task_id, before, None))

    def run(self, ops: int, pause: float) -> None:
        scripts = [
            (self.create_commit, 4),
            (self.create_rollback, 2),
            (self.savepoint, 1),
            (self.released_then_rolled_back, 1),
            (self.update_statement, 2),
            (self.update_rollback, 2),
            (self.complete_attribute, 2),
            (self.failing_block, 1),
            (self.delete_statement, 1),
        ]
        for _ in range(ops):
            script = self.rng.choices([s for s, _ in scripts], weights=[w for _, w in scripts])[0]
            try:
                script()
            except sa.exc.DBAPIError as exc:  # the database went away between statements
                sys.stderr.write(f"orm script {script.__name__}: {type(exc).__name__}\n")
                time.sleep(0.2)
            if pause:
                time.sleep(pause)


class _Abort(Exception):
    pass


def run_orm_worker(user: str, ops: int, seed: int, pause: float = 0.0) -> None:
    _Script(user, seed, sys.stdout).run(ops, pause)
