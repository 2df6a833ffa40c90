"""Bulk statements: one event per row, in order, written in bounded chunks (T-014, T-019)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, insert, update

import hooks
from hooks import _outbox, _statements
from tests.support.tracked import (
    Note,
    create_schema,
    ensure_tracked,
    open_ops,
    outbox,
    read_outbox,
    sink,
)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    ensure_tracked()
    sink.use(hooks.OutboxSink(outbox))
    engine = create_schema(db_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bulk_statements_write_every_event_in_chunks(
    engine: sa.Engine, db_url: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so 60 rows cross several chunk boundaries of both the derivation and the
    # outbox statement.
    monkeypatch.setattr(_outbox, "BULK_CHUNK", 7)
    monkeypatch.setattr(_statements, "WRITE_CHUNK", 25)
    outbox_writes: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if "hook_outbox" in statement and statement.lstrip().upper().startswith(("INSERT", "WITH")):
            outbox_writes.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        with open_ops(db_url, mode) as ops:
            rows = [{"owner": "ann", "body": f"n{i}"} for i in range(60)]
            ops.execute(insert(Note), rows)
            ops.commit()
            ops.execute(update(Note).where(Note.owner == "ann").values(body=Note.body + "!"))
            ops.commit()
            ops.execute(delete(Note).where(Note.owner == "ann"))
            ops.commit()
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)

    got = read_outbox(engine)
    ids = [note_id for _, note_id, _ in got[:60]]
    assert ids == sorted(ids) and len(set(ids)) == 60
    assert got == (
        [("insert", i, ()) for i in ids]
        + [("update", i, ("body",)) for i in ids]
        + [("delete", i, ()) for i in ids]
    )
    # Per statement: 60 messages in chunks of 25 changes; 25 messages (above BULK_THRESHOLD)
    # are written 7 rows per statement (4 statements), the last 10 with one multi-row VALUES.
    per_statement = 4 + 4 + 1
    assert len(outbox_writes) == 3 * per_statement
    with engine.connect() as conn:
        event_ids = conn.execute(sa.select(outbox.c.event_id)).scalars().all()
    assert len(set(event_ids)) == 180


def test_bulk_delete_reads_the_rows_once(engine: sa.Engine, db_url: str) -> None:
    """All rows read were deleted (rowcount): no second SELECT."""
    with open_ops(db_url, "sync") as ops:
        ops.execute(insert(Note), [{"owner": "ann", "body": str(i)} for i in range(20)])
        ops.commit()
        selects: list[str] = []
        sa.event.listen(
            ops.sync_session.connection(),
            "before_cursor_execute",
            lambda *a: selects.append(a[2]) if a[2].lstrip().upper().startswith("SELECT") else None,
        )
        ops.execute(delete(Note).where(Note.owner == "ann"))
        ops.commit()
    assert len(selects) == 1
    assert [kind for kind, _, _ in read_outbox(engine)][20:] == ["delete"] * 20
