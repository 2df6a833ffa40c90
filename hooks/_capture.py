"""Change capture for unit-of-work flushes: mapper events in, one sink write per flush out.

T-014, T-017, T-019: task events are derived here from committed changes, not published by
routes, services or MCP tools.

In the style of SQLAlchemy's `examples/versioned_history`: the change of each row is read
from attribute history (`committed_state` holds the value before the flush, `active_history`
on the tracked columns makes sure it was loaded), a flush without a real column change
records nothing, and the derived messages are written in the flush's own transaction.

- `after_insert` / `after_update` / `after_delete` on the tracked mapper turn each row into a
  `RowChange` and run the rule right away (event time = capture time);
- the session's `after_flush` hands everything the flush derived to the sink in one call
  (the outbox writes it with one multi-row INSERT);
- `before_flush` drops leftovers of a flush that failed half-way.

Mapper events run inside the flush: they read only `state.dict`/`committed_state` (never an
expired attribute) and run SQL only on the flush's own `connection` (to fill in a column
the ORM did not load, e.g. a server default).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, Session, UOWTransaction

from hooks._sink import Sink, SinkFactory
from hooks._types import ChangeKind, ChangeRule, HooksError, Message, RowChange

__all__ = ["Tracker", "install_flush_listeners", "tracker_for_mapper", "trackers_by_table"]

# `committed_state` holds this when the previous value was never loaded.
_NO_VALUE: Any = sa.orm.attributes.NO_VALUE
# Rows per `IN (...)` look-up.
CHUNK = 500
# Rows per `= ANY(:array)` look-up (PostgreSQL).
ARRAY_CHUNK = 10_000
# Values that cannot change in place: for these, "the same object" means "the same value".
_IMMUTABLE: frozenset[type] = frozenset(
    {str, int, float, bool, bytes, type(None), datetime, date, time, timedelta, Decimal, UUID}
)


@dataclass(eq=False)
class Tracker:
    """What is tracked for one mapped class, and how its changes become messages."""

    mapper: Mapper[Any]
    table: sa.Table
    keys: tuple[str, ...]
    columns: tuple[sa.Column[Any], ...]
    pk_keys: tuple[str, ...]
    pk_columns: tuple[sa.Column[Any], ...]
    rule: ChangeRule
    sink_factory: SinkFactory
    ignore: frozenset[str]
    # (key, equality) for the keys whose change counts (all but `ignore`).
    compared: tuple[tuple[str, Callable[[Any, Any], bool]], ...] = ()
    listeners: list[tuple[Any, str, Callable[..., Any]]] = field(default_factory=list)
    # Columns the UPDATE itself sets (onupdate): they never enter committed_state.
    onupdate_keys: tuple[str, ...] = ()
    deferred_keys: frozenset[str] = frozenset()
    _array_select: sa.Select[Any] | None = None

    def __post_init__(self) -> None:
        self.configure(self.rule, self.sink_factory, self.ignore)
        # The mapped attributes of the primary key: criteria built from them can be evaluated
        # by synchronize_session="evaluate" (plain table columns cannot).
        self.pk_attributes: tuple[Any, ...] = tuple(
            getattr(self.mapper.class_, key) for key in self.pk_keys
        )
        self._by_identity = self._identity_select()
        self.deferred_keys = frozenset(
            prop.key for prop in self.mapper.column_attrs if prop.key in self.keys and prop.deferred
        )
        self.onupdate_keys = tuple(
            key
            for key, column in zip(self.keys, self.columns, strict=True)
            if column.onupdate is not None or column.server_onupdate is not None
        )

    def configure(self, rule: ChangeRule, sink_factory: SinkFactory, ignore: Iterable[str]) -> None:
        ignored = frozenset(ignore)
        unknown = ignored - set(self.keys)
        if unknown:
            raise HooksError(
                f"ignore: {', '.join(sorted(unknown))} not a column attribute of "
                f"{self.mapper.class_.__name__} (columns: {', '.join(self.keys)})"
            )
        self.rule = rule
        self.sink_factory = sink_factory
        self.ignore = ignored
        self.compared = tuple(
            (key, column.type.compare_values)
            for key, column in zip(self.keys, self.columns, strict=True)
            if key not in ignored
        )
        # Keys whose type compares with plain `==` (nearly all): compared inline in `differs`.
        self._plain = tuple(
            key
            for key, column in zip(self.keys, self.columns, strict=True)
            if key not in ignored and _plain_equality(column.type)
        )
        self._custom = tuple((k, eq) for k, eq in self.compared if k not in self._plain)

    def differs(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> frozenset[str]:
        """The compared columns whose value differs between two full rows."""
        changed = [key for key in self._plain if old[key] != new[key]]
        for key, equal in self._custom:
            if not equal(old[key], new[key]):
                changed.append(key)
        return frozenset(changed)

    @property
    def name(self) -> str:
        return self.table.name

    # -- rows ----------------------------------------------------------------------------------

    def identity_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        if len(self.pk_keys) == 1:
            return (row[self.pk_keys[0]],)
        return tuple([row[key] for key in self.pk_keys])

    def row_from_db(self, values: Sequence[Any]) -> dict[str, Any]:
        return dict(zip(self.keys, values, strict=True))

    def _identity_select(self) -> sa.Select[Any]:
        ids: sa.BindParameter[Any] = sa.bindparam("hooks_ids", expanding=True)
        if len(self.pk_columns) == 1:
            where = self.pk_columns[0].in_(ids)
        else:
            where = sa.tuple_(*self.pk_columns).in_(ids)
        return sa.select(*self.columns).where(where).order_by(*self.pk_columns)

    def _by_identity_array(self) -> sa.Select[Any]:
        statement = self._array_select
        if statement is None:
            from sqlalchemy.dialects.postgresql import ARRAY

            column = self.pk_columns[0]
            ids = sa.bindparam("hooks_ids", type_=ARRAY(column.type))
            statement = self._array_select = (
                sa.select(*self.columns).where(column == sa.any_(ids)).order_by(column)
            )
        return statement

    def load_rows(
        self,
        connection: Connection,
        identities: Sequence[tuple[Any, ...]],
        *,
        lock: bool = False,
    ) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Current rows by identity, read on `connection` (inside the caller's transaction)."""
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        single = len(self.pk_keys) == 1
        statement, size = self._by_identity, CHUNK
        if single and connection.dialect.name == "postgresql":
            # One array parameter per 10,000 rows instead of 500 expanded binds (bulk
            # statements: T-019).
            statement, size = self._by_identity_array(), ARRAY_CHUNK
        if lock:
            statement = statement.with_for_update(of=self.table)
        for start in range(0, len(identities), size):
            chunk = identities[start : start + size]
            ids: list[Any] = [identity[0] for identity in chunk] if single else list(chunk)
            for values in connection.execute(statement, {"hooks_ids": ids}):
                row = self.row_from_db(values)
                found[self.identity_of(row)] = row
        return found

    def _unknown(self, state: InstanceState[Any]) -> list[str]:
        """Tracked columns absent from `state.dict` whose value only the row knows.

        Expired attributes (a server default after INSERT, `session.expire()`) and deferred
        ones. A column that is merely unloaded (never set, no server default) is NULL.
        """
        values = state.dict
        return [
            key
            for key in self.keys
            if key not in values
            and (
                key in state.expired_attributes
                or key in state.callables
                or key in self.deferred_keys
            )
        ]

    def snapshot(self, state: InstanceState[Any], connection: Connection) -> dict[str, Any]:
        """Every tracked column of the row as it is now (during the flush)."""
        values = state.dict
        try:
            return {key: values[key] for key in self.keys}
        except KeyError:
            pass
        row = {key: values.get(key) for key in self.keys}
        unknown = self._unknown(state)
        if unknown:
            # Per-row SQL, but only for columns the ORM did not load; on the flush's connection.
            identity = _state_identity(state, self)
            stored = self.load_rows(connection, [identity]).get(identity, {})
            for key in unknown:
                row[key] = stored.get(key)
        return row

    def derive(self, change: RowChange) -> list[Message]:
        return list(self.rule(change))

    def change(
        self,
        kind: ChangeKind,
        identity: tuple[Any, ...],
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        changed: frozenset[str] = frozenset(),
    ) -> RowChange:
        return RowChange(kind, self.table.name, identity, old, new, changed)

    # -- mapper events (registered with raw=True: they get the InstanceState) ------------------

    def after_insert(
        self, mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]
    ) -> None:
        new = self.snapshot(state, connection)
        self._record(state, connection, self.change("insert", self.identity_of(new), {}, new))

    def before_update(
        self, mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]
    ) -> None:
        # Registered only when the table has onupdate columns: keep their values before the
        # UPDATE replaces them, so `old` is right for them too.
        values, committed = state.dict, state.committed_state
        before = {
            key: values.get(key, _NO_VALUE) for key in self.onupdate_keys if key not in committed
        }
        if before:
            _buffer_for(state).before_update[state] = before

    def flagged(self, state: InstanceState[Any], initiator: Any) -> None:
        """Attribute `modified` event: `flag_modified()` is about to forget the old value.

        `flag_modified(obj, key)` stores NO_VALUE in `committed_state` (also over an old value
        that was there), which alone would report a change with `old: null` even when nothing
        changed (T-014: no event for a non-change). It fires this event first: keep the value
        the row still has, so `after_update` compares against it.
        """
        key = initiator.key
        committed = state.committed_state
        if key in committed:
            previous = committed[key]
            if previous is _NO_VALUE:
                return  # flagged again before the flush: the first flag kept the old value
        else:
            # Unchanged since loaded: the current value is the stored one, unless it is a
            # mutable object changed in place (MutableDict): then the old value is unknown.
            previous = state.dict.get(key, _NO_VALUE)
            if type(previous) not in _IMMUTABLE:
                previous = _NO_VALUE
        stash = _flagged.get(state)
        if stash is None:
            stash = _flagged[state] = {}
        stash[key] = previous

    def after_update(
        self, mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]
    ) -> None:
        committed: Mapping[str, Any] = state.committed_state
        if _flagged:
            flagged = _flagged.pop(state, None)
            if flagged:
                committed = {
                    **committed,
                    **{k: v for k, v in flagged.items() if committed.get(k) is _NO_VALUE},
                }
        if self.onupdate_keys:
            before = _buffer_for(state).before_update.pop(state, None)
            if before:
                committed = {**before, **committed}
        if not committed:
            return  # fired for every dirty object, also without any column change
        values = state.dict
        changed = [
            key
            for key, equal in self.compared
            if key in committed
            and (committed[key] is _NO_VALUE or not equal(committed[key], values.get(key)))
        ]
        if not changed:
            return  # same-value assignment or only ignored columns (updated_at)
        new = self.snapshot(state, connection)
        old = dict(new)
        for key in self.keys:
            if key in committed:
                previous = committed[key]
                # Only without active_history (a column tracked elsewhere): old is unknown.
                old[key] = None if previous is _NO_VALUE else previous
        change = self.change("update", self.identity_of(new), old, new, frozenset(changed))
        self._record(state, connection, change)

    def before_delete(
        self, mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]
    ) -> None:
        if not self._unknown(state):
            return
        # Deleting an expired object loads nothing: read its last stored row before it goes.
        identity = _state_identity(state, self)
        row = self.load_rows(connection, [identity]).get(identity)
        if row is not None:
            _buffer_for(state).preloaded[state] = row

    def after_delete(
        self, mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]
    ) -> None:
        buffer = _buffer_for(state)
        row = buffer.preloaded.pop(state, None)
        if row is None:
            values, committed = state.dict, state.committed_state
            # The last stored values: pending (unflushed) assignments never reached the row.
            row = {}
            for key in self.keys:
                previous = committed.get(key, _NO_VALUE)
                row[key] = values.get(key) if previous is _NO_VALUE else previous
        change = self.change("delete", _state_identity(state, self), row, {})
        self._record(state, connection, change)

    def _record(self, state: InstanceState[Any], connection: Connection, change: RowChange) -> None:
        messages = self.derive(change)
        if messages:
            _buffer_for(state).items.append((self, connection, messages))


def _plain_equality(column_type: sa.types.TypeEngine[Any]) -> bool:
    """True when the type's `compare_values` is the default `x == y`."""
    while isinstance(column_type, sa.types.TypeDecorator):
        if type(column_type).compare_values is not sa.types.TypeDecorator.compare_values:
            return False
        column_type = column_type.impl_instance
    return type(column_type).compare_values is sa.types.TypeEngine.compare_values


def _state_identity(state: InstanceState[Any], tracker: Tracker) -> tuple[Any, ...]:
    if state.key is not None:
        return tuple(state.key[1])
    values = state.dict
    return tuple(values.get(key) for key in tracker.pk_keys)


# -- registry ---------------------------------------------------------------------------------

_lock = threading.RLock()
_by_mapper: dict[Mapper[Any], Tracker] = {}
_by_table: dict[sa.Table, Tracker] = {}


def trackers_by_table() -> Mapping[sa.Table, Tracker]:
    return _by_table


def tracker_for_mapper(mapper: Mapper[Any]) -> Tracker | None:
    """The tracker of `mapper` or of the class it inherits from."""
    if not _by_mapper:
        return None
    for candidate in mapper.iterate_to_root():
        tracker = _by_mapper.get(candidate)
        if tracker is not None:
            return tracker
    return None


def register(tracker: Tracker) -> None:
    with _lock:
        _by_mapper[tracker.mapper] = tracker
        _by_table[tracker.table] = tracker


def unregister(tracker: Tracker) -> None:
    with _lock:
        _by_mapper.pop(tracker.mapper, None)
        _by_table.pop(tracker.table, None)


# -- per-flush buffer -------------------------------------------------------------------------


class _FlushBuffer:
    __slots__ = ("before_update", "items", "preloaded")

    def __init__(self) -> None:
        self.items: list[tuple[Tracker, Connection, list[Message]]] = []
        self.preloaded: dict[InstanceState[Any], dict[str, Any]] = {}
        self.before_update: dict[InstanceState[Any], dict[str, Any]] = {}


_pending: weakref.WeakKeyDictionary[Session, _FlushBuffer] = weakref.WeakKeyDictionary()
# Old values `flag_modified()` would have discarded, per object (see `Tracker.flagged`).
_flagged: weakref.WeakKeyDictionary[InstanceState[Any], dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def _buffer_for(state: InstanceState[Any]) -> _FlushBuffer:
    session = state.session
    if session is None:  # pragma: no cover - mapper events fire only inside a flush
        raise HooksError("mapper event outside of a session flush")
    buffer = _pending.get(session)
    if buffer is None:
        buffer = _pending[session] = _FlushBuffer()
    return buffer


def write_messages(
    session: Session, batches: Iterable[tuple[Tracker, Connection, list[Message]]]
) -> None:
    """Hands messages to their sinks: one write per run of the same sink and connection."""
    sinks: dict[Tracker, Sink] = {}
    run_sink: Sink | None = None
    run_connection: Connection | None = None
    run: list[Message] = []
    for tracker, connection, messages in batches:
        sink = sinks.get(tracker)
        if sink is None:
            sink = sinks[tracker] = tracker.sink_factory(session)
        if run and (sink is not run_sink or connection is not run_connection):
            assert run_sink is not None and run_connection is not None
            run_sink.write(session, run_connection, run)
            run = []
        run_sink, run_connection = sink, connection
        run.extend(messages)
    if run:
        assert run_sink is not None and run_connection is not None
        run_sink.write(session, run_connection, run)


def _before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    # A flush that failed half-way never reached after_flush: forget what it captured.
    if _pending:
        _pending.pop(session, None)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    if not _pending:
        return
    buffer = _pending.pop(session, None)
    if buffer is not None and buffer.items:
        write_messages(session, buffer.items)


_installed = False


def install_flush_listeners() -> None:
    """Registers the flush listeners on the `Session` class, once."""
    global _installed
    with _lock:
        if _installed:
            return
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "after_flush", _after_flush)
        _installed = True
