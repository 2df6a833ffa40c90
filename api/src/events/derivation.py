"""The Task rules (contract §2): one row change in, its CloudEvents out, in order (T-014, T-017).

Pure: no I/O and no settings read here; the caller passes the settings, the event time (the
capture time), the correlation id and, for tests, the id generator.

Per row and flush:
- insert -> `task.created` + `task.sync` (+ `reminder.scheduled` with a due date on an open
  task);
- update with a real change (`updated_at` never counts; the capture leaves it out of
  `changed`) -> `task.completed` (false->true), `task.uncompleted` (true->false) or
  `task.updated`, with `changes` for every changed field; + `task.sync`; + at most one
  reminder event:
  * due date set or moved on an open task -> `reminder.scheduled`;
  * due date cleared on an open task, or the task completed while it had a due date ->
    `reminder.cancelled` (for the due date being cancelled);
  * uncompleted with a due date in the future (or one set at the same time) ->
    `reminder.scheduled`;
- delete -> `task.deleted` (last snapshot) + `task.sync` (+ `reminder.cancelled` when the
  task was open with a due date);
- a no-op (nothing in `changed`) -> nothing.

The JSON is built from plain dicts serialised by orjson (a flush must stay cheap: no pydantic
validation per event) and is byte-for-byte what `build_task_event` / `build_sync_event` /
`build_reminder_event(...).to_json()` produce for the same input; tests hold the two together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson

from hooks import Message, RowChange
from src.events.schemas import (
    DATA_CONTENT_TYPE,
    SPEC_VERSION,
    EventSchemaError,
    json_safe,
    rfc3339,
)

if TYPE_CHECKING:
    from src.config import Settings

__all__ = ["derive_task_events"]

_dumps: Final = orjson.dumps
# Aware UTC and naive (= UTC) datetimes are written by orjson itself, as `_rfc3339` would:
# microseconds only when non-zero, "Z" for UTC.
_DUMP_OPTIONS: Final = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_VARIANT: Final = "89ab"


def _uuid() -> str:
    """`str(uuid.uuid4())` at a fraction of the cost (it runs for every event in every flush).

    122 random bits; the version nibble is 4 and the variant bits are 10 (RFC 4122).
    """
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _rfc3339(value: datetime) -> str:
    # The common case (values from UTCDateTime, the capture clock) without conversions.
    if value.tzinfo is UTC:
        return value.isoformat()[:-6] + "Z"
    return rfc3339(value)


def _time(value: Any) -> Any:
    """A datetime as orjson may write it (UTC or naive), else its RFC 3339 string."""
    if value is None or type(value) is not datetime:
        return None if value is None else json_safe(value)
    tz = value.tzinfo
    if tz is UTC or tz is None:
        return value
    return rfc3339(value)


def _text(value: Any) -> Any:
    # Titles and descriptions are strings (or None); anything else as the schemas would.
    return value if value is None or type(value) is str else json_safe(value)


def derive_task_events(
    change: RowChange,
    settings: Settings,
    *,
    time: datetime,
    correlation_id: str | None = None,
    traceparent: str | None = None,
    tracestate: str | None = None,
    new_id: Callable[[], str] = _uuid,
) -> list[Message]:
    """The messages for one Task row change: lifecycle, then sync, then reminder."""
    changes: dict[str, Any]
    if change.kind == "insert":
        row, action, changes = change.new, "created", {}
    elif change.kind == "delete":
        row, action, changes = change.old, "deleted", {}
    else:
        if not change.changed:
            return []
        row = change.new
        action = _update_action(change)
        old = change.old
        changes = {
            name: {"old": json_safe(old.get(name)), "new": json_safe(row.get(name))}
            for name in _ordered(change.changed, row)
        }
    when = _utc(time)
    stamp = _rfc3339(when)
    task_id, user_id = _checked_ids(row)
    key = str(task_id)
    title = _text(row.get("title"))
    # Dicts in the key order of `CloudEvent.to_json()`, serialised by orjson (issue 16: about
    # a third less CPU than assembling JSON fragments by hand); a property test holds the
    # bytes to the pydantic builders'.
    source = settings.events_source

    def message(event_type: str, topic: str, data: dict[str, Any]) -> Message:
        event_id = new_id()
        envelope = {
            "specversion": SPEC_VERSION,
            "id": event_id,
            "source": source,
            "type": event_type,
            "subject": key,
            "time": stamp,
            "datacontenttype": DATA_CONTENT_TYPE,
            "data": data,
            "partitionkey": key,
        }
        if correlation_id:
            envelope["correlationid"] = correlation_id
        if traceparent:
            # Issue 19: the change's W3C trace context (a valid traceparent, src.tracing), last
            # so the relay finds it without parsing; `traceid` is Dapr's name for it, present so
            # Dapr keeps ours instead of writing its own.
            envelope["traceparent"] = envelope["traceid"] = traceparent
            if tracestate:
                envelope["tracestate"] = tracestate
        return Message(event_id, topic, key, _dumps(envelope, option=_DUMP_OPTIONS).decode())

    task = {
        "id": task_id,
        "user_id": user_id,
        "title": title,
        "description": _text(row.get("description")),
        "completed": bool(row.get("completed")),
        "due_date": _time(row.get("due_date")),
        "created_at": _time(row.get("created_at")),
        "updated_at": _time(row.get("updated_at")),
    }
    out = [
        message(
            f"task.{action}",
            settings.topic_task_events,
            {
                "task_id": task_id,
                "user_id": user_id,
                "action": action,
                "task": task,
                "changes": changes,
                "timestamp": stamp,
            },
        ),
        message(
            "task.sync",
            settings.topic_task_updates,
            {"task_id": task_id, "user_id": user_id, "action": action, "timestamp": stamp},
        ),
    ]
    reminder = _reminder(change, action, when)
    if reminder is not None:
        reminder_action, due_date = reminder
        out.append(
            message(
                f"reminder.{reminder_action}",
                settings.topic_reminders,
                {
                    "task_id": task_id,
                    "user_id": user_id,
                    "action": reminder_action,
                    "due_date": _time(due_date),
                    "title": title,
                    "timestamp": stamp,
                },
            )
        )
    return out


def _update_action(change: RowChange) -> str:
    if "completed" in change.changed:
        was, now = bool(change.old.get("completed")), bool(change.new.get("completed"))
        if now and not was:
            return "completed"
        if was and not now:
            return "uncompleted"
    return "updated"


def _reminder(change: RowChange, action: str, now: datetime) -> tuple[str, datetime] | None:
    """(scheduled|cancelled, due date) for the row's reminder, or None."""
    if change.kind == "insert":
        due = _due(change.new)
        return ("scheduled", due) if due is not None and not change.new.get("completed") else None
    if change.kind == "delete":
        due = _due(change.old)
        return ("cancelled", due) if due is not None and not change.old.get("completed") else None
    old_due, new_due = _due(change.old), _due(change.new)
    due_changed = "due_date" in change.changed
    if action == "completed":
        return ("cancelled", old_due) if old_due is not None else None
    if action == "uncompleted":
        if new_due is not None and (due_changed or new_due > now):
            return ("scheduled", new_due)
        return None
    if change.new.get("completed") or not due_changed:
        return None  # a closed task has no reminder; an unchanged due date keeps its own
    if new_due is not None:
        return ("scheduled", new_due)
    if old_due is not None:
        return ("cancelled", old_due)
    return None


def _due(row: Mapping[str, Any]) -> datetime | None:
    value = row.get("due_date")
    return None if value is None else _utc(value)


def _utc(value: datetime) -> datetime:
    # Naive values are UTC (what the database stores); aware ones are converted.
    tz = value.tzinfo
    if tz is UTC:
        return value
    return value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)


def _ordered(names: frozenset[str], row: Mapping[str, Any]) -> list[str]:
    """Changed fields in column order (stable JSON); unknown names last, sorted."""
    known = [name for name in row if name in names]
    if len(known) == len(names):
        return known
    return known + sorted(names.difference(known))


def _checked_ids(row: Mapping[str, Any]) -> tuple[int, str]:
    """The row's id and user id, refused like `TaskSnapshot` would refuse them."""
    task_id, user_id = row.get("id"), row.get("user_id")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise EventSchemaError(f"task.id: expected an integer, got {task_id!r}")
    if not isinstance(user_id, str) or not user_id:
        raise EventSchemaError(f"task.user_id: expected a non-empty string, got {user_id!r}")
    # An int subclass (an enum) is written as the plain number, as the encoder would.
    return (task_id if type(task_id) is int else int(task_id)), user_id
