"""The outbox writer's use of SQLAlchemy's private `Connection._cursor_execute` is pinned.

The public `exec_driver_sql` costs measurably more per flush (docs/benchmarks.md, issue 16),
so the small per-flush INSERT uses the private method SQLAlchemy itself uses for one-off
statements. These tests fail loudly when a SQLAlchemy release changes it, instead of the
writer silently falling back (it would: `PRIVATE_CURSOR_EXECUTE` turns False).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import hooks
from hooks import _outbox
from tests.support.tracked import Note, create_schema, ensure_tracked, outbox, read_outbox, sink


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    ensure_tracked()
    sink.use(hooks.OutboxSink(outbox))
    engine = create_schema(db_url)
    yield engine
    engine.dispose()


def test_private_cursor_execute_has_the_expected_signature() -> None:
    method = sa.engine.Connection._cursor_execute
    names = list(inspect.signature(method).parameters)
    assert names[:5] == ["self", "cursor", "statement", "parameters", "context"], (
        f"SQLAlchemy {sa.__version__} changed Connection._cursor_execute{names}: "
        "hooks/_outbox.py's small-INSERT path falls back to exec_driver_sql; re-measure and "
        "update it"
    )
    assert _outbox.PRIVATE_CURSOR_EXECUTE


@pytest.mark.parametrize("private", [True, False], ids=["private", "public"])
def test_both_paths_write_the_same_rows_and_fire_engine_events(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, private: bool
) -> None:
    monkeypatch.setattr(_outbox, "PRIVATE_CURSOR_EXECUTE", private)
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    with Session(engine) as session:
        session.add_all([Note(owner="a", body="1"), Note(owner="b", body="2")])
        session.commit()
    assert [kind for kind, _, _ in read_outbox(engine)] == ["insert", "insert"]
    assert len([s for s in seen if s.startswith(("INSERT INTO hook_outbox", "WITH"))]) == 1


def test_driver_errors_are_wrapped(engine: sa.Engine) -> None:
    """Like any statement: a driver error surfaces as sqlalchemy.exc.DBAPIError."""
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError):
        _outbox._execute(conn, "INSERT INTO no_such_table VALUES (1)", {})
