"""The event catalogue as an AsyncAPI 3.0 document, generated from the pydantic models (T-010).

    python -m src.events.asyncapi > docs/asyncapi.yaml

A test checks that the committed `docs/asyncapi.yaml` equals this output, so the published
catalogue cannot drift from the code. Channel addresses are the default topic names; the
examples are built by the same builders the application uses, with fixed ids and times.
Rendering YAML needs PyYAML (a dev dependency); `build_document()` needs nothing extra.
"""

from __future__ import annotations

import copy
import sys
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel

from src.config import Settings
from src.events.schemas import (
    DATA_CONTENT_TYPE,
    EVENT_TYPES,
    TOPIC_SETTING_FOR_TYPE,
    CloudEvent,
    ReminderEventData,
    SyncEventData,
    TaskEventData,
    build_reminder_event,
    build_sync_event,
    build_task_event,
    data_model_for,
)

__all__ = ["build_document", "example_event", "generate", "render_yaml"]

CONTRACT_VERSION: Final = "1.0.0"
_REF = "#/components/schemas/{model}"
_EXAMPLE_TIME: Final = datetime(2025, 1, 15, 9, 30, tzinfo=UTC)
_EXAMPLE_NAMESPACE: Final = uuid.UUID("7d0f3c55-8a8f-4a57-9a4e-2f0f5d0c1e11")

_CHANNELS: Final = {
    "topic_task_events": (
        "taskEvents",
        "Task lifecycle: one event per committed change of a task, with the task snapshot "
        "after the change and the changed fields.",
    ),
    "topic_task_updates": (
        "taskUpdates",
        "Lightweight sync signal for clients: which task changed and how, without content.",
    ),
    "topic_reminders": (
        "reminders",
        "Reminder scheduling: a due date was set or moved on an open task (scheduled), or the "
        "reminder no longer applies (cancelled).",
    ),
}
_SUMMARIES: Final = {
    "task.created": "A task was created.",
    "task.updated": "Fields of a task other than `completed` changed.",
    "task.completed": "A task was marked completed (possibly with other changes).",
    "task.uncompleted": "A completed task was reopened (possibly with other changes).",
    "task.deleted": "A task was deleted; `task` is its last snapshot.",
    "task.sync": "Something about a task changed; `action` says what.",
    "reminder.scheduled": "A reminder is due at `due_date`.",
    "reminder.cancelled": "The reminder for `due_date` no longer applies.",
}


def _message_name(event_type: str) -> str:
    family, _, action = event_type.partition(".")
    return family + action.capitalize()


def _example_task(**overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": 42,
        "user_id": "user-123",
        "title": "Write the quarterly report",
        "description": "Numbers from finance first",
        "completed": False,
        "due_date": datetime(2025, 1, 20, 17, 0, tzinfo=UTC),
        "created_at": datetime(2025, 1, 10, 8, 0, tzinfo=UTC),
        "updated_at": _EXAMPLE_TIME,
    }
    task.update(overrides)
    return task


_EXAMPLE_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def example_event(event_type: str) -> CloudEvent:
    """A deterministic, realistic example of each event type (docs and tests)."""
    event = _example_event(event_type)
    # The trace context the ORM hooks add (issue 19), the W3C specification's example.
    trace = {"traceparent": _EXAMPLE_TRACEPARENT, "traceid": _EXAMPLE_TRACEPARENT}
    return event.model_copy(update={**trace, "tracestate": "congo=t61rcWkgMzE"})


def _example_event(event_type: str) -> CloudEvent:
    common: dict[str, Any] = {
        "source": "pakaura-api",
        "correlation_id": "3f1c2b9e-5d7a-4c1e-9b8f-0a6d4e2c7b15",
        "time": _EXAMPLE_TIME,
        # Fixed but shaped like the real (version 4) ids.
        "event_id": str(
            uuid.UUID(bytes=uuid.uuid5(_EXAMPLE_NAMESPACE, event_type).bytes, version=4)
        ),
    }
    due = datetime(2025, 1, 20, 17, 0, tzinfo=UTC)
    match event_type:
        case "task.created":
            task = _example_task(created_at=_EXAMPLE_TIME)
            return build_task_event(action="created", task=task, changes=None, **common)
        case "task.updated":
            changes = {"title": ("Write the report", "Write the quarterly report")}
            return build_task_event(
                action="updated", task=_example_task(), changes=changes, **common
            )
        case "task.completed":
            return build_task_event(
                action="completed",
                task=_example_task(completed=True),
                changes={"completed": (False, True)},
                **common,
            )
        case "task.uncompleted":
            return build_task_event(
                action="uncompleted",
                task=_example_task(),
                changes={"completed": (True, False)},
                **common,
            )
        case "task.deleted":
            return build_task_event(action="deleted", task=_example_task(), changes=None, **common)
        case "task.sync":
            return build_sync_event(action="updated", task_id=42, user_id="user-123", **common)
        case "reminder.scheduled" | "reminder.cancelled":
            return build_reminder_event(
                action="scheduled" if event_type.endswith("scheduled") else "cancelled",
                task_id=42,
                user_id="user-123",
                due_date=due,
                title="Write the quarterly report",
                **common,
            )
    raise KeyError(event_type)


def _data_schemas() -> dict[str, Any]:
    """JSON Schemas of the data models, with nested models hoisted into components."""
    schemas: dict[str, Any] = {}
    model: type[BaseModel]
    for model in (TaskEventData, SyncEventData, ReminderEventData):
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
    return schemas


def _envelope_schema(event_type: str) -> dict[str, Any]:
    """The CloudEvent envelope (from the `CloudEvent` model) narrowed to one event type."""
    base = CloudEvent.model_json_schema(mode="serialization")["properties"]
    props = {name: copy.deepcopy(base[name]) for name in base}
    optional = ("correlationid", "traceparent", "traceid", "tracestate")
    for name in ("subject", "time", "partitionkey", "datacontenttype", "data", *optional):
        # Optional-with-null in the generic model; never null on the wire (absent instead).
        any_of = props[name].pop("anyOf", None)
        if any_of:
            props[name].update(next(s for s in any_of if s.get("type") != "null"))
        props[name].pop("default", None)
    props["specversion"] = {"const": "1.0", "description": "CloudEvents version."}
    props["id"] = {
        "type": "string",
        "format": "uuid",
        "description": "Unique per event, identical on every retry: de-duplicate on source+id.",
    }
    props["source"]["description"] = "Setting EVENTS_SOURCE (default `pakaura-api`)."
    props["type"] = {"const": event_type}
    props["subject"]["description"] = "The task id as a string."
    props["time"]["description"] = "When the change happened, RFC 3339 UTC."
    props["datacontenttype"] = {"const": DATA_CONTENT_TYPE}
    model_name = data_model_for(event_type).__name__
    props["data"] = {"$ref": _REF.format(model=model_name)}
    props["partitionkey"]["description"] = (
        "CloudEvents partitioning extension: the task id (also sent as Dapr "
        "metadata.partitionKey, which Kafka uses as the message key)."
    )
    props["correlationid"]["description"] = (
        "X-Request-ID of the request that made the change (absent for changes made outside "
        "a request)."
    )
    props["traceparent"]["description"] = (
        "CloudEvents distributed-tracing extension: W3C traceparent of the change (the "
        "request's trace, or a new trace per transaction outside requests). Continue the "
        "trace from it; all events of one request share its trace id."
    )
    props["traceid"]["description"] = (
        "The same value as traceparent, under the name Dapr reads, so the sidecar keeps it."
    )
    props["tracestate"]["description"] = (
        "CloudEvents distributed-tracing extension: the request's W3C tracestate, passed "
        "through unchanged (absent when the request had none)."
    )
    for name in props:
        props[name].pop("title", None)
    return {
        "type": "object",
        "required": [
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "data",
            "partitionkey",
        ],
        "properties": props,
        "additionalProperties": True,
    }


def build_document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document as a plain dict (topic names from `settings`, else defaults)."""
    settings = settings or Settings.model_construct()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas = _data_schemas()
    for setting, (channel_id, description) in _CHANNELS.items():
        types = [t for t in EVENT_TYPES if TOPIC_SETTING_FOR_TYPE[t] == setting]
        channel_messages = {}
        for event_type in types:
            name = _message_name(event_type)
            envelope = f"{name[0].upper()}{name[1:]}Event"
            schemas[envelope] = _envelope_schema(event_type)
            messages[name] = {
                "name": event_type,
                "title": event_type,
                "summary": _SUMMARIES[event_type],
                "contentType": "application/cloudevents+json",
                "payload": {"$ref": _REF.format(model=envelope)},
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": "The task id."},
                        "bindingVersion": "0.5.0",
                    }
                },
                "examples": [{"name": event_type, "payload": example_event(event_type).to_dict()}],
            }
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
        topic = getattr(settings, setting)
        channels[channel_id] = {
            "address": topic,
            "title": topic,
            "description": f"{description} Setting `{setting.upper()}`.",
            "messages": channel_messages,
        }
        operations[f"publish{channel_id[0].upper()}{channel_id[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"The API publishes to `{topic}` after each commit (transactional outbox).",
            "messages": [
                {"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in channel_messages
            ],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Pakaura task events",
            "version": CONTRACT_VERSION,
            "description": (
                "CloudEvents 1.0 (structured JSON mode) published through Dapr pub/sub for "
                "every committed change of a task. Delivery is at-least-once, in per-task "
                "order per topic; consumers de-duplicate on `source` + `id`. See "
                "docs/events.md."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "dapr": {
                "host": f"{settings.dapr_host}:{settings.dapr_http_port}",
                "protocol": "http",
                "pathname": f"/v1.0/publish/{settings.dapr_pubsub_name}",
                "description": (
                    "The Dapr sidecar's publish API (`POST /v1.0/publish/{pubsub}/{topic}"
                    "?metadata.partitionKey={task id}`, Content-Type "
                    "application/cloudevents+json); Dapr forwards to the broker (Kafka)."
                ),
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render_yaml(document: dict[str, Any] | None = None) -> str:
    import yaml  # dev dependency: only generating the file needs it

    return yaml.safe_dump(
        document if document is not None else build_document(),
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )


HEADER: Final = (
    "# Generated by `python -m src.events.asyncapi > docs/asyncapi.yaml`; do not edit.\n"
)


def generate() -> str:
    """The text of docs/asyncapi.yaml."""
    return HEADER + render_yaml()


def main() -> int:
    sys.stdout.write(generate())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
