"""The end-to-end verifier: what was committed against what the sidecar received.

Pure functions over two logs, so it can be fed synthetic data with known faults (its own unit
tests do exactly that):

- the mutation log: one `Mutation` per attempted write, with its outcome as the client saw it
  (committed, rejected, rolled back, or unknown: the connection died or the database went away
  before an answer) and the events a commit of it must produce;
- the received events: every CloudEvent the (emulated) sidecar accepted, in arrival order.

Events are tied to mutations by the CloudEvent `correlationid` (the request's `X-Request-ID`;
the ORM scripts set it themselves). The verdict:

- lost: an event a committed mutation must have produced and that never arrived (or, for an
  unknown outcome, part of its events: a change commits whole or not at all);
- phantom: an event of a rejected or rolled-back mutation, an event no mutation explains, or
  more events than the mutation produces;
- order violations: per topic and task, the first arrivals are not in commit order (the
  client's order of mutations on one task, then the derivation order within one mutation);
- duplicates: the same `source` + `id` received again (allowed: at-least-once); a duplicate
  whose content differs is a conflict, reported apart;
- final state: with the database's final rows, the last snapshot each task's events carry must
  equal the row (or the task must be deleted), which also catches a lost event of an unknown
  mutation.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "ExpectedEvent",
    "Mutation",
    "Outcome",
    "ReceivedEvent",
    "Verdict",
    "verify",
]

# Attributes the sidecar adds or rewrites per delivery; not part of our event.
_TRANSPORT_KEYS = frozenset({"topic", "pubsubname", "traceid", "traceparent", "tracestate"})
_SNAPSHOT_FIELDS = ("title", "description", "completed", "due_date")


class Outcome(StrEnum):
    COMMITTED = "committed"
    REJECTED = "rejected"  # refused before writing (4xx, tool error): must emit nothing
    ROLLED_BACK = "rolled_back"  # written, then rolled back on purpose: must emit nothing
    UNKNOWN = "unknown"  # no answer (crash, time-out, 503): all of its events or none


@dataclass(frozen=True, slots=True)
class ExpectedEvent:
    topic: str
    type: str
    # None when the client cannot know it (a create whose answer never came).
    task_id: int | None
    # `data.action` for task-updates and reminders events; None to not check it.
    action: str | None = None


@dataclass(frozen=True, slots=True)
class Mutation:
    op_id: str  # the correlation id its events carry
    user_id: str
    kind: str  # create, update, complete, ..., for the report
    via: str  # rest, mcp, orm
    outcome: Outcome
    # What a commit of it produces, in derivation order; empty for a no-op.
    expected: tuple[ExpectedEvent, ...]
    # Client order: mutations touching one task are issued one after the other, so a larger
    # seq on the same task means a later commit.
    seq: int
    status: int | None = None  # HTTP status, for the report

    def to_json(self) -> str:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return json.dumps(data)

    @staticmethod
    def from_json(line: str) -> Mutation:
        data = json.loads(line)
        expected = tuple(ExpectedEvent(**e) for e in data.pop("expected"))
        return Mutation(expected=expected, outcome=Outcome(data.pop("outcome")), **data)


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    topic: str
    event: Mapping[str, Any]


@dataclass
class Verdict:
    mutations: Counter[str] = field(default_factory=Counter)  # by outcome
    unknown_applied: int = 0
    expected_events: int = 0
    received: int = 0
    distinct: int = 0
    duplicates: int = 0
    lost: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    order_violations: list[str] = field(default_factory=list)
    conflicting_duplicates: list[str] = field(default_factory=list)
    final_state: list[str] = field(default_factory=list)
    by_topic: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.phantom
            or self.order_violations
            or self.conflicting_duplicates
            or self.final_state
        )

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "mutations": dict(self.mutations),
            "unknown_applied": self.unknown_applied,
            "expected_events": self.expected_events,
            "received": self.received,
            "distinct": self.distinct,
            "lost": len(self.lost),
            "phantom": len(self.phantom),
            "duplicates": self.duplicates,
            "order_violations": len(self.order_violations),
            "conflicting_duplicates": len(self.conflicting_duplicates),
            "final_state_mismatches": len(self.final_state),
            "by_topic": {t: dict(c) for t, c in sorted(self.by_topic.items())},
        }

    def problems(self, limit: int = 20) -> list[str]:
        out = []
        for name in (
            "lost",
            "phantom",
            "order_violations",
            "conflicting_duplicates",
            "final_state",
        ):
            items: list[str] = getattr(self, name)
            out += [f"{name}: {item}" for item in items[:limit]]
        return out


def _key(event: Mapping[str, Any]) -> tuple[str, str]:
    return (str(event.get("source")), str(event.get("id")))


def _content(event: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in event.items() if k not in _TRANSPORT_KEYS}, sort_keys=True)


def _task_id(event: Mapping[str, Any]) -> int | None:
    subject = event.get("subject")
    try:
        return int(str(subject))
    except ValueError:
        return None


def _action(event: Mapping[str, Any]) -> str | None:
    data = event.get("data")
    return data.get("action") if isinstance(data, Mapping) else None


def _describe(topic: str, event: Mapping[str, Any]) -> str:
    return (
        f"{topic} {event.get('type')} task {event.get('subject')} id {event.get('id')} "
        f"correlation {event.get('correlationid')}"
    )


def _matches(expected: ExpectedEvent, topic: str, event: Mapping[str, Any]) -> bool:
    if expected.topic != topic or expected.type != event.get("type"):
        return False
    if expected.task_id is not None and expected.task_id != _task_id(event):
        return False
    return expected.action is None or expected.action == _action(event)


def _same_time(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        left = datetime.fromisoformat(str(a).replace("Z", "+00:00"))
        right = datetime.fromisoformat(str(b).replace("Z", "+00:00"))
    except ValueError:
        return bool(a == b)
    return left == right


def verify(
    mutations: Iterable[Mutation],
    received: Sequence[ReceivedEvent],
    *,
    final_tasks: Mapping[int, Mapping[str, Any]] | None = None,
    task_events_topic: str = "task-events",
) -> Verdict:
    """Checks `received` against `mutations` (see the module docstring).

    `final_tasks`: the database's rows after the run (task id -> row with title, description,
    completed, due_date) for every task of the harness's users, or None to skip that check.
    """
    verdict = Verdict()
    mutations = list(mutations)
    by_op: dict[str, Mutation] = {}
    for mutation in mutations:
        if mutation.op_id in by_op:
            raise ValueError(f"duplicate op_id {mutation.op_id} in the mutation log")
        by_op[mutation.op_id] = mutation
        verdict.mutations[mutation.outcome.value] += 1

    # 1. De-duplicate on source + id, keeping first arrivals in order.
    first: dict[tuple[str, str], tuple[int, ReceivedEvent]] = {}
    for index, item in enumerate(received):
        topic_counts = verdict.by_topic.setdefault(item.topic, Counter())
        topic_counts["received"] += 1
        key = _key(item.event)
        if key in first:
            verdict.duplicates += 1
            topic_counts["duplicates"] += 1
            if _content(first[key][1].event) != _content(item.event):
                verdict.conflicting_duplicates.append(
                    f"{_describe(item.topic, item.event)}: same id, different content"
                )
            continue
        first[key] = (index, item)
    verdict.received = len(received)
    distinct = [item for _, item in sorted(first.values(), key=lambda pair: pair[0])]
    verdict.distinct = len(distinct)

    # 2. Attribute each distinct event to its mutation by correlation id.
    by_correlation: dict[str, list[tuple[int, ReceivedEvent]]] = defaultdict(list)
    for position, item in enumerate(distinct):
        correlation = item.event.get("correlationid")
        if not isinstance(correlation, str) or correlation not in by_op:
            verdict.phantom.append(f"{_describe(item.topic, item.event)}: no mutation explains it")
            verdict.by_topic[item.topic]["phantom"] += 1
            continue
        by_correlation[correlation].append((position, item))

    # Order key of each attributed event: (mutation seq, index in its expected list).
    order_key: dict[int, tuple[int, int]] = {}
    for mutation in mutations:
        observed = by_correlation.get(mutation.op_id, [])
        if mutation.outcome in (Outcome.REJECTED, Outcome.ROLLED_BACK):
            for _, item in observed:
                verdict.phantom.append(
                    f"{_describe(item.topic, item.event)}: from a {mutation.outcome.value} "
                    f"{mutation.kind} ({mutation.via})"
                )
                verdict.by_topic[item.topic]["phantom"] += 1
            continue
        if mutation.outcome is Outcome.UNKNOWN and not observed:
            continue  # it did not commit: nothing expected
        if mutation.outcome is Outcome.UNKNOWN:
            verdict.unknown_applied += 1
        # A create whose answer was lost has no task id; its events fix it.
        ids = {_task_id(item.event) for _, item in observed}
        unmatched = list(observed)
        for index, expected in enumerate(mutation.expected):
            verdict.expected_events += 1
            hit = next(
                (pair for pair in unmatched if _matches(expected, pair[1].topic, pair[1].event)),
                None,
            )
            if hit is None or (expected.task_id is None and len(ids) > 1):
                verdict.lost.append(
                    f"{expected.topic} {expected.type} task {expected.task_id} of "
                    f"{mutation.outcome.value} {mutation.kind} {mutation.op_id} ({mutation.via})"
                )
                verdict.by_topic.setdefault(expected.topic, Counter())["lost"] += 1
                continue
            unmatched.remove(hit)
            order_key[hit[0]] = (mutation.seq, index)
        for _, item in unmatched:
            verdict.phantom.append(
                f"{_describe(item.topic, item.event)}: more than {mutation.kind} "
                f"{mutation.op_id} produces"
            )
            verdict.by_topic[item.topic]["phantom"] += 1

    # 3. Per topic and task, first arrivals must follow commit order.
    last_seen: dict[tuple[str, int | None], tuple[tuple[int, int], Mapping[str, Any]]] = {}
    for position, item in enumerate(distinct):
        if position not in order_key:
            continue
        stream = (item.topic, _task_id(item.event))
        rank = order_key[position]
        previous = last_seen.get(stream)
        if previous is not None and rank < previous[0]:
            verdict.order_violations.append(
                f"{_describe(item.topic, item.event)} arrived after "
                f"{previous[1].get('type')} {previous[1].get('id')}, which was committed later"
            )
            verdict.by_topic[item.topic]["order_violations"] += 1
        if previous is None or rank > previous[0]:
            last_seen[stream] = (rank, item.event)

    # 4. The final rows against the last snapshot each task's lifecycle events carry.
    if final_tasks is not None:
        _check_final_state(verdict, distinct, order_key, final_tasks, task_events_topic)
    return verdict


def _check_final_state(
    verdict: Verdict,
    distinct: list[ReceivedEvent],
    order_key: Mapping[int, tuple[int, int]],
    final_tasks: Mapping[int, Mapping[str, Any]],
    topic: str,
) -> None:
    last: dict[int, tuple[tuple[int, int], Mapping[str, Any]]] = {}
    for position, item in enumerate(distinct):
        task_id = _task_id(item.event)
        if item.topic != topic or position not in order_key or task_id is None:
            continue
        if task_id not in last or order_key[position] > last[task_id][0]:
            last[task_id] = (order_key[position], item.event)
    for task_id, row in final_tasks.items():
        if task_id not in last:
            verdict.final_state.append(f"task {task_id} is in the database but has no event")
            continue
        event = last[task_id][1]
        if event.get("type") == "task.deleted":
            verdict.final_state.append(f"task {task_id} is in the database, its events say deleted")
            continue
        snapshot = (event.get("data") or {}).get("task") or {}
        for name in _SNAPSHOT_FIELDS:
            want, got = row.get(name), snapshot.get(name)
            same = _same_time(want, got) if name == "due_date" else want == got
            if not same:
                verdict.final_state.append(
                    f"task {task_id}: {name} is {want!r} in the database, {got!r} in its last "
                    f"event ({event.get('type')} {event.get('id')})"
                )
    for task_id, (_, event) in last.items():
        if task_id not in final_tasks and event.get("type") != "task.deleted":
            verdict.final_state.append(
                f"task {task_id} is gone from the database, its last event is {event.get('type')}"
            )
