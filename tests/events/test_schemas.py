"""The event contract (T-010): envelope attributes, data models, builders, JSON format."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from src.config import Settings
from src.events.schemas import (
    EVENT_TYPES,
    TOPIC_SETTING_FOR_TYPE,
    CloudEvent,
    EventSchemaError,
    ReminderEventData,
    SyncEventData,
    TaskEventData,
    build_reminder_event,
    build_sync_event,
    build_task_event,
    data_model_for,
    json_safe,
    task_snapshot,
    topic_for,
)

from tests.support.cloudevents_conformance import assert_conforms, validate_data

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def row(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": 7,
        "user_id": "alice",
        "title": "Buy milk",
        "description": None,
        "completed": False,
        "due_date": datetime(2025, 3, 2, 9, 0, tzinfo=UTC),
        "created_at": datetime(2025, 3, 1, 11, 0, tzinfo=UTC),
        "updated_at": T0,
    }
    values.update(overrides)
    return values


def every_event(correlation_id: str | None = "req-1") -> list[CloudEvent]:
    common: dict[str, Any] = {"source": "pakaura-api", "correlation_id": correlation_id}
    events = [
        build_task_event(action="created", task=row(), changes=None, **common),
        build_task_event(action="updated", task=row(), changes={"title": ("a", "b")}, **common),
        build_task_event(
            action="completed", task=row(completed=True), changes={"completed": (0, 1)}, **common
        ),
        build_task_event(
            action="uncompleted", task=row(), changes={"completed": (True, False)}, **common
        ),
        build_task_event(action="deleted", task=row(), changes={}, **common),
        build_sync_event(action="deleted", task_id=7, user_id="alice", **common),
        build_reminder_event(
            action="scheduled",
            task_id=7,
            user_id="alice",
            due_date=row()["due_date"],
            title="Buy milk",
            **common,
        ),
        build_reminder_event(
            action="cancelled",
            task_id=7,
            user_id="alice",
            due_date=row()["due_date"],
            title="Buy milk",
            **common,
        ),
    ]
    assert sorted(e.type for e in events) == sorted(EVENT_TYPES)
    return events


@pytest.mark.parametrize("event", every_event(), ids=lambda e: e.type)
def test_every_type_conforms_to_cloudevents_and_its_schema(event: CloudEvent) -> None:
    obj = assert_conforms(event.to_json())
    assert uuid.UUID(obj["id"]).version == 4
    assert obj["source"] == "pakaura-api"
    assert obj["subject"] == obj["partitionkey"] == "7"
    assert obj["correlationid"] == "req-1"
    assert obj["data"]["user_id"] == "alice"


def test_attribute_order_and_compact_json() -> None:
    event = every_event()[0]
    text = event.to_json()
    assert ", " not in text and ": " not in text
    assert list(json.loads(text)) == [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "data",
        "partitionkey",
        "correlationid",
    ]


def test_absent_correlation_id_is_left_out_not_null() -> None:
    for event in every_event(correlation_id=None):
        obj = json.loads(event.to_json())
        assert "correlationid" not in obj
        assert_conforms(obj)
    # An empty X-Request-ID is treated as absent too.
    event = build_sync_event(
        action="created", task_id=1, user_id="u", source="s", correlation_id=""
    )
    assert "correlationid" not in json.loads(event.to_json())


def test_task_event_data_exactly_as_in_the_contract() -> None:
    event = build_task_event(
        action="updated",
        task=row(title="new"),
        changes={"title": ("old", "new"), "due_date": (None, datetime(2025, 3, 2, 9, 0))},
        source="s",
        correlation_id=None,
        time=T0,
    )
    assert event.data == {
        "task_id": 7,
        "user_id": "alice",
        "action": "updated",
        "task": {
            "id": 7,
            "user_id": "alice",
            "title": "new",
            "description": None,
            "completed": False,
            "due_date": "2025-03-02T09:00:00Z",
            "created_at": "2025-03-01T11:00:00Z",
            "updated_at": "2025-03-01T12:00:00.123456Z",
        },
        "changes": {
            "title": {"old": "old", "new": "new"},
            "due_date": {"old": None, "new": "2025-03-02T09:00:00Z"},
        },
        "timestamp": "2025-03-01T12:00:00.123456Z",
    }
    assert json.loads(event.to_json())["time"] == "2025-03-01T12:00:00.123456Z"


def test_sync_event_is_lightweight() -> None:
    event = build_sync_event(
        action="completed", task_id=9, user_id="bob", source="s", correlation_id="c", time=T0
    )
    assert event.data == {
        "task_id": 9,
        "user_id": "bob",
        "action": "completed",
        "timestamp": "2025-03-01T12:00:00.123456Z",
    }
    assert "title" not in event.to_json()


def test_reminder_event_data() -> None:
    event = build_reminder_event(
        action="scheduled",
        task_id=9,
        user_id="bob",
        due_date=datetime(2025, 3, 5, tzinfo=UTC),
        title="Call",
        source="s",
        correlation_id=None,
        time=T0,
    )
    assert event.type == "reminder.scheduled"
    assert event.data == {
        "task_id": 9,
        "user_id": "bob",
        "action": "scheduled",
        "due_date": "2025-03-05T00:00:00Z",
        "title": "Call",
        "timestamp": "2025-03-01T12:00:00.123456Z",
    }


def test_datetimes_become_aware_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    snap = task_snapshot(
        row(
            created_at=datetime(2025, 1, 1, 14, 0, tzinfo=plus_two),
            updated_at=datetime(2025, 1, 1, 12, 0),
        )
    )
    assert snap.created_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert snap.created_at.tzinfo is UTC
    assert snap.updated_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    event = build_sync_event(
        action="created",
        task_id=1,
        user_id="u",
        source="s",
        correlation_id=None,
        time=datetime(2025, 1, 1, 14, 0, tzinfo=plus_two),
    )
    assert json.loads(event.to_json())["time"] == "2025-01-01T12:00:00Z"


def test_snapshot_ignores_extra_columns_and_names_missing_ones() -> None:
    assert task_snapshot({**row(), "secret_column": 1}).id == 7
    with pytest.raises(EventSchemaError) as err:
        task_snapshot({"id": 1, "title": "x"})
    message = str(err.value)
    assert "task.user_id" in message and "task.completed" in message


def test_retry_keeps_id_and_time() -> None:
    a = build_sync_event(
        action="created",
        task_id=1,
        user_id="u",
        source="s",
        correlation_id=None,
        time=T0,
        event_id="fixed-id",
    )
    b = build_sync_event(
        action="created",
        task_id=1,
        user_id="u",
        source="s",
        correlation_id=None,
        time=T0,
        event_id="fixed-id",
    )
    assert a.to_json() == b.to_json()
    fresh = {
        build_sync_event(
            action="created", task_id=1, user_id="u", source="s", correlation_id=None
        ).id
        for _ in range(50)
    }
    assert len(fresh) == 50


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (
            lambda: build_task_event(
                action="created",
                task=row(),
                changes={"title": ("a", "b")},
                source="s",
                correlation_id=None,
            ),
            "changes must be empty",
        ),
        (
            lambda: build_task_event(
                action="renamed",  # type: ignore[arg-type]
                task=row(),
                changes=None,
                source="s",
                correlation_id=None,
            ),
            "data.action",
        ),
        (
            lambda: build_reminder_event(
                action="scheduled",
                task_id=1,
                user_id="u",
                due_date=None,
                title="t",
                source="s",
                correlation_id=None,
            ),
            "due_date",
        ),
        (
            lambda: build_sync_event(
                action="created", task_id=1, user_id="", source="s", correlation_id=None
            ),
            "data.user_id",
        ),
        (
            lambda: build_sync_event(
                action="created",
                task_id="x",  # type: ignore[arg-type]
                user_id="u",
                source="s",
                correlation_id=None,
            ),
            "data.task_id",
        ),
    ],
)
def test_bad_input_is_a_clear_error(build: Any, fragment: str) -> None:
    with pytest.raises(EventSchemaError, match=fragment.replace(".", r"\.")):
        build()


def test_cancelled_reminder_may_lack_a_due_date() -> None:
    event = build_reminder_event(
        action="cancelled",
        task_id=1,
        user_id="u",
        due_date=None,
        title="t",
        source="s",
        correlation_id=None,
    )
    assert event.data is not None and event.data["due_date"] is None
    assert_conforms(event.to_json())


def test_extension_names_must_be_lowercase_alphanumeric() -> None:
    ok = CloudEvent(id="1", source="s", type="t", traceflags="01")
    assert json.loads(ok.to_json())["traceflags"] == "01"
    for bad in ("traceParent", "trace_id", "x" * 21):
        with pytest.raises(ValueError, match="lower-case letters"):
            CloudEvent(id="1", source="s", type="t", **{bad: "v"})
    with pytest.raises(ValueError, match="scalar"):
        CloudEvent(id="1", source="s", type="t", ext={"nested": 1})


def test_from_json_round_trip_and_typed_data() -> None:
    for event in every_event():
        parsed = CloudEvent.from_json(event.to_json())
        assert parsed == event
        assert parsed.to_json() == event.to_json()
        typed = parsed.typed_data()
        assert isinstance(typed, data_model_for(event.type))
    with pytest.raises(EventSchemaError, match=r"event\.id"):
        CloudEvent.from_json('{"specversion":"1.0","source":"s","type":"t"}')


def test_topics_follow_the_settings() -> None:
    custom = Settings(topic_task_events="te", topic_task_updates="tu", topic_reminders="rm")
    assert {t: topic_for(t, custom) for t in EVENT_TYPES} == {
        "task.created": "te",
        "task.updated": "te",
        "task.completed": "te",
        "task.uncompleted": "te",
        "task.deleted": "te",
        "task.sync": "tu",
        "reminder.scheduled": "rm",
        "reminder.cancelled": "rm",
    }
    assert set(TOPIC_SETTING_FOR_TYPE) == set(EVENT_TYPES)
    with pytest.raises(EventSchemaError, match=r"unknown event type 'task\.renamed'"):
        topic_for("task.renamed", custom)


def test_json_safe_values() -> None:
    from decimal import Decimal
    from enum import Enum

    class Color(Enum):
        RED = "red"

    assert json_safe(
        {"a": datetime(2025, 1, 1), "b": (1, Decimal("1.5")), "c": Color.RED, "d": {1: None}}
    ) == {"a": "2025-01-01T00:00:00Z", "b": [1, "1.5"], "c": "red", "d": {"1": None}}


def test_schema_rejects_what_the_contract_forbids() -> None:
    good = json.loads(every_event()[1].to_json())["data"]
    validate_data("task.updated", good)
    for broken in (
        {**good, "action": "renamed"},
        {**good, "timestamp": "yesterday"},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "changes"},
        {**good, "changes": {"title": {"old": "a"}}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validate_data("task.updated", broken)
    for model in (TaskEventData, SyncEventData, ReminderEventData):
        jsonschema.Draft202012Validator.check_schema(model.model_json_schema())


@settings(max_examples=40, deadline=None)
@given(
    title=st.text(max_size=200),
    description=st.one_of(st.none(), st.text(max_size=300)),
    user_id=st.text(min_size=1, max_size=40),
    task_id=st.integers(min_value=1, max_value=2**53),
    completed=st.booleans(),
)
def test_any_task_round_trips(
    title: str, description: str | None, user_id: str, task_id: int, completed: bool
) -> None:
    event = build_task_event(
        action="completed" if completed else "updated",
        task=row(
            id=task_id, user_id=user_id, title=title, description=description, completed=completed
        ),
        changes={"title": ("", title)},
        source="pakaura-api",
        correlation_id=None,
    )
    text = event.to_json()
    obj = assert_conforms(text)
    assert obj["data"]["task"]["title"] == title
    assert obj["data"]["task"]["description"] == description
    assert CloudEvent.from_json(text) == event
