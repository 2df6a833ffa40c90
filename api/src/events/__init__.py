"""CloudEvents for task changes: schemas and builders (T-010), the Dapr publisher (T-011, T-012).

`from src.events import get_event_publisher` is the entry point for code that publishes.
This package stays light (pydantic, loguru; the publisher talks HTTP/1.1 to the sidecar with
its own small asyncio client, and imports httpx only when given an httpx client) and must not
import `src.models` or `src.db`: the models import `src.events.derivation`.
"""

from src.events.publisher import (
    EventPublisher,
    PublishOutcome,
    PublishResult,
    get_event_publisher,
    reset_event_publisher,
)
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
    "PublishOutcome",
    "PublishResult",
    "ReminderEventData",
    "SyncEventData",
    "TaskEventData",
    "TaskSnapshot",
    "get_event_publisher",
    "reset_event_publisher",
]
