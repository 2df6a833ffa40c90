"""The ORM hooks benchmark measures what its variants claim to be (issue 4).

A variant that silently did nothing (no outbox rows for "hooks on", no extra statement for
"+ SELECT 1") would make the published ratios meaningless; nothing here times anything.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from bench import bench_hooks


@pytest.fixture
def events_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.config import get_settings

    monkeypatch.setenv("DAPR_ENABLED", "true")
    monkeypatch.setenv("RELAY_ENABLED", "false")
    get_settings.cache_clear()


def _bench_engine(url: str) -> tuple[bench_hooks.Models, sa.Engine]:
    models = bench_hooks._models()
    engine = sa.create_engine(url)
    SQLModel.metadata.create_all(engine, tables=models.tables())
    return models, engine


def _outbox_rows(engine: sa.Engine, outbox: sa.Table) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(row.topic, row.payload) for row in conn.execute(sa.select(outbox))]


def _write_one_of_each(session: Session, model: type[Any]) -> None:
    task = model(user_id="bench", title="Task 1", due_date=None)
    session.add(task)
    session.commit()
    task.title = "Task 1 (edited)"
    session.commit()
    session.delete(task)
    session.commit()


@pytest.mark.usefixtures("events_on")
def test_variants_write_what_they_claim(db_url: str) -> None:
    models, engine = _bench_engine(db_url)
    try:
        expected_topics = ["task-events", "task-updates"] * 3  # insert, update, delete

        def written_by(model: type[Any]) -> list[tuple[str, str]]:
            with engine.begin() as conn:
                conn.execute(models.outbox.delete())
            with Session(engine, expire_on_commit=False) as session:
                _write_one_of_each(session, model)
            return _outbox_rows(engine, models.outbox)

        on = written_by(models.on)
        assert [topic for topic, _ in on] == expected_topics
        assert written_by(models.off) == []
        assert written_by(models.capture) == []  # derived, then dropped
        outbox_only = written_by(models.outbox_only)
        assert [topic for topic, _ in outbox_only] == expected_topics
        # The ready-made messages are the Task rules' own, as big as the real ones.
        for (_, real), (_, ready) in zip(on, outbox_only, strict=True):
            assert abs(len(real) - len(ready)) < 40
        assert written_by(models.one_statement) == []
    finally:
        engine.dispose()


@pytest.mark.usefixtures("events_on")
def test_one_statement_variant_runs_select_1_per_write(sqlite_url: str) -> None:
    models, engine = _bench_engine(sqlite_url)
    statements: list[str] = []

    @sa.event.listens_for(engine, "connect")
    def trace(dbapi_connection: sqlite3.Connection, record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    engine.dispose()  # reconnect with the trace on
    try:
        with Session(engine, expire_on_commit=False) as session:
            _write_one_of_each(session, models.one_statement)
            statements.clear()
            task = models.one_statement(user_id="bench", title="Task 2")
            session.add(task)
            session.commit()
    finally:
        engine.dispose()
    assert statements.count("SELECT 1") == 1
    assert any(s.startswith("INSERT INTO bench_one_statement_task") for s in statements)


def test_report_has_a_column_per_variant() -> None:
    timings = bench_hooks.Timings()
    for variant in ("off", "capture", "outbox", "statement", "on"):
        for op in bench_hooks.OPS:
            timings.add(variant, op, 0.001 if variant == "off" else 0.0012)
    lines = bench_hooks.report("SQLite file", timings)
    assert len(lines) == 3
    assert lines[0].startswith("| SQLite file | insert | 1,000 | 1,200 | **1.20x** |")
    assert lines[0].count("1.20x") == 4


def test_bench_tables_stay_out_of_the_app_metadata() -> None:
    # The app's migrations check and `create_all` see SQLModel.metadata: no bench tables there.
    models = bench_hooks._models()
    assert set(SQLModel.metadata.tables) == {"task", "event_outbox"}
    own = [models.off, models.capture, models.outbox_only, models.one_statement]
    assert all(model.__table__.name.startswith("bench_") for model in own)
