"""Direct publishing, outside a task transaction: the seed's publisher API (T-011, T-015,
T-016) for code that must publish an event now. Task changes never come through here (the
hooks write them to the outbox). It builds the CloudEvent, sends it with one
`DaprTransport.send` and returns the `hooks.SendResult`: a failure is logged and reported,
never raised and never retried; use the outbox when the event must not be lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from loguru import logger

from hooks import Message, Outcome, SendResult
from src.config import Settings, get_settings
from src.events.schemas import (
    CloudEvent,
    EventSchemaError,
    LifecycleAction,
    ReminderAction,
    TaskSnapshot,
    build_reminder_event,
    build_sync_event,
    build_task_event,
    topic_for,
)
from src.events.transport import DaprTransport
from src.request_context import correlation_id as current_correlation_id

__all__ = ["EventPublisher", "get_event_publisher", "reset_event_publisher"]


class EventPublisher:
    """Publishes single CloudEvents through a `DaprTransport` for `settings`."""

    def __init__(
        self, settings: Settings | None = None, *, transport: DaprTransport | None = None
    ) -> None:
        self.settings = settings if settings is not None else get_settings()
        self.transport = transport if transport is not None else DaprTransport(self.settings)

    @property
    def enabled(self) -> bool:
        return self.settings.dapr_enabled

    async def publish_task_event(
        self,
        action: LifecycleAction,
        task: Any,
        *,
        changes: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> SendResult:
        """`task.<action>` to TOPIC_TASK_EVENTS. `task`: ORM object, mapping or TaskSnapshot;
        `changes`: `{field: (old, new)}` or `{field: {"old": …, "new": …}}`."""
        return await self._build_and_publish(
            lambda common: build_task_event(
                action=action, task=_task_mapping(task), changes=_pairs(changes), **common
            ),
            correlation_id,
            time,
        )

    async def publish_task_event_from_dict(
        self,
        action: LifecycleAction,
        task: Mapping[str, Any],
        *,
        changes: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> SendResult:
        """Like `publish_task_event()` for a task given as a dict (e.g. a serialised row)."""
        return await self.publish_task_event(
            action, dict(task), changes=changes, correlation_id=correlation_id, time=time
        )

    async def publish_sync_event(
        self,
        action: LifecycleAction,
        task_id: int,
        user_id: str,
        *,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> SendResult:
        """`task.sync` to TOPIC_TASK_UPDATES."""
        return await self._build_and_publish(
            lambda common: build_sync_event(
                action=action, task_id=task_id, user_id=user_id, **common
            ),
            correlation_id,
            time,
        )

    async def publish_reminder_event(
        self,
        action: ReminderAction,
        task_id: int,
        user_id: str,
        due_date: datetime | None,
        title: str,
        *,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> SendResult:
        """`reminder.<action>` to TOPIC_REMINDERS (T-018)."""
        return await self._build_and_publish(
            lambda common: build_reminder_event(
                action=action,
                task_id=task_id,
                user_id=user_id,
                due_date=due_date,
                title=title,
                **common,
            ),
            correlation_id,
            time,
        )

    async def publish_event(self, event: CloudEvent, *, topic: str | None = None) -> SendResult:
        """Sends an already-built event to `topic` (default: the topic of its type)."""
        try:
            resolved = topic or topic_for(event.type, self.settings)
        except EventSchemaError as exc:
            result = SendResult(Outcome.PERMANENT, f"cannot publish: {exc}")
            self._log(result, event, topic)
            return result
        if not self.enabled:
            result = SendResult(Outcome.PERMANENT, "publishing disabled (DAPR_ENABLED=false)")
            self._log(result, event, resolved)
            return result
        key = event.partitionkey or event.subject or ""
        message = Message(event.id, resolved, key, event.to_json())
        (result,) = await self.transport.send([message])
        self._log(result, event, resolved)
        return result

    async def check_ready(self) -> bool:
        return await self.transport.check_ready()

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def _build_and_publish(
        self,
        build: Callable[[dict[str, Any]], CloudEvent],
        correlation_id: str | None,
        time: datetime | None,
    ) -> SendResult:
        common = {
            "source": self.settings.events_source,
            "correlation_id": correlation_id or current_correlation_id.get(),
            "time": time,
        }
        try:
            event = build(common)
        except Exception as exc:  # a caller's bad values: reported, never raised (T-016)
            logger.bind(outcome=Outcome.PERMANENT.value).error(
                "event not published: cannot build it: {}", exc
            )
            return SendResult(Outcome.PERMANENT, f"cannot build the event: {exc}")
        return await self.publish_event(event)

    def _log(self, result: SendResult, event: CloudEvent, topic: str | None) -> None:
        """T-015: one structured line per outcome."""
        log = logger.bind(
            event_type=event.type,
            topic=topic,
            task_id=event.subject,
            user_id=event.user_id,
            correlation_id=event.correlationid,
            event_id=event.id,
            dapr_status=result.status,
            outcome=result.outcome.value,
        )
        if result.ok:
            log.info("event published")
        elif not self.enabled:
            log.bind(event=event.to_dict()).debug("publishing disabled (DAPR_ENABLED=false)")
        elif result.outcome is Outcome.TRANSIENT and result.status is None:
            log.warning("event not published: {}", result.error)
        else:
            log.error("event not published: {}", result.error)


def _task_mapping(task: Any) -> Mapping[str, Any] | TaskSnapshot:
    if isinstance(task, TaskSnapshot | Mapping):
        return task
    # An ORM object (e.g. the Task model): read the snapshot fields off it.
    return {name: getattr(task, name) for name in TaskSnapshot.model_fields if hasattr(task, name)}


def _pairs(changes: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    return {
        name: (c.get("old"), c.get("new")) if isinstance(c, Mapping) else (c[0], c[1])
        for name, c in (changes or {}).items()
    }


_publisher: EventPublisher | None = None
_publisher_lock = threading.Lock()


def get_event_publisher() -> EventPublisher:
    """The process's publisher, built from `get_settings()` (rebuilt when those change)."""
    global _publisher
    settings = get_settings()
    with _publisher_lock:
        if _publisher is None or _publisher.settings is not settings:
            _publisher = EventPublisher(settings)
        return _publisher


def reset_event_publisher() -> None:
    """Forgets the cached publisher (tests). Close it first with `aclose()` where it was used."""
    global _publisher
    with _publisher_lock:
        _publisher = None
