"""The write-path matrix: every form of ORM DML SQLAlchemy 2.0/2.1 documents, and what the
hooks do with it (T-014, T-017).

Each `WritePath` is one row: a scenario run on a seeded database (notes `a`, `b`, `c`, and
`d` inside folder `f`), and either the changes it must leave in the outbox, in order, or
`REFUSED` (`hooks.UnsupportedWritePath` before any DML reaches the table). The test
(`test_write_paths.py`) runs every row on sync and async sessions, SQLite and PostgreSQL,
and checks the events against the table's actual before/after difference too, so nothing
writes silently and nothing emits for a non-change.

docs/hooks.md's write-path table is `render_markdown()` of this matrix (a test compares them);
regenerate it with `python -m tests.hooks.write_paths`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_dirty, flag_modified

from tests.support.tracked import Folder, Note, Ops

__all__ = ["MATRIX", "REFUSED", "Ctx", "WritePath", "render_markdown"]

# (kind, seeded note name or "new", changed fields)
Expected = tuple[str, str, tuple[str, ...]]
REFUSED = None


@dataclass
class Ctx:
    ops: Ops
    ids: dict[str, int]
    dialect: str

    def note(self, name: str) -> Note:
        note: Note = self.ops.get(Note, self.ids[name])
        return note

    def upsert_insert(self) -> Any:
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        return dialect_insert(Note)


@dataclass(frozen=True)
class WritePath:
    id: str
    group: str
    form: str  # as shown in docs/hooks.md (Markdown)
    run: Callable[[Ctx], Any]
    expect: tuple[Expected, ...] | None
    # Old values the events must carry: {note name: {field: value}}.
    old: dict[str, dict[str, Any]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("sync", "async")
    note: str = ""

    @property
    def outcome(self) -> str:
        if self.expect is None:
            return "**refused** (`UnsupportedWritePath`, nothing written)"
        if not self.expect:
            return "no event (no change)"
        kinds = sorted(
            {kind for kind, _, _ in self.expect}, key=["insert", "update", "delete"].index
        )
        return ", ".join(f"one `{kind}` per row" for kind in kinds)


def _sync(fn: Callable[[Session], Any]) -> Callable[[Ctx], Any]:
    return lambda ctx: ctx.ops.run_sync(fn)


def _ids(ctx: Ctx, *names: str) -> list[int]:
    return [ctx.ids[name] for name in names]


# -- unit of work ------------------------------------------------------------------------------


def _add(ctx: Ctx) -> None:
    ctx.ops.add(Note(owner="x", body="new1"), Note(owner="y", body="new2"))


def _assign(ctx: Ctx) -> None:
    ctx.note("a").body = "a2"


def _assign_same(ctx: Ctx) -> None:
    ctx.note("a").body = "a"


def _assign_and_back(ctx: Ctx) -> None:
    note = ctx.note("a")
    note.body = "zzz"
    note.body = "a"


def _flag_modified_only(ctx: Ctx) -> None:
    flag_modified(ctx.note("a"), "body")


def _flag_modified_after_change(ctx: Ctx) -> None:
    note = ctx.note("a")
    note.body = "a2"
    flag_modified(note, "body")


def _flag_dirty(ctx: Ctx) -> None:
    flag_dirty(ctx.note("a"))


def _delete(ctx: Ctx) -> None:
    ctx.ops.delete(ctx.note("a"))


def _merge_changed(ctx: Ctx) -> None:
    ctx.ops.merge(Note(id=ctx.ids["a"], owner="ann", body="merged", done=False))


def _merge_unchanged(ctx: Ctx) -> None:
    ctx.ops.merge(Note(id=ctx.ids["a"], owner="ann", body="a", done=False))


def _merge_new(ctx: Ctx) -> None:
    ctx.ops.merge(Note(owner="x", body="merged-new"))


def _cascade_add(ctx: Ctx) -> None:
    ctx.ops.add(Folder(name="g", notes=[Note(owner="x", body="in-g")]))


def _cascade_delete(ctx: Ctx) -> None:
    ctx.ops.delete(ctx.ops.get(Folder, ctx.ids["f"]))


def _delete_orphan(ctx: Ctx) -> None:
    folder = ctx.ops.get(Folder, ctx.ids["f"])
    folder.notes.remove(folder.notes[0])


# -- ORM INSERT --------------------------------------------------------------------------------

_ROWS = [{"owner": "x", "body": "new1"}, {"owner": "y", "body": "new2"}]


def _insert_values(ctx: Ctx) -> None:
    result = ctx.ops.execute(insert(Note).values(owner="x", body="new1"))
    assert result.inserted_primary_key[0] > max(ctx.ids.values())


def _insert_many(ctx: Ctx) -> None:
    ctx.ops.execute(insert(Note), _ROWS)


def _insert_multi_values(ctx: Ctx) -> None:
    ctx.ops.execute(insert(Note).values(_ROWS))


def _insert_many_returning(ctx: Ctx) -> None:
    rows = ctx.ops.execute(insert(Note).returning(Note.body), _ROWS).all()
    assert [tuple(row) for row in rows] == [("new1",), ("new2",)]


def _insert_returning_entity(ctx: Ctx) -> None:
    notes = ctx.ops.execute(insert(Note).values(owner="x", body="new1").returning(Note)).scalars()
    assert [note.body for note in notes] == ["new1"]


def _copy_of_notes() -> sa.Select[Any]:
    return select(Note.owner, Note.body + "-copy").where(Note.folder_id.is_(None))


def _insert_from_select(ctx: Ctx) -> None:
    result = ctx.ops.execute(insert(Note).from_select(["owner", "body"], _copy_of_notes()))
    assert result.rowcount in (3, 0, -1)  # 0 / -1: SQLite / older drivers with RETURNING


def _insert_from_select_returning(ctx: Ctx) -> None:
    statement = insert(Note).from_select(["owner", "body"], _copy_of_notes())
    bodies = ctx.ops.execute(statement.returning(Note.body)).scalars().all()
    assert sorted(bodies) == ["a-copy", "b-copy", "c-copy"]


def _table_insert(ctx: Ctx) -> None:
    ctx.ops.execute(Note.__table__.insert().values(owner="x", body="new1"))  # type: ignore[attr-defined]


def _table_insert_many(ctx: Ctx) -> None:
    ctx.ops.execute(Note.__table__.insert(), _ROWS)  # type: ignore[attr-defined]


def _upsert_nothing(ctx: Ctx) -> None:
    rows = [
        {"id": ctx.ids["a"], "owner": "x", "body": "dup"},
        {"id": 999, "owner": "x", "body": "n"},
    ]
    ctx.ops.execute(ctx.upsert_insert().values(rows).on_conflict_do_nothing())


def _upsert_nothing_many(ctx: Ctx) -> None:
    rows = [
        {"id": ctx.ids["a"], "owner": "x", "body": "dup"},
        {"id": 999, "owner": "x", "body": "n"},
    ]
    ctx.ops.execute(ctx.upsert_insert().on_conflict_do_nothing(), rows)


def _upsert_update(ctx: Ctx) -> None:
    statement = ctx.upsert_insert().values(id=ctx.ids["a"], owner="x", body="x")
    ctx.ops.execute(statement.on_conflict_do_update(index_elements=["id"], set_={"body": "x"}))


def _sqlmodel_exec_insert(ctx: Ctx) -> None:
    import sqlmodel

    with sqlmodel.Session(ctx.ops.sync_session.bind) as session:
        session.exec(insert(Note).values(owner="x", body="new1"))  # type: ignore[call-overload]
        session.commit()


# -- ORM UPDATE --------------------------------------------------------------------------------


def _bulk_update_by_pk(ctx: Ctx) -> None:
    a, b = _ids(ctx, "a", "b")
    ctx.ops.execute(update(Note), [{"id": a, "body": "a2"}, {"id": b, "done": True}])


def _update_where(strategy: Any) -> Callable[[Ctx], None]:
    def run(ctx: Ctx) -> None:
        statement = update(Note).where(Note.id.in_(_ids(ctx, "a", "b"))).values(body="b")
        ctx.ops.execute(statement.execution_options(synchronize_session=strategy))

    return run


def _update_expression(ctx: Ctx) -> None:
    ctx.ops.execute(update(Note).where(Note.folder_id.is_(None)).values(body=Note.body + "!"))


def _update_returning(ctx: Ctx) -> None:
    rows = ctx.ops.execute(
        update(Note).where(Note.id == ctx.ids["a"]).values(done=True).returning(Note.id)
    )
    assert rows.scalars().all() == [ctx.ids["a"]]


def _update_no_match(ctx: Ctx) -> None:
    ctx.ops.execute(update(Note).where(Note.owner == "nobody").values(body="x"))


def _update_pk(ctx: Ctx) -> None:
    ctx.ops.execute(update(Note).where(Note.id == ctx.ids["a"]).values(id=777))


def _table_update(ctx: Ctx) -> None:
    table: sa.Table = Note.__table__  # type: ignore[assignment]
    ctx.ops.execute(table.update().where(table.c.id == ctx.ids["a"]).values(body="a2"))


def _query_update(ctx: Ctx) -> None:
    a = ctx.ids["a"]
    _sync(lambda s: s.query(Note).filter(Note.id == a).update({"body": "a2"}))(ctx)


# -- ORM DELETE --------------------------------------------------------------------------------


def _delete_where(strategy: Any) -> Callable[[Ctx], None]:
    def run(ctx: Ctx) -> None:
        statement = delete(Note).where(Note.id.in_(_ids(ctx, "a", "b")))
        ctx.ops.execute(statement.execution_options(synchronize_session=strategy))

    return run


def _delete_returning(ctx: Ctx) -> None:
    rows = ctx.ops.execute(delete(Note).where(Note.id == ctx.ids["a"]).returning(Note.body))
    assert rows.scalars().all() == ["a"]


def _delete_no_match(ctx: Ctx) -> None:
    ctx.ops.execute(delete(Note).where(Note.owner == "nobody"))


def _table_delete(ctx: Ctx) -> None:
    table: sa.Table = Note.__table__  # type: ignore[assignment]
    ctx.ops.execute(table.delete().where(table.c.id == ctx.ids["a"]))


def _query_delete(ctx: Ctx) -> None:
    a = ctx.ids["a"]
    _sync(lambda s: s.query(Note).filter(Note.id == a).delete())(ctx)


# -- legacy bulk methods -----------------------------------------------------------------------


def _bulk_save_objects(ctx: Ctx) -> None:
    _sync(lambda s: s.bulk_save_objects([Note(owner="x", body="new1")]))(ctx)


def _bulk_insert_mappings(ctx: Ctx) -> None:
    _sync(lambda s: s.bulk_insert_mappings(Note, _ROWS))(ctx)  # type: ignore[arg-type]


def _bulk_update_mappings(ctx: Ctx) -> None:
    a = ctx.ids["a"]
    _sync(lambda s: s.bulk_update_mappings(Note, [{"id": a, "body": "a2"}]))(ctx)  # type: ignore[arg-type]


U = "unit of work"
I = "ORM INSERT"  # noqa: E741
P = "upsert"
UP = "ORM UPDATE"
D = "ORM DELETE"
L = "legacy bulk"
NEW = ("insert", "new", ())


def _sync_strategies(group: str, make: Callable[[Any], Callable[[Ctx], None]]) -> list[WritePath]:
    word = "update" if group == UP else "delete"
    expect: tuple[Expected, ...] = (
        (("update", "a", ("body",)),)
        if word == "update"
        else (("delete", "a", ()), ("delete", "b", ()))
    )
    return [
        WritePath(
            f"{word}-where-sync-{strategy}",
            group,
            f"`session.execute({word}(Note).where(...)…)`, `synchronize_session={strategy!r}`",
            make(strategy),
            expect,
        )
        for strategy in (False, "evaluate", "fetch", "auto")
    ]


MATRIX: tuple[WritePath, ...] = (
    WritePath("add", U, "`session.add()` / `add_all()`", _add, (NEW, NEW)),
    WritePath(
        "assign",
        U,
        "attribute change",
        _assign,
        (("update", "a", ("body",)),),
        old={"a": {"body": "a"}},
    ),
    WritePath("assign-same", U, "same-value assignment", _assign_same, ()),
    WritePath(
        "assign-and-back",
        U,
        "value changed and changed back before the flush",
        _assign_and_back,
        (),
    ),
    WritePath(
        "flag-modified",
        U,
        "`flag_modified(obj, key)` without a value change",
        _flag_modified_only,
        (),
    ),
    WritePath(
        "flag-modified-changed",
        U,
        "`flag_modified(obj, key)` after a real change",
        _flag_modified_after_change,
        (("update", "a", ("body",)),),
        old={"a": {"body": "a"}},
    ),
    WritePath("flag-dirty", U, "`flag_dirty(obj)`", _flag_dirty, ()),
    WritePath("delete", U, "`session.delete()`", _delete, (("delete", "a", ()),)),
    WritePath(
        "merge",
        U,
        "`session.merge()` of a changed detached object",
        _merge_changed,
        (("update", "a", ("body",)),),
    ),
    WritePath("merge-same", U, "`session.merge()` without a change", _merge_unchanged, ()),
    WritePath("merge-new", U, "`session.merge()` of a new object", _merge_new, (NEW,)),
    WritePath(
        "cascade-add", U, "save-update cascade (parent added with children)", _cascade_add, (NEW,)
    ),
    WritePath(
        "cascade-delete",
        U,
        "delete cascade (parent deleted)",
        _cascade_delete,
        (("delete", "d", ()),),
    ),
    WritePath(
        "delete-orphan",
        U,
        "delete-orphan cascade (child removed from the collection)",
        _delete_orphan,
        (("delete", "d", ()),),
    ),
    WritePath(
        "insert-values", I, "`session.execute(insert(Note).values(...))`", _insert_values, (NEW,)
    ),
    WritePath(
        "insert-many",
        I,
        "ORM bulk INSERT `session.execute(insert(Note), [rows])`",
        _insert_many,
        (NEW, NEW),
    ),
    WritePath(
        "insert-multi-values",
        I,
        "multi-row `insert(Note).values([rows])`",
        _insert_multi_values,
        (NEW, NEW),
    ),
    WritePath(
        "insert-many-returning",
        I,
        "ORM bulk INSERT with `.returning(...)`",
        _insert_many_returning,
        (NEW, NEW),
    ),
    WritePath(
        "insert-returning-entity",
        I,
        "`insert(Note).values(...).returning(Note)`",
        _insert_returning_entity,
        (NEW,),
    ),
    WritePath(
        "insert-from-select",
        I,
        "`insert(Note).from_select([...], select(...))`",
        _insert_from_select,
        (NEW, NEW, NEW),
    ),
    WritePath(
        "insert-from-select-returning",
        I,
        "`insert(Note).from_select(...).returning(...)`",
        _insert_from_select_returning,
        (NEW, NEW, NEW),
    ),
    WritePath(
        "table-insert", I, "`Note.__table__.insert()` through the session", _table_insert, (NEW,)
    ),
    WritePath(
        "table-insert-many",
        I,
        "`Note.__table__.insert()`, executemany, through the session",
        _table_insert_many,
        (NEW, NEW),
    ),
    WritePath(
        "sqlmodel-exec",
        I,
        "sqlmodel `session.exec(insert(Note)…)`",
        _sqlmodel_exec_insert,
        (NEW,),
        modes=("sync",),
    ),
    WritePath(
        "upsert-do-nothing",
        P,
        "`on_conflict_do_nothing()` (PostgreSQL, SQLite), multi-row VALUES",
        _upsert_nothing,
        (NEW,),
    ),
    WritePath(
        "upsert-do-nothing-many",
        P,
        "`on_conflict_do_nothing()`, ORM bulk executemany",
        _upsert_nothing_many,
        (NEW,),
    ),
    WritePath(
        "upsert-do-update",
        P,
        "`on_conflict_do_update()` (PostgreSQL, SQLite)",
        _upsert_update,
        REFUSED,
    ),
    WritePath(
        "bulk-update-by-pk",
        UP,
        "ORM bulk UPDATE by primary key `session.execute(update(Note), [rows])`",
        _bulk_update_by_pk,
        (("update", "a", ("body",)), ("update", "b", ("done",))),
    ),
    *_sync_strategies(UP, _update_where),
    WritePath(
        "update-expression",
        UP,
        '`update(Note).values(body=Note.body + "!")`',
        _update_expression,
        (("update", "a", ("body",)), ("update", "b", ("body",)), ("update", "c", ("body",))),
    ),
    WritePath(
        "update-returning",
        UP,
        "`update(Note)…returning(...)`",
        _update_returning,
        (("update", "a", ("done",)),),
    ),
    WritePath("update-no-match", UP, "UPDATE whose WHERE matches nothing", _update_no_match, ()),
    WritePath("update-pk", UP, "UPDATE that sets the primary key", _update_pk, REFUSED),
    WritePath(
        "table-update",
        UP,
        "`Note.__table__.update()` through the session",
        _table_update,
        (("update", "a", ("body",)),),
    ),
    WritePath(
        "query-update",
        UP,
        "`session.query(Note).filter(...).update(...)`",
        _query_update,
        (("update", "a", ("body",)),),
    ),
    *_sync_strategies(D, _delete_where),
    WritePath(
        "delete-returning",
        D,
        "`delete(Note)…returning(...)`",
        _delete_returning,
        (("delete", "a", ()),),
    ),
    WritePath("delete-no-match", D, "DELETE whose WHERE matches nothing", _delete_no_match, ()),
    WritePath(
        "table-delete",
        D,
        "`Note.__table__.delete()` through the session",
        _table_delete,
        (("delete", "a", ()),),
    ),
    WritePath(
        "query-delete",
        D,
        "`session.query(Note).filter(...).delete()`",
        _query_delete,
        (("delete", "a", ()),),
    ),
    WritePath("bulk-save-objects", L, "`session.bulk_save_objects()`", _bulk_save_objects, REFUSED),
    WritePath(
        "bulk-insert-mappings",
        L,
        "`session.bulk_insert_mappings()`",
        _bulk_insert_mappings,
        REFUSED,
    ),
    WritePath(
        "bulk-update-mappings",
        L,
        "`session.bulk_update_mappings()`",
        _bulk_update_mappings,
        REFUSED,
    ),
)


def render_markdown() -> str:
    """The table docs/hooks.md shows (between its `write-path-matrix` markers)."""
    lines = [
        "| group | write path | outcome |",
        "|---|---|---|",
    ]
    for path in MATRIX:
        lines.append(f"| {path.group} | {path.form} | {path.outcome} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - regenerates the docs table
    import sys

    sys.stdout.write(render_markdown())
