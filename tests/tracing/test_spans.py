"""OpenTelemetry spans with the SDK's in-memory exporter (issue 19).

One REST create yields its request span (FastAPI instrumentation), its outbox-write span (a
child, holding the SQLAlchemy span of the INSERT) and one delivery span per event, each
linked to the request span (a link, not a parent: delivery happens later, in batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind
from src import tracing

from tests.support.app import Api, make_client
from tests.support.dapr_emulator import DaprEmulator

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
def traced(db_url: str, exporter: InMemorySpanExporter) -> Iterator[tuple[Api, DaprEmulator]]:
    with (
        DaprEmulator() as sidecar,
        make_client(db_url, DAPR_ENABLED="true", DAPR_HTTP_PORT=str(sidecar.port)) as api,
    ):
        yield api, sidecar


def _wait(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


def _server_spans(spans: tuple[ReadableSpan, ...], route: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.SERVER and s.name == route]


def _deliveries(spans: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith("send ")]


def test_a_rest_create_yields_request_outbox_and_linked_delivery_spans(
    traced: tuple[Api, DaprEmulator], exporter: InMemorySpanExporter
) -> None:
    api, sidecar = traced
    created = api.client.post(
        "/api/alice/tasks",
        json={"title": "traced", "due_date": "2030-01-01T09:00:00Z"},
        headers=api.auth("alice"),
    )
    assert created.status_code == 201
    _wait(lambda: len(_deliveries(exporter.get_finished_spans())) >= 3)
    spans = exporter.get_finished_spans()

    (request,) = _server_spans(spans, "POST /api/{user_id}/tasks")
    assert request.parent is None  # no traceparent header: a new trace
    context = request.get_span_context()

    (outbox,) = [s for s in spans if s.name == "outbox write event_outbox"]
    assert outbox.parent is not None and outbox.parent.span_id == context.span_id
    assert outbox.get_span_context().trace_id == context.trace_id
    assert outbox.attributes is not None
    assert outbox.attributes["messaging.batch.message_count"] == 3
    # The SQLAlchemy instrumentation's span of the INSERT itself, inside the outbox span.
    inserts = [
        s
        for s in spans
        if s.parent is not None
        and s.parent.span_id == outbox.get_span_context().span_id
        and "event_outbox" in str((s.attributes or {}).get("db.statement", ""))
    ]
    assert inserts, [s.name for s in spans]

    deliveries = _deliveries(spans)
    assert sorted(s.name for s in deliveries) == [
        "send reminders",
        "send task-events",
        "send task-updates",
    ]
    for delivery in deliveries:
        assert delivery.kind is SpanKind.PRODUCER
        assert delivery.parent is None  # its own trace ...
        assert delivery.get_span_context().trace_id != context.trace_id
        (link,) = delivery.links  # ... linked to the change's span
        assert link.context.trace_id == context.trace_id
        assert link.context.span_id == context.span_id
        assert delivery.attributes is not None
        assert delivery.attributes["pakaura.delivery.outcome"] == "ok"

    # The events on the sidecar carry the request's trace id, the request span as parent.
    _wait(lambda: len(sidecar.received) >= 3)
    ids = f"{_hex(context.trace_id, 32)}-{_hex(context.span_id, 16)}"
    expected = f"00-{ids}-{_hex(int(context.trace_flags), 2)}"
    assert {d.event["traceparent"] for d in sidecar.received} == {expected}
    assert {d.event["id"] for d in sidecar.received} == {
        (s.attributes or {}).get("messaging.message.id") for s in deliveries
    }


def test_the_request_span_continues_the_request_s_traceparent(
    traced: tuple[Api, DaprEmulator], exporter: InMemorySpanExporter
) -> None:
    api, sidecar = traced
    headers = {**api.auth("alice"), "traceparent": PARENT, "tracestate": "congo=t61rcWkgMzE"}
    assert api.client.post("/api/alice/tasks", json={"title": "t"}, headers=headers).is_success
    _wait(lambda: len(sidecar.received) >= 2)
    (request,) = _server_spans(exporter.get_finished_spans(), "POST /api/{user_id}/tasks")
    assert _hex(request.get_span_context().trace_id, 32) == TRACE_ID
    assert {d.event["traceparent"][3:35] for d in sidecar.received} == {TRACE_ID}
    assert {d.event["tracestate"] for d in sidecar.received} == {"congo=t61rcWkgMzE"}


@pytest.mark.parametrize("header", ["garbage", PARENT.upper(), "ff" + PARENT[2:]])
def test_a_malformed_traceparent_starts_a_new_trace(
    traced: tuple[Api, DaprEmulator], exporter: InMemorySpanExporter, header: str
) -> None:
    api, sidecar = traced
    headers = {**api.auth("alice"), "traceparent": header}
    answer = api.client.post("/api/alice/tasks", json={"title": "t"}, headers=headers)
    assert answer.status_code == 201
    _wait(lambda: len(sidecar.received) >= 2)
    (request,) = _server_spans(exporter.get_finished_spans(), "POST /api/{user_id}/tasks")
    assert request.parent is None
    trace_id = _hex(request.get_span_context().trace_id, 32)
    assert trace_id != TRACE_ID
    assert {d.event["traceparent"][3:35] for d in sidecar.received} == {trace_id}


def test_a_bulk_clear_completed_keeps_one_trace_for_all_its_events(
    traced: tuple[Api, DaprEmulator], exporter: InMemorySpanExporter
) -> None:
    api, sidecar = traced
    for title in ("a", "b", "c"):
        task_id = api.client.post(
            "/api/alice/tasks", json={"title": title}, headers=api.auth("alice")
        ).json()["id"]
        api.client.patch(f"/api/alice/tasks/{task_id}/complete", headers=api.auth("alice"))
    _wait(lambda: len(_deliveries(exporter.get_finished_spans())) >= 12)
    sidecar.clear()
    exporter.clear()
    answer = api.client.delete("/api/alice/tasks/completed", headers=api.auth("alice"))
    assert answer.json() == {"deleted": 3}
    _wait(lambda: len(sidecar.received) >= 6)
    _wait(lambda: len(_deliveries(exporter.get_finished_spans())) >= 6)
    spans = exporter.get_finished_spans()
    (request,) = _server_spans(spans, "DELETE /api/{user_id}/tasks/completed")
    trace_id = _hex(request.get_span_context().trace_id, 32)
    assert {d.event["traceparent"][3:35] for d in sidecar.received} == {trace_id}
    assert len(sidecar.received) == 6
    links = {link.context.trace_id for s in _deliveries(spans) for link in s.links}
    assert links == {request.get_span_context().trace_id}
