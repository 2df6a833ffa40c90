"""CloudEvents for task changes: schemas and builders (T-010), the Dapr transport and the
direct publisher (T-011, T-012).

`from src.events import get_event_publisher` is the entry point for code that must publish
outside a task transaction (task changes go through the outbox by themselves). This package
must not import `src.models` or `src.db`: the models import `src.events.derivation`.
"""

from hooks import Outcome, SendResult
from src.events.publisher import EventPublisher, get_event_publisher, reset_event_publisher
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
    "EventPublisher",
    "EventSchemaError",
    "Outcome",
    "ReminderEventData",
    "SendResult",
    "SyncEventData",
    "TaskEventData",
    "TaskSnapshot",
    "get_event_publisher",
    "reset_event_publisher",
]
