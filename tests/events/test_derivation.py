"""The Task rules (contract §2) as a pure function: row change in, CloudEvents out."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from src.config import Settings
from src.events.derivation import derive_task_events
from src.events.schemas import (
    EventSchemaError,
    build_reminder_event,
    build_sync_event,
    build_task_event,
)

from hooks import Message, RowChange
from tests.support.cloudevents_conformance import assert_conforms

NOW = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
TOMORROW = NOW + timedelta(days=1)
YESTERDAY = NOW - timedelta(days=1)
CREATED = datetime(2026, 2, 1, 8, 30, tzinfo=UTC)
SETTINGS = Settings()


def task(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": 7,
        "user_id": "alice",
        "title": "Write report",
        "description": None,
        "completed": False,
        "due_date": None,
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    row.update(values)
    return row


def inserted(**values: Any) -> RowChange:
    return RowChange("insert", "task", (7,), {}, task(**values))


def deleted(**values: Any) -> RowChange:
    return RowChange("delete", "task", (7,), task(**values), {})


def updated(old: dict[str, Any], new: dict[str, Any]) -> RowChange:
    before, after = task(**old), task(**old, **{"updated_at": NOW})
    after.update(new)
    changed = frozenset(k for k in after if k != "updated_at" and after[k] != before[k])
    return RowChange("update", "task", (7,), before, after, changed)


def derive(change: RowChange, **kw: Any) -> list[Message]:
    counter = itertools.count(1)
    kw.setdefault("correlation_id", "req-1")
    return derive_task_events(
        change, kw.pop("settings", SETTINGS), time=NOW, new_id=lambda: f"id-{next(counter)}", **kw
    )


def events(change: RowChange, **kw: Any) -> list[dict[str, Any]]:
    out = []
    for message in derive(change, **kw):
        event = assert_conforms(message.body)
        assert (message.id, message.key) == (event["id"], event["subject"])
        out.append({**event, "_topic": message.topic})
    return out


def kinds(change: RowChange) -> list[tuple[str, str]]:
    return [(event["_topic"], event["type"]) for event in events(change)]


LIFECYCLE, SYNC, REMINDERS = "task-events", "task-updates", "reminders"


# -- which events -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(inserted(), [(LIFECYCLE, "task.created"), (SYNC, "task.sync")], id="insert"),
        pytest.param(
            inserted(due_date=TOMORROW),
            [(LIFECYCLE, "task.created"), (SYNC, "task.sync"), (REMINDERS, "reminder.scheduled")],
            id="insert-with-due-date",
        ),
        pytest.param(
            inserted(due_date=TOMORROW, completed=True),
            [(LIFECYCLE, "task.created"), (SYNC, "task.sync")],
            id="insert-completed-with-due-date",
        ),
        pytest.param(
            updated({}, {"title": "New"}),
            [(LIFECYCLE, "task.updated"), (SYNC, "task.sync")],
            id="update-title",
        ),
        pytest.param(
            updated({}, {"completed": True}),
            [(LIFECYCLE, "task.completed"), (SYNC, "task.sync")],
            id="complete",
        ),
        pytest.param(
            updated({"due_date": TOMORROW}, {"completed": True}),
            [(LIFECYCLE, "task.completed"), (SYNC, "task.sync"), (REMINDERS, "reminder.cancelled")],
            id="complete-with-due-date",
        ),
        pytest.param(
            updated({"completed": True, "due_date": TOMORROW}, {"completed": False}),
            [
                (LIFECYCLE, "task.uncompleted"),
                (SYNC, "task.sync"),
                (REMINDERS, "reminder.scheduled"),
            ],
            id="uncomplete-with-future-due-date",
        ),
        pytest.param(
            updated({"completed": True, "due_date": YESTERDAY}, {"completed": False}),
            [(LIFECYCLE, "task.uncompleted"), (SYNC, "task.sync")],
            id="uncomplete-with-past-due-date",
        ),
        pytest.param(
            updated({}, {"due_date": TOMORROW}),
            [(LIFECYCLE, "task.updated"), (SYNC, "task.sync"), (REMINDERS, "reminder.scheduled")],
            id="due-date-set",
        ),
        pytest.param(
            updated({"due_date": TOMORROW}, {"due_date": TOMORROW + timedelta(hours=2)}),
            [(LIFECYCLE, "task.updated"), (SYNC, "task.sync"), (REMINDERS, "reminder.scheduled")],
            id="due-date-moved",
        ),
        pytest.param(
            updated({"due_date": TOMORROW}, {"due_date": None}),
            [(LIFECYCLE, "task.updated"), (SYNC, "task.sync"), (REMINDERS, "reminder.cancelled")],
            id="due-date-cleared",
        ),
        pytest.param(
            updated({"completed": True, "due_date": TOMORROW}, {"due_date": None}),
            [(LIFECYCLE, "task.updated"), (SYNC, "task.sync")],
            id="due-date-cleared-on-completed-task",
        ),
        pytest.param(
            updated({"due_date": TOMORROW}, {"title": "Renamed"}),
            [(LIFECYCLE, "task.updated"), (SYNC, "task.sync")],
            id="other-change-keeps-reminder",
        ),
        pytest.param(deleted(), [(LIFECYCLE, "task.deleted"), (SYNC, "task.sync")], id="delete"),
        pytest.param(
            deleted(due_date=TOMORROW),
            [(LIFECYCLE, "task.deleted"), (SYNC, "task.sync"), (REMINDERS, "reminder.cancelled")],
            id="delete-with-open-due-date",
        ),
        pytest.param(
            deleted(due_date=TOMORROW, completed=True),
            [(LIFECYCLE, "task.deleted"), (SYNC, "task.sync")],
            id="delete-completed-with-due-date",
        ),
    ],
)
def test_event_types_topics_and_order(change: RowChange, expected: list[tuple[str, str]]) -> None:
    assert kinds(change) == expected


def test_no_change_no_event() -> None:
    same = task()
    assert derive(RowChange("update", "task", (7,), same, dict(same), frozenset())) == []
    # The capture leaves updated_at out of `changed`: an update of only it is a no-op.
    bumped = RowChange("update", "task", (7,), same, {**same, "updated_at": NOW}, frozenset())
    assert derive(bumped) == []


# -- what the events say ------------------------------------------------------------------------


def test_created_event_content() -> None:
    lifecycle, sync, reminder = events(inserted(due_date=TOMORROW, description="details"))
    assert lifecycle["source"] == "pakaura-api"
    assert lifecycle["subject"] == lifecycle["partitionkey"] == "7"
    assert lifecycle["time"] == "2026-03-01T12:00:00.250000Z"
    assert lifecycle["correlationid"] == "req-1"
    assert lifecycle["data"] == {
        "task_id": 7,
        "user_id": "alice",
        "action": "created",
        "task": {
            "id": 7,
            "user_id": "alice",
            "title": "Write report",
            "description": "details",
            "completed": False,
            "due_date": "2026-03-02T12:00:00.250000Z",
            "created_at": "2026-02-01T08:30:00Z",
            "updated_at": "2026-02-01T08:30:00Z",
        },
        "changes": {},
        "timestamp": "2026-03-01T12:00:00.250000Z",
    }
    assert sync["data"] == {
        "task_id": 7,
        "user_id": "alice",
        "action": "created",
        "timestamp": "2026-03-01T12:00:00.250000Z",
    }
    assert reminder["data"] == {
        "task_id": 7,
        "user_id": "alice",
        "action": "scheduled",
        "due_date": "2026-03-02T12:00:00.250000Z",
        "title": "Write report",
        "timestamp": "2026-03-01T12:00:00.250000Z",
    }
    assert len({lifecycle["id"], sync["id"], reminder["id"]}) == 3


def test_changes_list_every_changed_field_and_only_those() -> None:
    change = updated({}, {"completed": True, "title": "Done it", "due_date": TOMORROW})
    lifecycle, sync = events(change)  # completed: no reminder to schedule or cancel
    assert lifecycle["type"] == "task.completed"
    assert lifecycle["data"]["changes"] == {
        "title": {"old": "Write report", "new": "Done it"},
        "completed": {"old": False, "new": True},
        "due_date": {"old": None, "new": "2026-03-02T12:00:00.250000Z"},
    }
    assert lifecycle["data"]["task"]["title"] == "Done it"  # snapshot after the change
    assert lifecycle["data"]["task"]["updated_at"] == "2026-03-01T12:00:00.250000Z"
    assert sync["data"]["action"] == "completed"


def test_reminder_due_dates() -> None:
    *_, cancelled = events(updated({"due_date": TOMORROW}, {"completed": True}))
    assert cancelled["data"]["action"] == "cancelled"
    assert cancelled["data"]["due_date"] == "2026-03-02T12:00:00.250000Z"  # the one cancelled
    *_, cleared = events(updated({"due_date": TOMORROW}, {"due_date": None}))
    assert cleared["data"]["due_date"] == "2026-03-02T12:00:00.250000Z"
    moved_to = TOMORROW + timedelta(days=3)
    *_, moved = events(updated({"due_date": TOMORROW}, {"due_date": moved_to, "title": "T2"}))
    assert (moved["data"]["due_date"], moved["data"]["title"]) == (
        "2026-03-05T12:00:00.250000Z",
        "T2",
    )
    *_, gone = events(deleted(due_date=TOMORROW, title="Last title"))
    assert (gone["data"]["action"], gone["data"]["title"]) == ("cancelled", "Last title")


def test_deleted_event_carries_the_last_snapshot() -> None:
    lifecycle, sync = events(deleted(title="Gone", completed=True))
    assert lifecycle["data"]["task"]["title"] == "Gone"
    assert lifecycle["data"]["changes"] == {}
    assert sync["data"]["action"] == "deleted"


def test_settings_correlation_id_and_ids() -> None:
    custom = Settings(
        events_source="svc-x",
        topic_task_events="te",
        topic_task_updates="tu",
        topic_reminders="tr",
    )
    messages = derive(inserted(due_date=TOMORROW), settings=custom, correlation_id=None)
    assert [m.topic for m in messages] == ["te", "tu", "tr"]
    for message in messages:
        event = json.loads(message.body)
        assert event["source"] == "svc-x"
        assert "correlationid" not in event  # absent, not null
    default_ids = derive_task_events(inserted(), SETTINGS, time=NOW)
    assert len({m.id for m in default_ids}) == 2 and all(len(m.id) == 36 for m in default_ids)


def test_default_event_ids_are_random_rfc4122_version_4_uuids() -> None:
    ids = [m.id for _ in range(500) for m in derive_task_events(inserted(), SETTINGS, time=NOW)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical lower-case form
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # The variant's two free bits are random too (all four variant digits occur).
    assert {text[19] for text in ids} == set("89ab")


def test_event_time_is_given_time_in_utc() -> None:
    local = NOW.astimezone(timezone(timedelta(hours=5, minutes=30)))
    (lifecycle, _) = derive_task_events(inserted(), SETTINGS, time=local)
    assert json.loads(lifecycle.body)["time"] == "2026-03-01T12:00:00.250000Z"


def test_bad_rows_are_refused_with_the_field_named() -> None:
    with pytest.raises(EventSchemaError, match="user_id"):
        derive(inserted(user_id=""))
    with pytest.raises(EventSchemaError, match=r"task\.id"):
        derive(RowChange("insert", "task", (None,), {}, task(id=None)))


# -- identical to the schema builders -------------------------------------------------------------


def _reference(change: RowChange, messages: list[Message], correlation_id: str | None) -> list[str]:
    """What the pydantic builders produce for the same events (same ids and time)."""
    out = []
    row = change.old if change.kind == "delete" else change.new
    for message in messages:
        event = json.loads(message.body)
        kind, _, action = event["type"].partition(".")
        common: dict[str, Any] = {
            "source": event["source"],
            "correlation_id": correlation_id,
            "time": NOW,
            "event_id": message.id,
        }
        if event["type"] == "task.sync":
            built = build_sync_event(
                action=event["data"]["action"], task_id=row["id"], user_id=row["user_id"], **common
            )
        elif kind == "task":
            # Column order, as the derivation lists them (JSON object order).
            changes = {
                name: (change.old[name], change.new[name])
                for name in change.new
                if name in change.changed
            }
            built = build_task_event(action=action, task=row, changes=changes or None, **common)
        else:
            due = change.old["due_date"] if action == "cancelled" else row["due_date"]
            built = build_reminder_event(
                action=action,
                task_id=row["id"],
                user_id=row["user_id"],
                due_date=due,
                title=row["title"],
                **common,
            )
        out.append(built.to_json())
    return out


aware = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2090, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=9, minutes=30))]
    ),
)
rows = st.fixed_dictionaries(
    {
        "id": st.integers(min_value=1, max_value=2**53),
        "user_id": st.text(min_size=1, max_size=20),
        "title": st.text(min_size=1, max_size=40),
        "description": st.none() | st.text(max_size=40),
        "completed": st.booleans(),
        "due_date": st.none() | aware,
        "created_at": aware,
        "updated_at": aware,
    }
)
EDITABLE = ["title", "description", "completed", "due_date"]


def _fits(name: str, value: Any) -> bool:
    if name == "completed":
        return isinstance(value, bool)
    if name == "due_date":
        return value is None or isinstance(value, datetime)
    return isinstance(value, str) and bool(value)


@settings(max_examples=150, deadline=None)
@given(
    old=rows,
    edits=st.dictionaries(
        st.sampled_from(EDITABLE),
        st.one_of(st.text(max_size=10), st.booleans(), st.none(), aware),
        max_size=4,
    ),
    kind=st.sampled_from(["insert", "update", "delete"]),
    correlation_id=st.none() | st.text(min_size=1, max_size=12),
)
def test_json_is_identical_to_the_schema_builders(
    old: dict[str, Any], edits: dict[str, Any], kind: str, correlation_id: str | None
) -> None:
    new = dict(old)
    for name, value in edits.items():
        if _fits(name, value):  # keep each field's type
            new[name] = value
    if kind == "insert":
        change = RowChange("insert", "task", (new["id"],), {}, new)
    elif kind == "delete":
        change = RowChange("delete", "task", (old["id"],), old, {})
    else:
        changed = frozenset(k for k in EDITABLE if new[k] != old[k])
        change = RowChange("update", "task", (old["id"],), old, new, changed)
    messages = derive(change, correlation_id=correlation_id)
    assert [m.body for m in messages] == _reference(change, messages, correlation_id)
