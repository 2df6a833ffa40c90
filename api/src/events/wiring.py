"""Plugs the Task rules into the generic hooks (T-014, T-017, T-019).

`src.models` calls `install_task_hooks(Task)` at import, so importing the model is enough:
every ORM write of a Task, through any session, derives its events. Nothing else in the app
publishes. The sink is chosen at each flush from `get_settings().dapr_enabled`:

- true: the transactional outbox (`event_outbox`, same transaction), relay woken on commit;
- false: no outbox row; the events are logged at DEBUG once their transaction has committed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.orm import Session

import hooks
from src import tracing
from src.config import get_settings
from src.events.derivation import derive_task_events
from src.request_context import correlation_id

__all__ = [
    "IGNORED_COLUMNS",
    "install_task_hooks",
    "outbox_wakeup",
    "reset_outbox_wakeup",
    "task_rule",
]

# Bumped on every UPDATE; alone it is no change anyone needs to hear about.
IGNORED_COLUMNS = ("updated_at",)

_lock = threading.Lock()
_wakeup = hooks.WakeSignal()
_outbox_sinks: dict[sa.Table, hooks.OutboxSink] = {}


def outbox_wakeup() -> hooks.WakeSignal:
    """The process's relay wake-up, notified after each commit that wrote outbox rows."""
    return _wakeup


def reset_outbox_wakeup() -> hooks.WakeSignal:
    """Replaces the wake-up with a fresh one (tests; an app instance per event loop)."""
    global _wakeup
    _wakeup = hooks.WakeSignal()
    return _wakeup


def task_rule(change: hooks.RowChange) -> list[hooks.Message]:
    """The Task rules with the current settings, capture time, request correlation id and
    the change's W3C trace context (issue 19)."""
    trace = tracing.change_context()
    return derive_task_events(
        change,
        get_settings(),
        time=hooks.utc_now(),
        correlation_id=correlation_id.get(),
        traceparent=trace.traceparent if trace is not None else None,
        tracestate=trace.tracestate if trace is not None else None,
    )


def _log_committed(messages: list[hooks.Message]) -> None:
    for message in messages:
        try:
            event: dict[str, Any] = json.loads(message.body)
        except ValueError:
            event = {}
        data = event.get("data") or {}
        logger.bind(
            event_id=message.id,
            event_type=event.get("type"),
            topic=message.topic,
            task_id=message.key,
            user_id=data.get("user_id"),
            correlation_id=event.get("correlationid"),
        ).debug("event {} not published: DAPR_ENABLED is false", event.get("type"))


_log_sink = hooks.AfterCommitSink(_log_committed)


class _TracedSink:
    """The outbox write as an OpenTelemetry span (issue 19), a child of the request's span.

    The SQLAlchemy instrumentation spans the INSERT alone; this one names the step, says how
    many events the flush wrote and for which topics, and holds the INSERT as its child.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: hooks.OutboxSink) -> None:
        self.inner = inner

    def write(
        self, session: Session, connection: sa.Connection, messages: Sequence[hooks.Message], /
    ) -> None:
        tracer = tracing.tracer()
        if tracer is None or not messages:
            self.inner.write(session, connection, messages)
            return
        from opentelemetry.trace import SpanKind

        attributes: dict[str, Any] = {
            "messaging.system": "dapr",
            "messaging.operation.type": "create",
            "messaging.operation.name": "outbox write",
            "messaging.batch.message_count": len(messages),
            "messaging.destination.name": sorted({m.topic for m in messages}),
            "db.collection.name": self.inner.table.name,
        }
        with tracer.start_as_current_span(
            f"outbox write {self.inner.table.name}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            self.inner.write(session, connection, messages)


_traced_sinks: dict[hooks.OutboxSink, _TracedSink] = {}


def _traced(sink: hooks.OutboxSink) -> hooks.Sink:
    if tracing.tracer() is None:
        return sink
    traced = _traced_sinks.get(sink)
    if traced is None:
        traced = _traced_sinks.setdefault(sink, _TracedSink(sink))
    return traced


def _outbox_sink(model: type) -> hooks.OutboxSink:
    metadata: sa.MetaData = model.metadata  # type: ignore[attr-defined]
    table = metadata.tables.get(hooks.DEFAULT_OUTBOX_TABLE)
    if table is None:
        raise hooks.HooksError(
            f"no {hooks.DEFAULT_OUTBOX_TABLE!r} table in {model.__name__}'s metadata: "
            "define it with hooks.build_outbox_table(metadata) beside the model"
        )
    sink = _outbox_sinks.get(table)
    if sink is None:
        with _lock:
            sink = _outbox_sinks.get(table)
            if sink is None:
                sink = _outbox_sinks[table] = hooks.OutboxSink(table, wakeup=outbox_wakeup)
    return sink


def install_task_hooks(model: type) -> None:
    """Tracks `model` (the Task table) with the Task rules. Idempotent."""
    with _lock:
        if hooks.is_tracked(model):
            return

    def sink_factory(session: Session) -> hooks.Sink:
        if get_settings().dapr_enabled:
            return _traced(_outbox_sink(model))
        return _log_sink

    # Outside requests, a new trace per transaction (scripts, stdio MCP; issue 19).
    tracing.install_transaction_context()
    hooks.track(model, task_rule, sink_factory=sink_factory, ignore=IGNORED_COLUMNS)
