"""Every ORM write path of a tracked model yields exactly the expected outbox rows, in order.

Generic: a test-only model (`Note`) on its own MetaData with a rule that reports what the
hooks captured. Each test runs on SQLite and PostgreSQL, with a sync `Session` and (where the
path exists for it) an `AsyncSession`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import sqlmodel
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

import hooks
from tests.support.tracked import (
    Note,
    Plain,
    create_schema,
    ensure_tracked,
    open_ops,
    outbox,
    outbox_bodies,
    read_outbox,
    sink,
)

MODES = ["sync", "async"]


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    ensure_tracked()
    sink.use(hooks.OutboxSink(outbox))
    engine = create_schema(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def seed(url: str, *bodies: str, done: bool = False) -> list[int]:
    """Notes written through the hooks (their events are in the outbox, then cleared)."""
    engine = sa.create_engine(url)
    with Session(engine) as session:
        notes = [Note(owner="ann", body=body, done=done) for body in bodies]
        session.add_all(notes)
        session.commit()
        ids = [note.id for note in notes]
    with engine.begin() as conn:
        conn.execute(outbox.delete())
    engine.dispose()
    return ids


# -- unit of work ------------------------------------------------------------------------------


def test_add_change_delete(engine: sa.Engine, db_url: str, mode: str) -> None:
    with open_ops(db_url, mode, expire_on_commit=False) as ops:
        first, second = Note(owner="ann", body="a"), Note(owner="bob", body="b")
        ops.add(first, second)
        ops.commit()
        first.body = "a2"
        second.body = "b"  # same value: no event
        ops.commit()
        first.done = True
        first.body = "a3"
        ops.commit()
        ops.delete(second)
        ops.commit()
    assert read_outbox(engine) == [
        ("insert", first.id, ()),
        ("insert", second.id, ()),
        ("update", first.id, ("body",)),
        ("update", first.id, ("body", "done")),
        ("delete", second.id, ()),
    ]
    bodies = outbox_bodies(engine)
    assert bodies[0]["new"]["body"] == "a" and bodies[0]["old"] == {}
    assert bodies[0]["new"]["done"] is False  # Python-side defaults are in the snapshot
    assert (bodies[2]["old"]["body"], bodies[2]["new"]["body"]) == ("a", "a2")
    assert (bodies[3]["old"]["done"], bodies[3]["new"]["done"]) == (False, True)
    assert bodies[4]["old"]["body"] == "b" and bodies[4]["new"] == {}


def test_assignment_after_expiring_commit_sees_the_old_value(
    engine: sa.Engine, db_url: str
) -> None:
    with open_ops(db_url, "sync") as ops:
        note = Note(owner="ann", body="before")
        ops.add(note)
        ops.commit()  # expires `note`
        note.body = "after"
        ops.commit()
        note.body = "after"  # expired again; same value: no UPDATE, no event
        ops.commit()
        note_id = note.id
    assert read_outbox(engine)[1:] == [("update", note_id, ("body",))]
    update_body = outbox_bodies(engine)[1]
    assert (update_body["old"]["body"], update_body["new"]["body"]) == ("before", "after")


def test_async_assignment_after_refresh(engine: sa.Engine, db_url: str) -> None:
    """asyncio cannot load lazily: an expired object is refreshed first, as for any read."""
    with open_ops(db_url, "async") as ops:
        note = Note(owner="ann", body="before")
        ops.add(note)
        ops.commit()
        ops.refresh(note)
        note.body = "after"
        ops.commit()
    update_body = outbox_bodies(engine)[1]
    assert (update_body["old"]["body"], update_body["new"]["body"]) == ("before", "after")


def test_only_ignored_column_changed_is_no_event(engine: sa.Engine, db_url: str, mode: str) -> None:
    with open_ops(db_url, mode, expire_on_commit=False) as ops:
        note = Note(owner="ann", body="a")
        ops.add(note)
        ops.commit()
        note.touched_at = datetime.now(UTC) + timedelta(days=1)
        ops.commit()
        note.body = "b"
        ops.commit()
    assert read_outbox(engine) == [("insert", note.id, ()), ("update", note.id, ("body",))]
    last = outbox_bodies(engine)[-1]
    # touched_at is bumped by the UPDATE (onupdate): old and new both right, never "changed".
    assert last["old"]["touched_at"] != last["new"]["touched_at"]


def test_delete_of_an_expired_object_reports_its_last_row(
    engine: sa.Engine, db_url: str, mode: str
) -> None:
    (note_id,) = seed(db_url, "stored")
    with open_ops(db_url, mode) as ops:
        note = ops.get(Note, note_id)
        ops.session.expire(note)
        ops.delete(note)
        ops.commit()
    (body,) = outbox_bodies(engine)
    assert body["kind"] == "delete"
    assert body["old"]["body"] == "stored" and body["old"]["owner"] == "ann"


def test_delete_after_unflushed_change_reports_the_stored_values(
    engine: sa.Engine, db_url: str, mode: str
) -> None:
    (note_id,) = seed(db_url, "stored")
    with open_ops(db_url, mode) as ops:
        note = ops.get(Note, note_id)
        note.body = "never written"
        ops.delete(note)
        ops.commit()
    (body,) = outbox_bodies(engine)
    assert (body["kind"], body["old"]["body"]) == ("delete", "stored")


def test_merge_of_a_detached_object(engine: sa.Engine, db_url: str, mode: str) -> None:
    (note_id,) = seed(db_url, "stored")
    with open_ops(db_url, mode) as ops:
        ops.merge(Note(id=note_id, owner="ann", body="merged", done=False))
        ops.commit()
    assert read_outbox(engine) == [("update", note_id, ("body",))]


def test_no_sql_after_commit_reads_expired_state(engine: sa.Engine, db_url: str) -> None:
    """The hooks read history during the flush; commit() itself issues no extra SELECT."""
    statements: list[str] = []
    with open_ops(db_url, "sync") as ops:
        note = Note(owner="ann", body="a")
        ops.add(note)
        ops.flush()
        bind = ops.session.connection()
        sa.event.listen(bind, "before_cursor_execute", lambda *a: statements.append(a[2]))
        note.body = "b"
        ops.commit()
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT")]


# -- ORM statements ----------------------------------------------------------------------------


def test_insert_statements(engine: sa.Engine, db_url: str, mode: str) -> None:
    with open_ops(db_url, mode) as ops:
        single = ops.execute(insert(Note).values(owner="ann", body="one"))
        (first_id,) = single.inserted_primary_key  # the caller's result still works
        assert single.rowcount in (1, -1)
        ops.execute(
            insert(Note), [{"owner": "ann", "body": "two"}, {"owner": "bob", "body": "three"}]
        )
        multi = ops.execute(
            insert(Note).values([{"owner": "c", "body": "4"}, {"owner": "d", "body": "5"}])
        )
        assert multi.rowcount in (2, -1)
        returned = ops.execute(
            insert(Note).returning(Note.id, Note.body),
            [{"owner": "e", "body": "6"}, {"owner": "f", "body": "7"}],
        )
        returned_rows = [tuple(row) for row in returned]
        assert [row[1] for row in returned_rows] == ["6", "7"]  # the caller's columns only
        entities = (
            ops.execute(insert(Note).values(owner="g", body="8").returning(Note)).scalars().all()
        )
        assert [note.body for note in entities] == ["8"]
        ops.execute(Note.__table__.insert().values(owner="h", body="9"))
        ops.execute(
            Note.__table__.insert(), [{"owner": "i", "body": "10"}, {"owner": "j", "body": "11"}]
        )
        ops.commit()
    rows = read_outbox(engine)
    assert [kind for kind, _, _ in rows] == ["insert"] * 11
    bodies = [body["new"]["body"] for body in outbox_bodies(engine)]
    assert bodies == ["one", "two", "three", "4", "5", "6", "7", "8", "9", "10", "11"]
    assert rows[0][1] == first_id
    assert [row[1] for row in rows[5:7]] == [row[0] for row in returned_rows]
    ids = [row[1] for row in rows]
    assert ids == sorted(ids) and len(set(ids)) == 11


def test_update_statements(engine: sa.Engine, db_url: str, mode: str) -> None:
    a, b, c = seed(db_url, "a", "b", "c")
    with open_ops(db_url, mode) as ops:
        # Three rows match, one already has the value: two events.
        ops.execute(update(Note).where(Note.id.in_([a, b, c])).values(body="b"))
        ops.execute(update(Note), [{"id": a, "done": True}, {"id": c, "done": False}])  # bulk by pk
        ops.execute(Note.__table__.update().where(Note.__table__.c.id == c).values(body="cc"))
        ops.execute(
            update(Note)
            .where(Note.id == b)
            .values(done=True)
            .execution_options(synchronize_session="fetch")
        )
        ops.execute(update(Note).where(Note.owner == "nobody").values(body="x"))
        ops.commit()
    assert read_outbox(engine) == [
        ("update", a, ("body",)),
        ("update", c, ("body",)),
        ("update", a, ("done",)),
        ("update", c, ("body",)),
        ("update", b, ("done",)),
    ]
    first = outbox_bodies(engine)[0]
    assert (first["old"]["body"], first["new"]["body"]) == ("a", "b")
    assert first["new"]["touched_at"] > first["old"]["touched_at"]


def test_update_with_sql_expression_and_returning(
    engine: sa.Engine, db_url: str, mode: str
) -> None:
    a, b = seed(db_url, "a", "b")
    with open_ops(db_url, mode) as ops:
        result = ops.execute(update(Note).values(body=Note.body + "!").returning(Note.id))
        assert sorted(result.scalars().all()) == [a, b]
        ops.commit()
    bodies = outbox_bodies(engine)
    assert [(x["identity"][0], x["new"]["body"]) for x in bodies] == [(a, "a!"), (b, "b!")]


def test_delete_statements(engine: sa.Engine, db_url: str, mode: str) -> None:
    a, b, c, d = seed(db_url, "a", "b", "c", "d")
    with open_ops(db_url, mode) as ops:
        result = ops.execute(delete(Note).where(Note.id.in_([b, a])))
        assert result.rowcount == 2
        returned = ops.execute(delete(Note).where(Note.id == c).returning(Note.id)).scalars().all()
        assert returned == [c]
        ops.execute(Note.__table__.delete().where(Note.__table__.c.id == d))
        ops.execute(delete(Note).where(Note.id == 999))
        ops.commit()
    assert read_outbox(engine) == [
        ("delete", a, ()),
        ("delete", b, ()),
        ("delete", c, ()),
        ("delete", d, ()),
    ]
    assert outbox_bodies(engine)[0]["old"]["body"] == "a"


def test_query_update_and_delete(engine: sa.Engine, db_url: str) -> None:
    a, b = seed(db_url, "a", "b")
    with open_ops(db_url, "sync") as ops:
        session = ops.sync_session
        assert session.query(Note).filter(Note.id == a).update({"body": "A"}) == 1
        assert session.query(Note).filter(Note.id == b).delete() == 1
        ops.commit()
    assert read_outbox(engine) == [("update", a, ("body",)), ("delete", b, ())]


def test_sqlmodel_session_exec(engine: sa.Engine, db_url: str) -> None:
    a, b = seed(db_url, "a", "b")
    with open_ops(db_url, "sync", session_cls=sqlmodel.Session) as ops:
        session = ops.session
        assert isinstance(session, sqlmodel.Session)
        session.exec(update(Note).where(Note.id == a).values(done=True))
        session.exec(delete(Note).where(Note.id == b))
        session.exec(insert(Note).values(owner="c", body="c"))
        ops.commit()
    rows = read_outbox(engine)
    assert rows[:2] == [("update", a, ("done",)), ("delete", b, ())]
    assert rows[2][0] == "insert"


def test_statement_after_pending_changes_comes_after_their_flush(
    engine: sa.Engine, db_url: str, mode: str
) -> None:
    with open_ops(db_url, mode, expire_on_commit=False) as ops:
        note = Note(owner="ann", body="a")
        ops.add(note)  # pending: flushed by the statement's autoflush
        ops.execute(update(Note).values(done=True))
        ops.commit()
    assert read_outbox(engine) == [("insert", note.id, ()), ("update", note.id, ("done",))]


def test_upsert_is_refused_but_do_nothing_works(engine: sa.Engine, db_url: str) -> None:
    (a,) = seed(db_url, "a")
    dialect = sa.make_url(db_url).get_backend_name()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    with open_ops(db_url, "sync") as ops:
        upsert = dialect_insert(Note).values(id=a, owner="x", body="x")
        with pytest.raises(hooks.UnsupportedWritePath, match="upsert"):
            ops.execute(upsert.on_conflict_do_update(index_elements=["id"], set_={"body": "x"}))
        ops.rollback()
        ops.execute(
            dialect_insert(Note)
            .values(
                [
                    {"id": a, "owner": "x", "body": "dup"},
                    {"id": a + 10, "owner": "x", "body": "new"},
                ]
            )
            .on_conflict_do_nothing()
        )
        ops.commit()
    assert read_outbox(engine) == [("insert", a + 10, ())]


# -- paths that cannot emit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.bulk_save_objects([Note(owner="a", body="b")]),
        lambda s: s.bulk_insert_mappings(Note, [{"owner": "a", "body": "b"}]),
        lambda s: s.bulk_update_mappings(Note, [{"id": 1, "body": "b"}]),
        lambda s: s.bulk_insert_mappings(sa.inspect(Note), [{"owner": "a", "body": "b"}]),
    ],
    ids=["bulk_save_objects", "bulk_insert_mappings", "bulk_update_mappings", "mapper-arg"],
)
def test_legacy_bulk_methods_refuse_tracked_models(engine: sa.Engine, call: Any) -> None:
    with Session(engine) as session:
        with pytest.raises(hooks.UnsupportedWritePath, match=r"Session\.bulk_\w+\(\).*Note"):
            call(session)
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(select(sa.func.count()).select_from(Note)).scalar_one() == 0
    assert read_outbox(engine) == []


def test_legacy_bulk_methods_still_work_for_untracked_models(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.bulk_save_objects([Plain(owner="a", body="b")])
        session.bulk_insert_mappings(Plain, [{"owner": "c", "body": "d"}])
        session.add(Plain(owner="e", body="f"))
        session.commit()
    with engine.connect() as conn:
        assert conn.execute(select(sa.func.count()).select_from(Plain)).scalar_one() == 3
    assert read_outbox(engine) == []


def test_core_connection_writes_are_invisible_as_documented(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(Note.__table__.insert().values(owner="core", body="core"))
        conn.execute(sa.text("UPDATE hook_note SET body = 'raw'"))
    assert read_outbox(engine) == []


# -- the outbox writer ---------------------------------------------------------------------------


def test_one_outbox_insert_per_flush(engine: sa.Engine) -> None:
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with Session(engine) as session:
        session.add_all([Note(owner="a", body=str(n)) for n in range(5)])
        session.flush()
        for note in session.scalars(select(Note)):
            note.done = True
        session.commit()
    outbox_writes = [s for s in statements if "hook_outbox" in s]
    assert len(outbox_writes) == 2  # two flushes, ten rows
    assert len(read_outbox(engine)) == 10


def test_outbox_rows_carry_what_the_relay_needs(engine: sa.Engine) -> None:
    before = datetime.now(UTC)
    with Session(engine) as session:
        session.add(Note(owner="a", body="b"))
        session.commit()
    with engine.connect() as conn:
        (row,) = conn.execute(select(outbox)).mappings().all()
    assert row["topic"] == "note.insert" and row["partition_key"] == "1"
    assert row["attempts"] == 0 and row["last_error"] is None
    assert before - timedelta(seconds=1) <= row["created_at"] <= datetime.now(UTC)
    assert row["next_attempt_at"] == row["created_at"]
    assert len(row["event_id"]) == 36


def test_untracked_model_leaves_the_outbox_alone(engine: sa.Engine, db_url: str, mode: str) -> None:
    with open_ops(db_url, mode, expire_on_commit=False) as ops:
        plain = Plain(owner="a", body="b")
        ops.add(plain)
        ops.commit()
        plain.body = "c"
        ops.execute(update(Plain).values(done=True))
        ops.execute(delete(Plain))
        ops.commit()
    assert read_outbox(engine) == []


def test_track_validates_its_arguments() -> None:
    with pytest.raises(hooks.HooksError, match="not a mapped class"):
        hooks.track(int, lambda change: [], sink_factory=sink)
    with pytest.raises(hooks.HooksError, match="nope not a column attribute of Note"):
        hooks.track(Note, lambda change: [], sink_factory=sink, ignore=("nope",))
    ensure_tracked()  # the failed call left the tracker as it was
    with pytest.raises(hooks.HooksError, match="not an outbox table"):
        hooks.OutboxSink(Note.__table__)
