"""The bulk benchmark measures what it claims (issue 16): hooked statements write one event
set per row, the untracked table none; nothing here times anything."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from bench import bench_bulk
from bench.bench_hooks import _models


@pytest.fixture
def events_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.config import get_settings

    monkeypatch.setenv("DAPR_ENABLED", "true")
    monkeypatch.setenv("RELAY_ENABLED", "false")
    get_settings.cache_clear()


@pytest.mark.usefixtures("events_on")
def test_run_counts_the_events_of_each_statement(db_url: str) -> None:
    result = bench_bulk.run(db_url, rows=30, rounds=2)
    # update: task.completed + task.sync for all, reminder.cancelled for the 15 with a due
    # date; delete: task.deleted + task.sync.
    assert result["events"] == {"update": [75, 75], "delete": [60, 60]}
    assert len(result["samples"][("off", "update")]) == 2
    lines = bench_bulk.report("SQLite file", 30, result)
    assert len(lines) == 2 and lines[0].startswith("| SQLite file | update | 30 |")


@pytest.mark.usefixtures("events_on")
def test_untracked_table_writes_no_events(sqlite_url: str) -> None:
    models = _models()
    engine = sa.create_engine(sqlite_url)
    SQLModel.metadata.create_all(engine, tables=[models.off.__table__, models.outbox])
    try:
        bench_bulk._fill(engine, models.off, 10)
        for op in bench_bulk.OPS:
            bench_bulk._timed(engine, models.off, op)
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(models.outbox))
            assert count.scalar_one() == 0
            rows = conn.execute(sa.select(sa.func.count()).select_from(models.off.__table__))
            assert rows.scalar_one() == 0
    finally:
        engine.dispose()
