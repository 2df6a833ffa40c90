"""Change capture for ORM statements: `do_orm_execute` on every session.

T-019: `clear_completed` is one ORM bulk DELETE; it yields one change per removed row here.

`session.execute(insert/update/delete(Model)...)`, sqlmodel's `session.exec`, `Query.update`
/ `Query.delete` and DML on `Model.__table__` executed through a session fire no mapper
events, only `do_orm_execute`. Here such statements against a tracked table yield one
`RowChange` per affected row, written in the statement's transaction with one sink call:

- INSERT: RETURNING is added (as `return_defaults(supplemental_cols=...)` when the caller
  asked for no rows, so `inserted_primary_key` and `rowcount` keep working), so ids and
  defaults are known.
- UPDATE / DELETE: the rows the WHERE clause selects are read first (`FOR UPDATE` where the
  dialect has it), the statement runs restricted to exactly those rows, then the rows are read
  again by primary key: an update yields a change for each row whose tracked columns really
  changed; a delete one for each row that is gone.

Not visible here (documented in docs/hooks.md): Core `Connection.execute` and `text()` SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Result
from sqlalchemy.orm import ORMExecuteState, Session

from hooks._capture import Tracker, trackers_by_table, write_messages
from hooks._types import Message, RowChange, UnsupportedWritePath

__all__ = ["install_statement_listener"]

_LABEL = "hooks_c{}"


def _on_orm_execute(state: ORMExecuteState) -> Result[Any] | None:
    statement = state.statement
    if not statement.is_dml:
        return None
    trackers = trackers_by_table()
    if not trackers:
        return None
    tracker = trackers.get(getattr(statement, "table", None))  # type: ignore[arg-type]
    if tracker is None:
        return None
    if state.is_insert:
        return _capture_insert(state, tracker)
    if state.is_update or state.is_delete:
        return _capture_update_delete(state, tracker)
    return None


# -- INSERT -----------------------------------------------------------------------------------


def _labels(tracker: Tracker) -> list[sa.Label[Any]]:
    return [column.label(_LABEL.format(i)) for i, column in enumerate(tracker.columns)]


def _capture_insert(state: ORMExecuteState, tracker: Tracker) -> Result[Any]:
    statement: Any = state.statement
    session = state.session
    connection = session.connection(bind_arguments=state.bind_arguments)
    dialect = connection.dialect
    many = state.is_executemany
    what = f"INSERT into {tracker.name!r} through the session"

    post_values = getattr(statement, "_post_values_clause", None)
    if post_values is not None and type(post_values).__name__ != "OnConflictDoNothing":
        # An upsert may update rows instead: RETURNING cannot tell which.
        raise UnsupportedWritePath(
            f"{what} with {type(post_values).__name__}: an upsert may update existing rows and "
            "the hooks cannot tell inserted from updated rows; select the row and change it "
            "through the ORM (or use on_conflict_do_nothing())"
        )
    if not dialect.insert_returning or (many and not dialect.insert_executemany_returning):
        raise UnsupportedWritePath(
            f"{what}: the {dialect.name} dialect has no INSERT ... RETURNING here, so the new "
            "rows cannot be identified; use session.add()/add_all() instead"
        )
    if getattr(statement, "_return_defaults", False):
        raise UnsupportedWritePath(
            f"{what} with return_defaults(): use .returning(...) instead (the hooks add their "
            "own RETURNING columns)"
        )

    labels = _labels(tracker)
    # `returning_column_descriptions` breaks for `returning(Model)` in some versions.
    user_columns = len(getattr(statement, "_returning", ()))
    from_select = getattr(statement, "select", None) is not None
    result: Any
    outcome: Result[Any]
    if user_columns == 0 and from_select:
        # INSERT ... FROM SELECT: return_defaults() fetches nothing for it (the rows would be
        # written without events); RETURNING names every new row. The caller gets the
        # statement's own result, its rows consumed (`rowcount` kept: the ORM would wrap a
        # RETURNING result into one without it, so it runs on the session's connection, as
        # the ORM itself runs an INSERT ... FROM SELECT: no objects to synchronise).
        parameters: Any = state.parameters or {}
        result = connection.execute(
            statement.returning(*labels),
            dict(parameters),
            execution_options={**state.execution_options, "preserve_rowcount": True},
        )
        rows = [list(row) for row in result]
        outcome = result
    elif user_columns == 0 and not (many and state.is_orm_statement):
        # The caller asked for no rows: keep the result they would have had
        # (inserted_primary_key, rowcount) and read ours from returned_defaults_rows.
        result = state.invoke_statement(
            statement=statement.return_defaults(supplemental_cols=labels)
        )
        rows = [
            [row._mapping[label.name] for label in labels]
            for row in result.returned_defaults_rows or ()
        ]
        outcome = result
    elif user_columns == 0:
        # ORM bulk INSERT (executemany): its result has no rows for the caller anyway.
        result = state.invoke_statement(
            statement=statement.returning(*labels, sort_by_parameter_order=True)
        )
        rows = [list(row) for row in result]
        outcome = result
    else:
        # The caller wants rows too: read ours from a frozen copy and give theirs back.
        extended = (
            statement.returning(*labels, sort_by_parameter_order=True)
            if many
            else statement.returning(*labels)
        )
        frozen = state.invoke_statement(statement=extended).freeze()
        replay = frozen()
        width = len(replay.keys()) - len(labels)
        rows = [list(row)[width:] for row in replay]
        outcome = frozen().columns(*range(width))

    changes = []
    for values in rows:
        new = tracker.row_from_db(values)
        changes.append(RowChange("insert", tracker.name, tracker.identity_of(new), {}, new))
    _write(session, connection, tracker, changes)
    return outcome


# -- UPDATE / DELETE --------------------------------------------------------------------------


def _capture_update_delete(state: ORMExecuteState, tracker: Tracker) -> Result[Any]:
    session = state.session
    if state.is_update:
        _refuse_primary_key_change(state, tracker)
    # The ORM would autoflush only when running the statement: do it now, so the pre-read sees
    # pending changes and their events come first.
    if session.autoflush and state.execution_options.get("autoflush", True):
        session.flush()
    connection = session.connection(bind_arguments=state.bind_arguments)
    before = _rows_before(connection, tracker, state)

    statement: Any = state.statement  # an Update or Delete here
    dialect = connection.dialect
    restrict = not state.is_executemany and dialect.name != "sqlite"
    if restrict:
        # Only the rows read (and locked) above may change: under READ COMMITTED a row another
        # transaction commits into the WHERE clause meanwhile would otherwise change without
        # an event. The statement then acts as if it had run just before that commit.
        # (SQLite: the transaction holds the database's write lock, nobody can slip in.)
        statement = statement.where(_identity_filter(tracker, list(before), dialect.name))
    labels: list[sa.Label[Any]] | None = None
    if (
        state.is_update
        and before
        and not state.is_executemany
        and dialect.update_returning
        and not getattr(statement, "_returning", ())
        and not getattr(statement, "_return_defaults", False)
    ):
        # The new rows come back with the UPDATE itself (RETURNING, as supplemental columns
        # of return_defaults(): the caller's result keeps its rowcount), instead of a second
        # SELECT (T-019 bulk updates).
        labels = _labels(tracker)
        statement = statement.return_defaults(supplemental_cols=labels)
    if restrict or labels is not None:
        result = state.invoke_statement(statement=statement)
    else:
        result = state.invoke_statement()
    if not before:
        return result

    name = tracker.name
    changes: list[RowChange] = []
    if state.is_delete:
        rowcount = getattr(result, "rowcount", None)
        if rowcount == len(before):
            # Every row read (and locked) is gone: no need to read them again (T-019 bulk
            # deletes: one SELECT, not two).
            changes = [
                RowChange("delete", name, identity, old, {}) for identity, old in before.items()
            ]
        else:
            after = tracker.load_rows(connection, list(before))
            changes = [
                RowChange("delete", name, identity, old, {})
                for identity, old in before.items()
                if identity not in after
            ]
    else:
        if labels is not None:
            after = {}
            keys = [label.name for label in labels]
            for returned in getattr(result, "returned_defaults_rows", None) or ():
                mapping = returned._mapping
                row = tracker.row_from_db([mapping[key] for key in keys])
                identity = tracker.identity_of(row)
                if identity not in before:
                    raise UnsupportedWritePath(
                        f"UPDATE of {name!r} through the session changed the primary key of "
                        f"a row (now {identity!r}); the hooks identify rows by primary key"
                    )
                after[identity] = row
            missing = [identity for identity in before if identity not in after]
            if missing:  # not updated after all (cannot happen while the rows are locked)
                for identity in missing:
                    before.pop(identity)
        else:
            after = tracker.load_rows(connection, list(before))
        differs = tracker.differs
        for identity, old in before.items():
            new = after.get(identity)
            if new is None:
                raise UnsupportedWritePath(
                    f"UPDATE of {name!r} through the session changed or removed the "
                    f"primary key of row {identity!r}; the hooks identify rows by primary key"
                )
            changed = differs(old, new)
            if changed:
                changes.append(RowChange("update", name, identity, old, new, changed))
    _write(session, connection, tracker, changes)
    return result


def _refuse_primary_key_change(state: ORMExecuteState, tracker: Tracker) -> None:
    """Rows are identified by primary key: an UPDATE that sets one is refused up front."""
    statement: Any = state.statement
    keys: list[Any] = list(getattr(statement, "_values", None) or ())
    keys += [key for key, _ in getattr(statement, "_ordered_values", None) or ()]
    names = set(tracker.pk_keys) | {column.name for column in tracker.pk_columns}
    for key in keys:
        name = key if isinstance(key, str) else getattr(key, "key", None)
        if name in names:
            raise UnsupportedWritePath(
                f"UPDATE of {tracker.name!r} through the session sets the primary key "
                f"({name}); the hooks identify rows by primary key: delete the row and insert "
                "a new one instead"
            )


def _rows_before(
    connection: Connection, tracker: Tracker, state: ORMExecuteState
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows the statement will touch, by identity, in primary-key order, locked."""
    statement: Any = state.statement
    parameters = state.parameters
    if state.is_executemany:
        assert isinstance(parameters, list)
        if state.is_orm_statement and parameters and _has_keys(parameters[0], tracker.pk_keys):
            # ORM bulk UPDATE by primary key: the parameter sets name the rows.
            identities = [tuple(p[key] for key in tracker.pk_keys) for p in parameters]
            return tracker.load_rows(connection, list(dict.fromkeys(identities)), lock=True)
        parameter_sets: Sequence[Mapping[str, Any]] = parameters
    else:
        parameter_sets = [parameters or {}]  # type: ignore[list-item]

    query = sa.select(*tracker.columns).order_by(*tracker.pk_columns)
    query = query.with_for_update(of=tracker.table)
    where = statement.whereclause
    if where is not None:
        query = query.where(where)
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for params in parameter_sets:
        for values in connection.execute(query, dict(params)):
            row = tracker.row_from_db(values)
            found.setdefault(tracker.identity_of(row), row)
        if where is None:
            break  # every parameter set touches every row
    if len(parameter_sets) == 1 or where is None:
        return found  # already in primary-key order (ORDER BY)
    return dict(sorted(found.items(), key=lambda item: _sort_key(item[0])))


_MAX_IN_LIST = 10_000


def _identity_filter(
    tracker: Tracker, identities: list[tuple[Any, ...]], dialect: str
) -> sa.ColumnElement[bool]:
    if len(tracker.pk_columns) == 1:
        column = tracker.pk_attributes[0]
        ids = [identity[0] for identity in identities]
        if dialect == "postgresql" and len(ids) > _MAX_IN_LIST:
            # One array parameter instead of more binds than the protocol allows (65,535).
            from sqlalchemy.dialects.postgresql import ARRAY

            return column == sa.any_(sa.bindparam("hooks_ids", ids, type_=ARRAY(column.type)))
        return column.in_(ids)
    return sa.tuple_(*tracker.pk_attributes).in_(identities)


def _sort_key(identity: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in identity)


def _has_keys(params: Mapping[str, Any], keys: Sequence[str]) -> bool:
    return all(key in params for key in keys)


# Changes derived and written per sink call: bounds the messages held at once (T-014).
WRITE_CHUNK = 1000


def _write(
    session: Session, connection: Connection, tracker: Tracker, changes: list[RowChange]
) -> None:
    rule = tracker.rule
    for start in range(0, len(changes), WRITE_CHUNK):
        messages: list[Message] = []
        for change in changes[start : start + WRITE_CHUNK]:
            messages.extend(rule(change))
        if messages:
            write_messages(session, [(tracker, connection, messages)])


_installed = False


def install_statement_listener() -> None:
    global _installed
    if _installed:
        return
    event.listen(Session, "do_orm_execute", _on_orm_execute)
    _installed = True
