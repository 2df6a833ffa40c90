"""`track()`: turn every ORM write of a mapped class into messages, through a sink.

After `track(Model, rule, sink_factory=...)` no code path can write a `Model` row through the
ORM, with any `Session` (sqlmodel's, `scoped_session`, `AsyncSession`'s `sync_session`),
without the rule seeing the change:

- unit of work (`add`, attribute changes, `delete`, `merge`): mapper events, see `_capture`;
- ORM statements and DML on `Model.__table__` through the session: `do_orm_execute`, see
  `_statements`;
- `bulk_save_objects` / `bulk_insert_mappings` / `bulk_update_mappings` fire no event at all:
  for a tracked class they raise `UnsupportedWritePath` instead of writing silently.

Core `Connection.execute(...)` and `text()` SQL bypass the ORM and stay invisible.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Mapper, Session

from hooks._capture import (
    Tracker,
    install_flush_listeners,
    register,
    tracker_for_mapper,
    unregister,
)
from hooks._sink import SinkFactory
from hooks._sqlite import install_sqlite_transaction_fix
from hooks._statements import install_statement_listener
from hooks._transaction import install_transaction_listeners
from hooks._types import ChangeRule, HooksError, UnsupportedWritePath

__all__ = ["is_tracked", "track", "untrack"]

DEFAULT_IGNORE = ("updated_at",)

_lock = threading.RLock()
_trackers: dict[type, Tracker] = {}


def _mapper_of(model: type) -> Mapper[Any]:
    mapper: Any
    try:
        mapper = sa.inspect(model)
    except sa.exc.NoInspectionAvailable:
        mapper = None
    if not isinstance(mapper, Mapper):
        raise HooksError(f"{model!r} is not a mapped class (a SQLModel table=True or ORM model)")
    return mapper


def track(
    model: type,
    rule: ChangeRule,
    *,
    sink_factory: SinkFactory,
    ignore: Iterable[str] = DEFAULT_IGNORE,
) -> Tracker:
    """Derives messages from every committed-to-be change of `model`'s rows.

    `rule` turns a `RowChange` into messages (none for a change that means nothing);
    `sink_factory(session)` picks, at each flush, where the messages go; columns in `ignore`
    (present in the model) neither make an update count nor appear in `changed`, but stay in the
    row snapshots. Calling again for the same class reconfigures it (no duplicate listeners).
    """
    ignore = tuple(ignore)
    with _lock:
        existing = _trackers.get(model)
        if existing is not None:
            existing.configure(rule, sink_factory, ignore)
            return existing
        mapper = _mapper_of(model)
        if tracker_for_mapper(mapper) is not None:
            raise HooksError(
                f"{model.__name__} inherits from a tracked class; it is tracked already"
            )
        table = mapper.local_table
        if not isinstance(table, sa.Table):
            raise HooksError(f"{model.__name__} is not mapped to a single table")
        keys: list[str] = []
        columns: list[sa.Column[Any]] = []
        for prop in mapper.column_attrs:
            column = prop.columns[0]
            if isinstance(column, sa.Column) and column.table is table:
                keys.append(prop.key)
                columns.append(column)
        pk_columns = tuple(mapper.primary_key)
        pk_keys = tuple(mapper.get_property_by_column(column).key for column in pk_columns)
        tracker = Tracker(
            mapper=mapper,
            table=table,
            keys=tuple(keys),
            columns=tuple(columns),
            pk_keys=pk_keys,
            pk_columns=pk_columns,  # type: ignore[arg-type]
            rule=rule,
            sink_factory=sink_factory,
            ignore=frozenset(ignore),
        )
        _install_process_listeners()
        _listen(tracker, model, "after_insert", tracker.after_insert, propagate=True, raw=True)
        if tracker.onupdate_keys:
            _listen(
                tracker, model, "before_update", tracker.before_update, propagate=True, raw=True
            )
        _listen(tracker, model, "after_update", tracker.after_update, propagate=True, raw=True)
        _listen(tracker, model, "before_delete", tracker.before_delete, propagate=True, raw=True)
        _listen(tracker, model, "after_delete", tracker.after_delete, propagate=True, raw=True)
        for key in keys:
            # The old value must be in history also when the attribute was expired (after a
            # commit) when assigned: active_history loads it first.
            _listen(tracker, getattr(model, key), "set", _keep_history, active_history=True)
            # flag_modified(): keep the old value it overwrites (no phantom update).
            _listen(tracker, getattr(model, key), "modified", tracker.flagged, raw=True)
        register(tracker)
        _trackers[model] = tracker
        return tracker


def untrack(model: type) -> None:
    """Stops tracking `model` (tests, benchmarks). Its columns keep `active_history`."""
    with _lock:
        tracker = _trackers.pop(model, None)
        if tracker is None:
            return
        unregister(tracker)
        for target, name, fn in tracker.listeners:
            event.remove(target, name, fn)
        tracker.listeners.clear()


def is_tracked(model: type) -> bool:
    return model in _trackers


def _listen(tracker: Tracker, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
    event.listen(target, name, fn, **kw)
    tracker.listeners.append((target, name, fn))


def _keep_history(target: Any, value: Any, oldvalue: Any, initiator: Any) -> None:
    """A no-op `set` listener; registering it with active_history=True is what counts."""


# -- process-wide listeners --------------------------------------------------------------------


def _install_process_listeners() -> None:
    install_sqlite_transaction_fix()
    install_transaction_listeners()
    install_flush_listeners()
    install_statement_listener()
    _guard_bulk_methods()


_BULK_ADVICE = (
    "Session.{name}() writes {model} rows without any ORM event, so their events would be "
    "lost; use session.add_all(...) or session.execute(insert({model}), rows) / "
    "session.execute(update({model}), rows) instead"
)


def _refuse(name: str, mapper: Mapper[Any]) -> None:
    if tracker_for_mapper(mapper) is not None:
        raise UnsupportedWritePath(_BULK_ADVICE.format(name=name, model=mapper.class_.__name__))


def _guard_bulk_methods() -> None:
    """Wraps the legacy bulk methods of `Session` to refuse tracked classes (once)."""
    save = Session.bulk_save_objects
    if not getattr(save, "_hooks_guard", False):

        @functools.wraps(save)
        def bulk_save_objects(self: Session, objects: Iterable[Any], *args: Any, **kw: Any) -> None:
            objects = list(objects)
            for mapper in {sa.inspect(obj).mapper for obj in objects}:
                _refuse("bulk_save_objects", mapper)
            save(self, objects, *args, **kw)

        bulk_save_objects._hooks_guard = True  # type: ignore[attr-defined]
        Session.bulk_save_objects = bulk_save_objects  # type: ignore[method-assign]

    for name in ("bulk_insert_mappings", "bulk_update_mappings"):
        original = getattr(Session, name)
        if getattr(original, "_hooks_guard", False):
            continue

        def make(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(original)
            def guarded(self: Session, mapper: Any, *args: Any, **kw: Any) -> Any:
                _refuse(name, sa.inspect(mapper).mapper)
                return original(self, mapper, *args, **kw)

            guarded._hooks_guard = True  # type: ignore[attr-defined]
            return guarded

        setattr(Session, name, make(name, original))
