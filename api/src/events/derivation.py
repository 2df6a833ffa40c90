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

__all__ = ["SNAPSHOT_FIELDS", "derive_task_events"]

SNAPSHOT_FIELDS: Final = (
    "id",
    "user_id",
    "title",
    "description",
    "completed",
    "due_date",
    "created_at",
    "updated_at",
)
_DATETIME_FIELDS: Final = frozenset({"due_date", "created_at", "updated_at"})
# What `CloudEvent.to_json()` does, with the encoder built once.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_SPEC_VERSION_JSON: Final = _ENCODER.encode(SPEC_VERSION)
_DATA_CONTENT_TYPE_JSON: Final = _ENCODER.encode(DATA_CONTENT_TYPE)


def _uuid() -> str:
    """`str(uuid.uuid4())` at a third of the cost (it runs for every event in every flush)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _rfc3339(value: datetime) -> str:
    # The common case (values from UTCDateTime, the capture clock) without conversions.
    if value.tzinfo is UTC:
        return value.isoformat()[:-6] + "Z"
    return rfc3339(value)


def derive_task_events(
    change: RowChange,
    settings: Settings,
    *,
    time: datetime,
    correlation_id: str | None = None,
    new_id: Callable[[], str] = _uuid,
) -> list[Message]:
    """The messages for one Task row change: lifecycle, then sync, then reminder."""
    changes: dict[str, dict[str, Any]]
    if change.kind == "insert":
        row, action, changes = change.new, "created", {}
    elif change.kind == "delete":
        row, action, changes = change.old, "deleted", {}
    else:
        if not change.changed:
            return []
        row = change.new
        action = _update_action(change)
        changes = {
            name: {"old": json_safe(change.old.get(name)), "new": json_safe(row.get(name))}
            for name in _ordered(change.changed, row)
        }
    when = _utc(time)
    stamp = _rfc3339(when)
    task = _snapshot(row)
    task_id, user_id = task["id"], task["user_id"]
    key = str(task_id)
    # The envelope is assembled from JSON fragments encoded once per change: only `data`
    # differs between the 2-3 events (issue 4: the derivation runs inside every flush).
    # Key order and bytes are those of `CloudEvent.to_json()` (a test holds them together).
    encode = _ENCODER.encode
    key_json = encode(key)
    head = f'{{"specversion":{_SPEC_VERSION_JSON},"id":'
    source = f',"source":{encode(settings.events_source)},"type":'
    middle = (
        f',"subject":{key_json},"time":"{stamp}",'
        f'"datacontenttype":{_DATA_CONTENT_TYPE_JSON},"data":'
    )
    tail = f',"partitionkey":{key_json}'
    if correlation_id:
        tail += f',"correlationid":{encode(correlation_id)}'
    tail += "}"
    user_json = encode(user_id)

    def message(event_type: str, topic: str, data_json: str) -> Message:
        event_id = new_id()
        # Our own ids are hex and dashes; one from elsewhere (tests) is encoded.
        id_json = f'"{event_id}"' if new_id is _uuid else encode(event_id)
        body = f'{head}{id_json}{source}"{event_type}"{middle}{data_json}{tail}'
        return Message(id=event_id, topic=topic, key=key, body=body)

    lifecycle = encode(
        {
            "task_id": task_id,
            "user_id": user_id,
            "action": action,
            "task": task,
            "changes": changes,
            "timestamp": stamp,
        }
    )
    sync = (
        f'{{"task_id":{task_id},"user_id":{user_json},"action":"{action}","timestamp":"{stamp}"}}'
    )
    out = [
        message(f"task.{action}", settings.topic_task_events, lifecycle),
        message("task.sync", settings.topic_task_updates, sync),
    ]
    reminder = _reminder(change, action, when)
    if reminder is not None:
        reminder_action, due_date = reminder
        out.append(
            message(
                f"reminder.{reminder_action}",
                settings.topic_reminders,
                encode(
                    {
                        "task_id": task_id,
                        "user_id": user_id,
                        "action": reminder_action,
                        "due_date": None if due_date is None else _rfc3339(due_date),
                        "title": task["title"],
                        "timestamp": stamp,
                    }
                ),
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


def _snapshot(row: Mapping[str, Any]) -> dict[str, Any]:
    """`TaskSnapshot.model_dump(mode="json")`, without the validation round trip."""
    task_id, user_id = row.get("id"), row.get("user_id")
    if not isinstance(task_id, int) or isinstance(task_id, bool):
        raise EventSchemaError(f"task.id: expected an integer, got {task_id!r}")
    if not isinstance(user_id, str) or not user_id:
        raise EventSchemaError(f"task.user_id: expected a non-empty string, got {user_id!r}")
    snapshot: dict[str, Any] = {}
    for name in SNAPSHOT_FIELDS:
        value = row.get(name)
        if name in _DATETIME_FIELDS:
            snapshot[name] = None if value is None else _rfc3339(value)
        elif name == "completed":
            snapshot[name] = bool(value)
        else:
            snapshot[name] = value
    return snapshot
