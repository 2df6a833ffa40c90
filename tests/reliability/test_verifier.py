"""The verifier must fail: synthetic logs with known loss, phantoms, disorder and duplicates.

`_emit` plays a perfect publisher for a mutation log; each test then breaks the delivery in one
known way and checks the verdict names exactly that.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import pytest

from bench.reliability._verifier import (
    ExpectedEvent,
    Mutation,
    Outcome,
    ReceivedEvent,
    verify,
)

_seq = itertools.count()


def lifecycle(
    task_id: int | None, action: str, *, reminder: str | None = None
) -> tuple[ExpectedEvent, ...]:
    events = [
        ExpectedEvent("task-events", f"task.{action}", task_id),
        ExpectedEvent("task-updates", "task.sync", task_id, action),
    ]
    if reminder:
        events.append(ExpectedEvent("reminders", f"reminder.{reminder}", task_id, reminder))
    return tuple(events)


def mutation(
    kind: str,
    expected: tuple[ExpectedEvent, ...],
    outcome: Outcome = Outcome.COMMITTED,
) -> Mutation:
    return Mutation(
        op_id=f"op-{uuid.uuid4().hex[:8]}",
        user_id="u",
        kind=kind,
        via="rest",
        outcome=outcome,
        expected=expected,
        seq=next(_seq),
    )


def _emit(m: Mutation, task_id: int | None = None, title: str = "t") -> list[ReceivedEvent]:
    out = []
    for e in m.expected:
        subject = e.task_id if e.task_id is not None else task_id
        data: dict[str, Any] = {"task_id": subject, "action": e.action or e.type.split(".")[1]}
        if e.topic == "task-events":
            data["task"] = {
                "title": title,
                "description": None,
                "completed": e.type == "task.completed",
                "due_date": None,
            }
        out.append(
            ReceivedEvent(
                e.topic,
                {
                    "specversion": "1.0",
                    "id": str(uuid.uuid4()),
                    "source": "pakaura-api",
                    "type": e.type,
                    "subject": str(subject),
                    "correlationid": m.op_id,
                    "data": data,
                    "traceid": uuid.uuid4().hex,  # the sidecar's: differs per delivery
                },
            )
        )
    return out


@pytest.fixture
def history() -> tuple[list[Mutation], list[ReceivedEvent]]:
    """Task 1 created, updated, completed; task 2 created with a due date, deleted; a rejected
    create and a rolled-back update that emitted nothing."""
    ms = [
        mutation("create", lifecycle(1, "created")),
        mutation("create", lifecycle(2, "created", reminder="scheduled")),
        mutation("update", lifecycle(1, "updated")),
        mutation("create", lifecycle(None, "created"), Outcome.REJECTED),
        mutation("complete", lifecycle(1, "completed")),
        mutation("update", lifecycle(2, "updated"), Outcome.ROLLED_BACK),
        mutation("delete", lifecycle(2, "deleted", reminder="cancelled")),
    ]
    events: list[ReceivedEvent] = []
    for m in ms:
        if m.outcome is Outcome.COMMITTED:
            events += _emit(m)
    return ms, events


def test_a_perfect_delivery_passes(history: tuple[list[Mutation], list[ReceivedEvent]]) -> None:
    ms, events = history
    verdict = verify(ms, events)
    assert verdict.ok, verdict.problems()
    assert verdict.expected_events == len(events) == verdict.distinct == 12
    assert verdict.mutations == {"committed": 5, "rejected": 1, "rolled_back": 1}
    assert verdict.duplicates == 0


def test_a_lost_event_is_reported(history: tuple[list[Mutation], list[ReceivedEvent]]) -> None:
    ms, events = history
    dropped = events.pop(6)  # the update's sync event
    verdict = verify(ms, events)
    assert not verdict.ok
    assert len(verdict.lost) == 1 and "task.sync task 1" in verdict.lost[0]
    assert dropped.event["correlationid"] in verdict.lost[0]
    assert verdict.phantom == [] and verdict.order_violations == []


def test_events_of_rejected_or_rolled_back_writes_are_phantoms(
    history: tuple[list[Mutation], list[ReceivedEvent]],
) -> None:
    ms, events = history
    rejected = next(m for m in ms if m.outcome is Outcome.REJECTED)
    rolled_back = next(m for m in ms if m.outcome is Outcome.ROLLED_BACK)
    verdict = verify(ms, events + _emit(rejected, task_id=9) + _emit(rolled_back)[:1])
    assert len(verdict.phantom) == 3
    assert sum("from a rejected create" in p for p in verdict.phantom) == 2
    assert sum("from a rolled_back update" in p for p in verdict.phantom) == 1
    assert verdict.lost == []


def test_an_event_nobody_explains_and_an_extra_event_are_phantoms(
    history: tuple[list[Mutation], list[ReceivedEvent]],
) -> None:
    ms, events = history
    stranger = mutation("update", lifecycle(1, "updated"))  # not in the log
    extra = _emit(ms[0])[0]  # a second task.created for the first create, new id
    verdict = verify(ms, [*events, *_emit(stranger)[:1], extra])
    assert len(verdict.phantom) == 2
    assert any("no mutation explains it" in p for p in verdict.phantom)
    assert any("more than create" in p for p in verdict.phantom)


def test_swapped_events_of_one_task_are_an_order_violation(
    history: tuple[list[Mutation], list[ReceivedEvent]],
) -> None:
    ms, events = history
    # task 1 on task-events: created, updated, completed: deliver completed before updated.
    updated = next(i for i, e in enumerate(events) if e.event["type"] == "task.updated")
    completed = next(i for i, e in enumerate(events) if e.event["type"] == "task.completed")
    events[updated], events[completed] = events[completed], events[updated]
    verdict = verify(ms, events)
    assert len(verdict.order_violations) == 1
    assert "task.updated" in verdict.order_violations[0]
    assert verdict.lost == [] and verdict.phantom == []


def test_interleaving_of_different_tasks_or_topics_is_no_violation(
    history: tuple[list[Mutation], list[ReceivedEvent]],
) -> None:
    ms, events = history
    # All task-updates events first, then reminders, then task-events: each stream stays ordered.
    by_topic = sorted(events, key=lambda e: {"task-updates": 0, "reminders": 1}.get(e.topic, 2))
    assert verify(ms, by_topic).ok
    # Task 2's events before task 1's.
    by_task = sorted(events, key=lambda e: -int(e.event["subject"]))
    assert verify(ms, by_task).ok


def test_duplicates_are_counted_not_failed_even_late(
    history: tuple[list[Mutation], list[ReceivedEvent]],
) -> None:
    ms, events = history
    # At-least-once: the first event arrives again at the very end, after newer ones.
    redelivered = ReceivedEvent(events[0].topic, {**events[0].event, "traceid": "other"})
    verdict = verify(ms, [*events, redelivered, events[3]])
    assert verdict.ok, verdict.problems()
    assert verdict.duplicates == 2
    assert verdict.received == 14 and verdict.distinct == 12


def test_a_duplicate_with_other_content_is_a_conflict(
    history: tuple[list[Mutation], list[ReceivedEvent]],
) -> None:
    ms, events = history
    changed = ReceivedEvent(events[0].topic, {**events[0].event, "data": {"task_id": 1}})
    verdict = verify(ms, [*events, changed])
    assert not verdict.ok
    assert len(verdict.conflicting_duplicates) == 1


def test_unknown_outcomes_need_all_events_or_none() -> None:
    created = mutation("create", lifecycle(5, "created"))
    not_applied = mutation("update", lifecycle(5, "updated"), Outcome.UNKNOWN)
    applied = mutation("complete", lifecycle(5, "completed", reminder="cancelled"), Outcome.UNKNOWN)
    half = mutation("delete", lifecycle(5, "deleted"), Outcome.UNKNOWN)
    ms = [created, not_applied, applied, half]
    events = _emit(created) + _emit(applied) + _emit(half)[:1]
    verdict = verify(ms, events)
    assert verdict.unknown_applied == 2
    assert len(verdict.lost) == 1 and "task.sync task 5 of unknown delete" in verdict.lost[0]
    assert verdict.phantom == []


def test_a_create_without_answer_is_matched_by_its_correlation_id() -> None:
    created = mutation("create", lifecycle(None, "created"), Outcome.UNKNOWN)
    verdict = verify([created], _emit(created, task_id=42))
    assert verdict.ok, verdict.problems()
    assert verdict.unknown_applied == 1
    # Its events must agree on one task: two tasks for one create is not that create.
    mixed = _emit(created, task_id=42)
    mixed[1] = _emit(created, task_id=43)[1]
    assert not verify([created], mixed).ok


def test_final_state_is_checked_against_the_last_snapshot() -> None:
    created = mutation("create", lifecycle(7, "created"))
    events = _emit(created, title="first")
    row = {"title": "first", "description": None, "completed": False, "due_date": None}
    assert verify([created], events, final_tasks={7: row}).ok
    # An update committed in the database whose event was lost (its client saw no answer).
    changed = verify([created], events, final_tasks={7: {**row, "title": "second"}})
    assert len(changed.final_state) == 1 and "title" in changed.final_state[0]
    # A task deleted in the database whose delete event never came.
    assert len(verify([created], events, final_tasks={}).final_state) == 1
    # A task in the database without any event.
    assert len(verify([], [], final_tasks={8: row}).final_state) == 1


def test_due_dates_compare_as_instants() -> None:
    created = mutation("create", lifecycle(3, "created"))
    events = _emit(created)
    events[0].event["data"]["task"]["due_date"] = "2031-01-01T10:00:00Z"
    row = {
        "title": "t",
        "description": None,
        "completed": False,
        "due_date": "2031-01-01T11:00:00+01:00",
    }
    assert verify([created], events, final_tasks={3: row}).ok


def test_mutations_round_trip_through_json_lines() -> None:
    m = mutation("delete", lifecycle(4, "deleted", reminder="cancelled"), Outcome.UNKNOWN)
    assert Mutation.from_json(m.to_json()) == m


def test_a_duplicate_op_id_in_the_log_is_refused() -> None:
    m = mutation("create", lifecycle(1, "created"))
    with pytest.raises(ValueError, match="duplicate op_id"):
        verify([m, m], [])
