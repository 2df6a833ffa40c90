"""Every event carries the W3C trace context of its change, through the outbox (issue 19).

No OpenTelemetry here: the request middleware's own parsing supplies the context.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from src import tracing
from src.models import Task
from src.tracing import TraceContext, parse_traceparent, request_trace

from tests.support.app import Api, make_client
from tests.support.dapr_emulator import DaprEmulator

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    """Events on, no relay: the outbox rows stay to be read."""
    with make_client(db_url, DAPR_ENABLED="true", RELAY_ENABLED="false") as api:
        yield api


def _trace_ids(events: list[dict[str, Any]]) -> set[str]:
    for event in events:
        assert parse_traceparent(event["traceparent"]) == event["traceparent"]
        assert event["traceid"] == event["traceparent"]  # Dapr's name: it keeps ours
    return {e["traceparent"][3:35] for e in events}


def _post(api: Api, title: str, **headers: str) -> int:
    answer = api.client.post(
        "/api/alice/tasks",
        json={"title": title, "due_date": "2030-01-01T09:00:00Z"},
        headers={**api.auth("alice"), **headers},
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def test_the_request_s_traceparent_and_tracestate_reach_every_event(api: Api) -> None:
    _post(api, "traced", traceparent=PARENT, tracestate="congo=t61rcWkgMzE,rojo=00f0")
    events = api.take_events()
    assert [e["type"] for e in events] == ["task.created", "task.sync", "reminder.scheduled"]
    assert {e["traceparent"] for e in events} == {PARENT}
    assert {e["tracestate"] for e in events} == {"congo=t61rcWkgMzE,rojo=00f0"}
    # Attributes in the envelope: the CloudEvent model reads them back.
    assert list(events[0])[-3:] == ["traceparent", "traceid", "tracestate"]


def test_a_request_without_trace_context_starts_a_new_trace(api: Api) -> None:
    _post(api, "first")
    first = api.take_events()
    _post(api, "second")
    second = api.take_events()
    assert len(_trace_ids(first)) == len(_trace_ids(second)) == 1
    assert _trace_ids(first) != _trace_ids(second)
    assert all("tracestate" not in e for e in first + second)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        PARENT.upper(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff" + PARENT[2:],
        PARENT + "-x",
        "\u00ff" * 55,
    ],
)
def test_a_malformed_traceparent_is_ignored_never_an_error(api: Api, header: str) -> None:
    answer = api.client.post(
        "/api/alice/tasks",
        json={"title": "malformed"},
        headers={
            **api.auth("alice"),
            # bytes: sent as they are, not ASCII-encoded by the client
            "traceparent": header.encode("latin-1"),  # type: ignore[dict-item]
            "tracestate": "congo=t61rcWkgMzE",
        },
    )
    assert answer.status_code == 201, answer.text
    events = api.take_events()
    (trace_id,) = _trace_ids(events)
    assert trace_id != TRACE_ID
    assert all("tracestate" not in e for e in events)  # dropped with its traceparent


def test_a_bulk_clear_completed_keeps_one_trace_for_all_its_events(api: Api) -> None:
    for title in ("a", "b", "c"):
        task_id = _post(api, title)
        done = api.client.patch(f"/api/alice/tasks/{task_id}/complete", headers=api.auth("alice"))
        assert done.status_code == 200
    api.take_events()
    answer = api.client.delete(
        "/api/alice/tasks/completed", headers={**api.auth("alice"), "traceparent": PARENT}
    )
    assert answer.json() == {"deleted": 3}
    events = api.take_events()
    assert len(events) == 6  # task.deleted + task.sync per task (no open reminder left)
    assert {e["traceparent"] for e in events} == {PARENT}

    _post(api, "d")
    _post(api, "e")
    api.client.patch("/api/alice/tasks/1/complete", headers=api.auth("alice"))
    api.take_events()
    ids = [t["id"] for t in api.client.get("/api/alice/tasks", headers=api.auth("alice")).json()]
    for task_id in ids:
        api.client.patch(f"/api/alice/tasks/{task_id}/complete", headers=api.auth("alice"))
    api.take_events()
    api.client.delete("/api/alice/tasks/completed", headers=api.auth("alice"))
    assert len(_trace_ids(api.take_events())) == 1  # a new trace, still one for the request


def test_outside_requests_each_transaction_is_a_trace_of_its_own(api: Api) -> None:
    """Scripts and stdio MCP: a new trace per transaction, shared by its flushes and ORM
    statements; a caller may set its own."""
    with Session(api.engine) as session:
        first = Task(user_id="bob", title="one")
        session.add(first)
        session.flush()
        session.add(Task(user_id="bob", title="two"))
        session.flush()
        first.completed = True
        session.commit()  # three flushes, one transaction
        one_transaction = api.take_events()
        session.execute(sa.delete(Task).where(Task.completed.is_(True)))  # type: ignore[attr-defined]
        session.commit()
        statement_first = api.take_events()
        session.add(Task(user_id="bob", title="three"))
        session.commit()
        another = api.take_events()
    assert len(one_transaction) == 6 and len(_trace_ids(one_transaction)) == 1
    assert len(statement_first) == 2 and len(_trace_ids(statement_first)) == 1
    assert len(_trace_ids(another)) == 1
    assert len(_trace_ids(one_transaction + statement_first + another)) == 3

    token = request_trace.set(TraceContext(PARENT, "mine=1"))
    try:
        with Session(api.engine) as session:
            session.add(Task(user_id="bob", title="caller's trace"))
            session.commit()
    finally:
        request_trace.reset(token)
    events = api.take_events()
    assert {e["traceparent"] for e in events} == {PARENT}
    assert {e["tracestate"] for e in events} == {"mine=1"}


def test_a_single_publish_sends_the_event_s_traceparent_header(db_url: str) -> None:
    with (
        DaprEmulator() as sidecar,
        make_client(
            db_url,
            DAPR_ENABLED="true",
            DAPR_HTTP_PORT=str(sidecar.port),
            DAPR_BULK_PUBLISH="never",
        ) as api,
    ):
        _post(api, "header", traceparent=PARENT, tracestate="congo=t61rcWkgMzE")
        deadline = time.monotonic() + 10
        while len(sidecar.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        publishes = [c for c in sidecar.calls if c.method == "POST"]
        assert len(publishes) == 3
        for call in publishes:
            assert call.headers["traceparent"] == PARENT
            assert call.headers["tracestate"] == "congo=t61rcWkgMzE"
        # Dapr keeps our context (the event has `traceid`): consumers continue the trace.
        assert {d.event["traceparent"] for d in sidecar.received} == {PARENT}
    assert tracing.tracer() is None  # no OTEL_* variables: no spans, nothing configured
