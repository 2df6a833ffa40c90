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

The JSON is built from plain dicts (a flush must stay cheap: no pydantic validation per
event) and is byte-for-byte what `build_task_event` / `build_sync_event` /
`build_reminder_event(...).to_json()` produce for the same input; tests hold the two together.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

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

# What `CloudEvent.to_json()` does, with the encoder built once.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_SPEC_VERSION_JSON: Final = _ENCODER.encode(SPEC_VERSION)
_DATA_CONTENT_TYPE_JSON: Final = _ENCODER.encode(DATA_CONTENT_TYPE)
# The encoder's own string function (C), for values known to be `str`.
_encode_string: Final[Callable[[str], str]] = json.encoder.encode_basestring
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


def _time_json(value: Any) -> str:
    return "null" if value is None else f'"{_rfc3339(value)}"'


def _text_json(value: Any) -> str:
    # Titles and descriptions are strings (or None); anything else the generic encoder takes.
    if type(value) is str:
        return _encode_string(value)
    return _ENCODER.encode(value)


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
    if change.kind == "insert":
        row, action, changes_json = change.new, "created", "{}"
    elif change.kind == "delete":
        row, action, changes_json = change.old, "deleted", "{}"
    else:
        if not change.changed:
            return []
        row = change.new
        action = _update_action(change)
        changes_json = _ENCODER.encode(
            {
                name: {"old": json_safe(change.old.get(name)), "new": json_safe(row.get(name))}
                for name in _ordered(change.changed, row)
            }
        )
    when = _utc(time)
    stamp = _rfc3339(when)
    task_id, user_id = _checked_ids(row)
    key = str(task_id)
    # Every event is assembled from JSON fragments, each encoded once per change: a flush
    # must stay cheap (issue 4). Key order and bytes are those of `CloudEvent.to_json()`
    # (a property test holds the two together).
    key_json = _encode_string(key)
    user_json = _encode_string(user_id)
    title_json = _text_json(row.get("title"))
    head = f'{{"specversion":{_SPEC_VERSION_JSON},"id":'
    source = f',"source":{_encode_string(settings.events_source)},"type":"'
    middle = (
        f'","subject":{key_json},"time":"{stamp}",'
        f'"datacontenttype":{_DATA_CONTENT_TYPE_JSON},"data":'
    )
    tail = (
        f',"partitionkey":{key_json},"correlationid":{_encode_string(correlation_id)}'
        if correlation_id
        else f',"partitionkey":{key_json}'
    )
    if traceparent:
        # Issue 19: the change's W3C trace context (a valid traceparent, src.tracing), last so
        # the relay finds it without parsing; `traceid` is Dapr's name for it, present so
        # Dapr keeps ours instead of writing its own.
        tail += f',"traceparent":"{traceparent}","traceid":"{traceparent}"'
        if tracestate:
            tail += f',"tracestate":{_encode_string(tracestate)}'
    tail += "}"
    own_ids = new_id is _uuid

    def message(event_type: str, topic: str, data_json: str) -> Message:
        event_id = new_id()
        # Our own ids are hex and dashes; one from elsewhere (tests) is encoded.
        id_json = f'"{event_id}"' if own_ids else _ENCODER.encode(event_id)
        return Message(
            event_id, topic, key, f"{head}{id_json}{source}{event_type}{middle}{data_json}{tail}"
        )

    task_json = (
        f'{{"id":{task_id},"user_id":{user_json},"title":{title_json},'
        f'"description":{_text_json(row.get("description"))},'
        f'"completed":{"true" if row.get("completed") else "false"},'
        f'"due_date":{_time_json(row.get("due_date"))},'
        f'"created_at":{_time_json(row.get("created_at"))},'
        f'"updated_at":{_time_json(row.get("updated_at"))}}}'
    )
    out = [
        message(
            f"task.{action}",
            settings.topic_task_events,
            f'{{"task_id":{task_id},"user_id":{user_json},"action":"{action}",'
            f'"task":{task_json},"changes":{changes_json},"timestamp":"{stamp}"}}',
        ),
        message(
            "task.sync",
            settings.topic_task_updates,
            f'{{"task_id":{task_id},"user_id":{user_json},"action":"{action}",'
            f'"timestamp":"{stamp}"}}',
        ),
    ]
    reminder = _reminder(change, action, when)
    if reminder is not None:
        reminder_action, due_date = reminder
        out.append(
            message(
                f"reminder.{reminder_action}",
                settings.topic_reminders,
                f'{{"task_id":{task_id},"user_id":{user_json},"action":"{reminder_action}",'
                f'"due_date":{_time_json(due_date)},"title":{title_json},'
                f'"timestamp":"{stamp}"}}',
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
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ordered(names: frozenset[str], row: Mapping[str, Any]) -> list[str]:
    """Changed fields in column order (stable JSON); unknown names last, sorted."""
    known = [name for name in row if name in names]
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
