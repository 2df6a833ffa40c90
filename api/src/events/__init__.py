"""CloudEvents for task changes: schemas and builders (T-010); the Dapr publisher (T-011/T-012).

`from src.events import get_event_publisher` is the entry point for code that publishes.
This package must stay light (pydantic, httpx) and must not import `src.models` or `src.db`:
the models import `src.events.derivation`.
"""

from src.events.schemas import (
    CloudEvent,
    EventSchemaError,
    ReminderEventData,
    SyncEventData,
    TaskEventData,
    TaskSnapshot,
)

__all__ = [
    "CloudEvent",
    "EventSchemaError",
    "ReminderEventData",
    "SyncEventData",
    "TaskEventData",
    "TaskSnapshot",
]
