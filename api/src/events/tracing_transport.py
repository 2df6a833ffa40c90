"""Delivery spans for the relay (issue 19): a `hooks.Transport` around `DaprTransport`.

One span per delivered event (name `send {topic}`, kind PRODUCER), each the root of a trace of
its own with a *link* to the context the event carries (`traceparent`: the span of the change
that produced it). A link and not a parent: delivery happens later, in batches, and one
relay batch mixes events of many requests. A span per event rather than per batch, so each
change's trace shows its own deliveries (retries included, one span per attempt) and each
span's status is that event's outcome; the spans of a batch share its start and end times.

Built by `relay_service.build_relay` only when tracing is on; without it the relay uses the
bare transport and none of this runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer

from hooks import Message, SendResult, Transport
from src.tracing import traceparent_of

__all__ = ["TracingTransport"]

# The relay's spans never continue whatever context the relay task happens to run in.
_ROOT = otel_context.Context()


def _link(message: Message) -> list[Link]:
    parent = traceparent_of(message.body)
    if parent is None:
        return []
    span_context = SpanContext(
        trace_id=int(parent[3:35], 16),
        span_id=int(parent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parent[53:55], 16)),
    )
    return [Link(span_context, {"messaging.message.id": message.id})]


class TracingTransport:
    """Wraps `inner.send` with a delivery span per message; everything else is `inner`'s."""

    def __init__(self, inner: Transport, tracer: Tracer, *, system: str = "dapr") -> None:
        self.inner = inner
        self._tracer = tracer
        self._system = system

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def send(self, messages: Sequence[Message], /) -> Sequence[SendResult]:
        if not messages:
            return await self.inner.send(messages)
        batch = len(messages)
        spans = [
            self._tracer.start_span(
                f"send {message.topic}",
                context=_ROOT,
                kind=SpanKind.PRODUCER,
                links=_link(message),
                attributes={
                    "messaging.system": self._system,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": message.topic,
                    "messaging.message.id": message.id,
                    "messaging.destination.partition.id": message.key,
                    "messaging.batch.message_count": batch,
                },
            )
            for message in messages
        ]
        try:
            results = await self.inner.send(messages)
        except BaseException as exc:  # cancelled or timed out by the relay
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                span.end()
            raise
        for span, result in zip(spans, results, strict=False):
            span.set_attribute("pakaura.delivery.outcome", result.outcome.value)
            if result.status is not None:
                span.set_attribute("http.response.status_code", result.status)
            if not result.ok:
                span.set_status(Status(StatusCode.ERROR, result.error or result.outcome.value))
            span.end()
        for span in spans[len(results) :]:  # a transport that broke its contract
            span.set_status(Status(StatusCode.ERROR, "no result"))
            span.end()
        return results
