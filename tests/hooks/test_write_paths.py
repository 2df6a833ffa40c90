"""Every ORM write path leaves exactly its events or is refused before writing (T-014, T-017).

The matrix is `tests/hooks/write_paths.py`; each row runs on sync and async sessions, SQLite
and PostgreSQL. Besides the listed events, the outbox must agree with what really happened to
the table (rows added, removed, changed: kinds, ids, changed fields, old and new values), so a
path that writes without events, or emits without a change, fails here whatever the listing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import hooks
from tests.hooks.write_paths import MATRIX, Ctx, WritePath, render_markdown
from tests.support.tracked import (
    Folder,
    Note,
    create_schema,
    ensure_tracked,
    open_ops,
    outbox,
    outbox_bodies,
    sink,
)

IGNORED = {"touched_at"}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    ensure_tracked()
    sink.use(hooks.OutboxSink(outbox))
    engine = create_schema(db_url)
    yield engine
    engine.dispose()


def _seed(engine: sa.Engine) -> dict[str, int]:
    with Session(engine) as session:
        notes = {name: Note(owner="ann", body=name) for name in "abc"}
        folder = Folder(name="f", notes=[Note(owner="ann", body="d")])
        session.add_all([*notes.values(), folder])
        session.commit()
        ids = {name: note.id for name, note in notes.items()}
        ids["d"], ids["f"] = folder.notes[0].id, folder.id
    with engine.begin() as conn:
        conn.execute(outbox.delete())
    return ids


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _rows(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(Note.__table__)).mappings().all()
    return {row["id"]: {k: _plain(v) for k, v in row.items()} for row in rows}


@contextmanager
def _note_dml() -> Iterator[list[str]]:
    """Every INSERT/UPDATE/DELETE statement sent for the notes table, by any engine."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        head = statement.lstrip().upper()
        if head.startswith(("INSERT", "UPDATE", "DELETE")) and "HOOK_NOTE" in head.split("(")[0]:
            seen.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def _cases() -> list[Any]:
    return [
        pytest.param(path, mode, id=f"{path.id}-{mode}")
        for path in MATRIX
        for mode in ("sync", "async")
        if mode in path.modes
    ]


@pytest.mark.parametrize(("path", "mode"), _cases())
def test_write_path(engine: sa.Engine, db_url: str, path: WritePath, mode: str) -> None:
    ids = _seed(engine)
    names = {note_id: name for name, note_id in ids.items() if name != "f"}
    before = _rows(engine)
    dialect = engine.dialect.name
    with _note_dml() as dml, open_ops(db_url, mode, expire_on_commit=False) as ops:
        ctx = Ctx(ops, ids, dialect)
        if path.expect is None:
            with pytest.raises(hooks.UnsupportedWritePath) as refused:
                path.run(ctx)
            assert dml == [], f"refused only after writing: {dml}"
            assert "Note" in str(refused.value) or "hook_note" in str(refused.value)
            ops.rollback()
        else:
            path.run(ctx)
        ops.commit()
    after = _rows(engine)
    bodies = outbox_bodies(engine)

    if path.expect is None:
        assert after == before and bodies == []
        return

    # 1. The events listed for this path, in order.
    got = [(b["kind"], names.get(b["identity"][0], "new"), tuple(b["changed"])) for b in bodies]
    assert got == list(path.expect)
    for body in bodies:
        name = names.get(body["identity"][0])
        for key, value in path.old.get(name or "", {}).items():
            assert body["old"][key] == value

    # 2. The events are exactly what happened to the table.
    happened: dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any], set[str]]] = {}
    for note_id in before.keys() - after.keys():
        happened["delete", note_id] = (before[note_id], {}, set())
    for note_id in after.keys() - before.keys():
        happened["insert", note_id] = ({}, after[note_id], set())
    for note_id in before.keys() & after.keys():
        changed = {
            k
            for k in before[note_id]
            if k not in IGNORED and before[note_id][k] != after[note_id][k]
        }
        if changed:
            happened["update", note_id] = (before[note_id], after[note_id], changed)
    emitted = {(b["kind"], b["identity"][0]): b for b in bodies}
    assert len(emitted) == len(bodies), "two events for one row"
    assert emitted.keys() == happened.keys()
    for key, (old, new, changed) in happened.items():
        body = emitted[key]
        assert set(body["changed"]) == changed
        assert {k: v for k, v in body["old"].items() if k not in IGNORED} == {
            k: v for k, v in old.items() if k not in IGNORED
        }
        assert {k: v for k, v in body["new"].items() if k not in IGNORED} == {
            k: v for k, v in new.items() if k not in IGNORED
        }


def test_docs_table_is_the_matrix() -> None:
    text = DOCS.read_text()
    match = re.search(
        r"<!-- write-path-matrix:start -->\n(.*?)<!-- write-path-matrix:end -->", text, re.S
    )
    assert match, "docs/hooks.md lost its write-path-matrix markers"
    assert match.group(1) == render_markdown(), (
        "docs/hooks.md's write-path table differs from tests/hooks/write_paths.py; "
        "regenerate it: python -m tests.hooks.write_paths"
    )


def test_matrix_ids_are_unique() -> None:
    ids = [path.id for path in MATRIX]
    assert len(ids) == len(set(ids))
