"""The event contract: CloudEvents 1.0 envelope, the `data` models, and pure builders (T-010).

Everything here is pure (no I/O, no settings read): the ORM-hook derivation and the publisher
build events with the same functions, so an event looks the same whichever path made it.

Wire format (contract §2): CloudEvents 1.0 structured JSON mode. `data` is a JSON object,
`time` and every datetime in `data` are RFC 3339 UTC (`2025-01-31T12:00:00.123456Z`), and
optional attributes that are absent are left out rather than sent as `null`.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from src.config import Settings

__all__ = [
    "DATA_CONTENT_TYPE",
    "EVENT_TYPES",
    "LIFECYCLE_ACTIONS",
    "REMINDER_ACTIONS",
    "SPEC_VERSION",
    "TASK_SYNC",
    "TOPIC_SETTING_FOR_TYPE",
    "CloudEvent",
    "EventSchemaError",
    "FieldChange",
    "LifecycleAction",
    "ReminderAction",
    "ReminderEventData",
    "SyncEventData",
    "TaskEventData",
    "TaskSnapshot",
    "build_reminder_event",
    "build_sync_event",
    "build_task_event",
    "data_model_for",
    "json_safe",
    "rfc3339",
    "task_snapshot",
    "topic_for",
]

SPEC_VERSION: Final = "1.0"
DATA_CONTENT_TYPE: Final = "application/json"

LifecycleAction: TypeAlias = Literal["created", "updated", "completed", "uncompleted", "deleted"]
ReminderAction: TypeAlias = Literal["scheduled", "cancelled"]
LIFECYCLE_ACTIONS: Final[tuple[str, ...]] = (
    "created",
    "updated",
    "completed",
    "uncompleted",
    "deleted",
)
REMINDER_ACTIONS: Final[tuple[str, ...]] = ("scheduled", "cancelled")
# Actions whose `changes` lists the changed fields; the others always carry `{}`.
_ACTIONS_WITH_CHANGES: Final = frozenset({"updated", "completed", "uncompleted"})

TASK_SYNC: Final = "task.sync"
# Event type -> name of the Settings attribute that holds its topic (contract §2).
TOPIC_SETTING_FOR_TYPE: Final[Mapping[str, str]] = {
    **{f"task.{action}": "topic_task_events" for action in LIFECYCLE_ACTIONS},
    TASK_SYNC: "topic_task_updates",
    **{f"reminder.{action}": "topic_reminders" for action in REMINDER_ACTIONS},
}
EVENT_TYPES: Final[tuple[str, ...]] = tuple(TOPIC_SETTING_FOR_TYPE)

# CloudEvents 1.0 §"Attribute Naming Convention": lower-case ASCII letters and digits; the
# spec recommends at most 20 characters.
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]{1,20}$")
# W3C Trace Context version 00, as the events carry it (src.tracing writes no other).
TRACEPARENT_PATTERN: Final = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_CORE_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}
)
# Attribute values CloudEvents cannot carry in JSON (no nested objects or lists).
_EXTENSION_SCALARS = (str, int, bool)


class EventSchemaError(ValueError):
    """An event could not be built from the given values; the message names the field."""


# --- datetimes ---------------------------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    # Naive values come from databases that drop the offset (SQLite); the app stores UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]


def rfc3339(value: datetime) -> str:
    """`value` in UTC as RFC 3339 with a `Z` suffix (naive values are taken as UTC).

    Matches pydantic's own JSON rendering of an aware UTC datetime, so a datetime looks the
    same in `changes` as in `task`.
    """
    return _as_utc(value).isoformat().replace("+00:00", "Z")


def json_safe(value: Any) -> Any:
    """A JSON-representable copy of `value`: datetimes become RFC 3339 strings, etc."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return str(value)


# --- data models (contract §2) ----------------------------------------------------------------


class _Data(BaseModel):
    # Every field is always present on the wire, so the serialization schema requires it.
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )


class TaskSnapshot(_Data):
    """The task as stored after the change (for `deleted`: as it was last stored)."""

    id: int = Field(description="Task id; also the event subject and partition key.")
    user_id: str = Field(min_length=1, description="Owner of the task.")
    title: str
    description: str | None = None
    completed: bool
    due_date: UTCDateTime | None = None
    created_at: UTCDateTime
    updated_at: UTCDateTime


class FieldChange(_Data):
    """One changed field: the value before and after, JSON-safe (datetimes as RFC 3339)."""

    old: Any = Field(description="Value before the change.")
    new: Any = Field(description="Value after the change.")


class TaskEventData(_Data):
    """`data` of `task.created|updated|completed|uncompleted|deleted` on `task-events`."""

    task_id: int
    user_id: str = Field(min_length=1)
    action: LifecycleAction
    task: TaskSnapshot
    changes: dict[str, FieldChange] = Field(
        default_factory=dict,
        description="Changed fields for updated/completed/uncompleted; {} otherwise.",
    )
    timestamp: UTCDateTime = Field(description="When the change happened (= event time).")

    @model_validator(mode="after")
    def _consistent(self) -> TaskEventData:
        if self.task.id != self.task_id:
            raise ValueError(f"task.id {self.task.id} differs from task_id {self.task_id}")
        if self.task.user_id != self.user_id:
            raise ValueError("task.user_id differs from user_id")
        if self.changes and self.action not in _ACTIONS_WITH_CHANGES:
            raise ValueError(f"changes must be empty for action {self.action!r}")
        return self


class SyncEventData(_Data):
    """`data` of `task.sync` on `task-updates`: lightweight, no title or description."""

    task_id: int
    user_id: str = Field(min_length=1)
    action: LifecycleAction
    timestamp: UTCDateTime


class ReminderEventData(_Data):
    """`data` of `reminder.scheduled|cancelled` on `reminders`."""

    task_id: int
    user_id: str = Field(min_length=1)
    action: ReminderAction
    due_date: UTCDateTime | None = Field(
        description="The due date the reminder is for; for `cancelled` the one being "
        "cancelled (null only when it is unknown)."
    )
    title: str
    timestamp: UTCDateTime

    @model_validator(mode="after")
    def _scheduled_needs_due_date(self) -> ReminderEventData:
        if self.action == "scheduled" and self.due_date is None:
            raise ValueError("due_date is required for a scheduled reminder")
        return self


_DATA_MODELS: Final[Mapping[str, type[_Data]]] = {
    **{f"task.{action}": TaskEventData for action in LIFECYCLE_ACTIONS},
    TASK_SYNC: SyncEventData,
    **{f"reminder.{action}": ReminderEventData for action in REMINDER_ACTIONS},
}


def data_model_for(event_type: str) -> type[BaseModel]:
    """The pydantic model of `data` for an event type (KeyError for an unknown type)."""
    return _DATA_MODELS[event_type]


# --- envelope ----------------------------------------------------------------------------------


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode, with our two extensions.

    `partitionkey` is the CloudEvents partitioning extension (the task id); `correlationid`
    carries the request's X-Request-ID. Other extensions (`traceparent`, ...) are accepted when
    their names follow the spec (lower-case letters and digits) and their values are scalars.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"] = SPEC_VERSION
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    subject: str | None = Field(default=None, min_length=1)
    time: UTCDateTime | None = None
    datacontenttype: str | None = DATA_CONTENT_TYPE
    data: dict[str, Any] | None = None
    partitionkey: str | None = Field(default=None, min_length=1)
    correlationid: str | None = Field(default=None, min_length=1)
    # CloudEvents distributed-tracing extension (issue 19): the W3C trace context of the
    # change; `traceid` repeats `traceparent` under Dapr's name so Dapr keeps it.
    traceparent: str | None = Field(default=None, pattern=TRACEPARENT_PATTERN)
    traceid: str | None = Field(default=None, pattern=TRACEPARENT_PATTERN)
    tracestate: str | None = Field(default=None, min_length=1, max_length=512)

    @model_validator(mode="after")
    def _check_extensions(self) -> CloudEvent:
        for name, value in (self.model_extra or {}).items():
            if not _ATTRIBUTE_NAME.match(name):
                raise ValueError(
                    f"extension attribute {name!r}: names must be 1-20 lower-case letters "
                    "or digits (CloudEvents 1.0)"
                )
            if value is not None and not isinstance(value, _EXTENSION_SCALARS):
                raise ValueError(f"extension attribute {name!r}: value must be a scalar")
        return self

    @field_validator("data")
    @classmethod
    def _data_is_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else json_safe(value)

    def to_dict(self) -> dict[str, Any]:
        """The structured-mode JSON object: attributes in spec order, no null attributes."""
        out: dict[str, Any] = {"specversion": self.specversion, "id": self.id}
        out["source"] = self.source
        out["type"] = self.type
        if self.subject is not None:
            out["subject"] = self.subject
        if self.time is not None:
            out["time"] = rfc3339(self.time)
        if self.datacontenttype is not None:
            out["datacontenttype"] = self.datacontenttype
        if self.data is not None:
            out["data"] = self.data
        if self.partitionkey is not None:
            out["partitionkey"] = self.partitionkey
        if self.correlationid is not None:
            out["correlationid"] = self.correlationid
        for name in ("traceparent", "traceid", "tracestate"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name, value in (self.model_extra or {}).items():
            if value is not None:
                out[name] = value
        return out

    def to_json(self) -> str:
        """Compact CloudEvents JSON (the outbox body and the HTTP body)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> CloudEvent:
        """Parses a structured-mode event (raises `EventSchemaError` naming the problem)."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise EventSchemaError(_describe(exc, "event")) from None

    def typed_data(self) -> BaseModel:
        """`data` validated against the model of this event's type."""
        if self.data is None:
            raise EventSchemaError(f"event {self.id}: no data")
        try:
            model = data_model_for(self.type)
        except KeyError:
            raise EventSchemaError(f"event {self.id}: unknown type {self.type!r}") from None
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise EventSchemaError(_describe(exc, "data")) from None

    @property
    def task_id(self) -> str | None:
        """The task the event is about (its subject), for logs."""
        return self.subject

    @property
    def user_id(self) -> str | None:
        value = (self.data or {}).get("user_id")
        return None if value is None else str(value)


def _describe(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{prefix}.{loc}: {err['msg']}" if loc else f"{prefix}: {err['msg']}")
    return "; ".join(parts)


# --- builders (used by the ORM-hook derivation and the publisher) ------------------------------

_SNAPSHOT_FIELDS: Final = tuple(TaskSnapshot.model_fields)
_D = TypeVar("_D", bound=_Data)


def task_snapshot(row: Mapping[str, Any]) -> TaskSnapshot:
    """The snapshot of a task row (extra columns are ignored; datetimes become aware UTC)."""
    try:
        return TaskSnapshot.model_validate({k: row[k] for k in _SNAPSHOT_FIELDS if k in row})
    except ValidationError as exc:
        raise EventSchemaError(_describe(exc, "task")) from None


def _envelope(
    *,
    event_type: str,
    task_id: int,
    data: _Data,
    when: datetime,
    source: str,
    correlation_id: str | None,
    event_id: str | None,
) -> CloudEvent:
    key = str(task_id)
    return CloudEvent(
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=event_type,
        subject=key,
        time=when,
        datacontenttype=DATA_CONTENT_TYPE,
        data=data.model_dump(mode="json"),
        partitionkey=key,
        correlationid=correlation_id or None,
    )


def _event_time(time: datetime | None) -> datetime:
    return datetime.now(UTC) if time is None else _as_utc(time)


def _build(build: Callable[[], _D], what: str) -> _D:
    try:
        return build()
    except ValidationError as exc:
        raise EventSchemaError(_describe(exc, what)) from None


def build_task_event(
    *,
    action: LifecycleAction,
    task: Mapping[str, Any] | TaskSnapshot,
    changes: Mapping[str, tuple[Any, Any]] | None,
    source: str,
    correlation_id: str | None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """A `task.<action>` event for `task-events`.

    `changes` maps each changed field to `(old, new)`; values are made JSON-safe. It must be
    empty or None for `created` and `deleted`.
    """
    snapshot = task if isinstance(task, TaskSnapshot) else task_snapshot(task)
    when = _event_time(time)
    change_map = {
        str(name): {"old": json_safe(old), "new": json_safe(new)}
        for name, (old, new) in (changes or {}).items()
    }
    data = _build(
        lambda: TaskEventData(
            task_id=snapshot.id,
            user_id=snapshot.user_id,
            action=action,
            task=snapshot,
            changes=change_map,
            timestamp=when,
        ),
        "data",
    )
    return _envelope(
        event_type=f"task.{action}",
        task_id=snapshot.id,
        data=data,
        when=when,
        source=source,
        correlation_id=correlation_id,
        event_id=event_id,
    )


def build_sync_event(
    *,
    action: LifecycleAction,
    task_id: int,
    user_id: str,
    source: str,
    correlation_id: str | None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """A `task.sync` event for `task-updates` (what changed, not how)."""
    when = _event_time(time)
    data = _build(
        lambda: SyncEventData(task_id=task_id, user_id=user_id, action=action, timestamp=when),
        "data",
    )
    return _envelope(
        event_type=TASK_SYNC,
        task_id=data.task_id,
        data=data,
        when=when,
        source=source,
        correlation_id=correlation_id,
        event_id=event_id,
    )


def build_reminder_event(
    *,
    action: ReminderAction,
    task_id: int,
    user_id: str,
    due_date: datetime | None,
    title: str,
    source: str,
    correlation_id: str | None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """A `reminder.scheduled|cancelled` event for `reminders` (T-018)."""
    when = _event_time(time)
    data = _build(
        lambda: ReminderEventData(
            task_id=task_id,
            user_id=user_id,
            action=action,
            due_date=due_date,
            title=title,
            timestamp=when,
        ),
        "data",
    )
    return _envelope(
        event_type=f"reminder.{action}",
        task_id=data.task_id,
        data=data,
        when=when,
        source=source,
        correlation_id=correlation_id,
        event_id=event_id,
    )


def topic_for(event_type: str, settings: Settings) -> str:
    """The configured topic of an event type (raises `EventSchemaError` for an unknown type)."""
    try:
        attribute = TOPIC_SETTING_FOR_TYPE[event_type]
    except KeyError:
        raise EventSchemaError(
            f"unknown event type {event_type!r} (known: {', '.join(EVENT_TYPES)})"
        ) from None
    topic: str = getattr(settings, attribute)
    return topic
