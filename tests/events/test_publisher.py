"""EventPublisher against the emulated sidecar over real loopback HTTP (T-011, T-015, T-016)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from src.config import Settings, get_settings
from src.events import (
    CloudEvent,
    EventPublisher,
    Outcome,
    SendResult,
    get_event_publisher,
    reset_event_publisher,
)
from src.events.schemas import build_sync_event
from src.events.transport import DaprTransport
from src.request_context import correlation_id

from hooks import Message
from tests.support.dapr_emulator import DaprEmulator

T = TypeVar("T")
MakePublisher = Callable[..., EventPublisher]
DUE = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
LOG_FIELDS = (
    "event_type",
    "topic",
    "task_id",
    "user_id",
    "correlation_id",
    "event_id",
    "dapr_status",
    "outcome",
)


def run(p: EventPublisher, factory: Callable[[], Awaitable[T]]) -> T:
    """`factory()` in a fresh event loop; then closes `p`'s session of that loop."""

    async def main() -> T:
        try:
            return await factory()
        finally:
            await p.aclose()

    return asyncio.run(main())


def task(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": 11,
        "user_id": "alice",
        "title": "Plan trip",
        "description": "Book flights",
        "completed": False,
        "due_date": DUE,
        "created_at": datetime(2025, 5, 1, tzinfo=UTC),
        "updated_at": datetime(2025, 5, 2, tzinfo=UTC),
    }
    values.update(overrides)
    return values


async def publish_one_of_each(p: EventPublisher) -> list[SendResult]:
    return [
        await p.publish_task_event("created", task(), correlation_id="req-42"),
        await p.publish_task_event(
            "updated",
            task(title="Plan the trip"),
            changes={"title": ("Plan trip", "Plan the trip")},
        ),
        await p.publish_task_event(
            "completed", task(completed=True), changes={"completed": {"old": False, "new": True}}
        ),
        await p.publish_task_event_from_dict(
            "uncompleted", task(), changes={"completed": (True, False)}
        ),
        await p.publish_task_event("deleted", task()),
        await p.publish_sync_event("deleted", 11, "alice"),
        await p.publish_reminder_event("scheduled", 11, "alice", DUE, "Plan trip"),
        await p.publish_reminder_event("cancelled", 11, "alice", DUE, "Plan trip"),
    ]


def with_outcome(records: list[dict[str, Any]], outcome: str) -> list[dict[str, Any]]:
    return [r for r in records if r["extra"].get("outcome") == outcome]


def levels(records: list[dict[str, Any]], outcome: str) -> list[str]:
    return [r["level"] for r in with_outcome(records, outcome)]


# --- what arrives ------------------------------------------------------------------------------


def test_every_event_type_lands_with_topic_type_subject_key_and_data(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()
    results = run(p, lambda: publish_one_of_each(p))
    assert [r.outcome for r in results] == [Outcome.OK] * 8
    assert all(r.ok and r.error is None for r in results)
    assert {r.status for r in results} == {204}

    got = dapr.received
    assert [(d.topic, d.event["type"]) for d in got] == [
        ("task-events", "task.created"),
        ("task-events", "task.updated"),
        ("task-events", "task.completed"),
        ("task-events", "task.uncompleted"),
        ("task-events", "task.deleted"),
        ("task-updates", "task.sync"),
        ("reminders", "reminder.scheduled"),
        ("reminders", "reminder.cancelled"),
    ]
    assert len({d.event["id"] for d in got}) == 8  # a fresh id per event
    for delivery in got:
        assert delivery.pubsub == "pubsub-kafka"
        assert delivery.bulk is False  # one event: a single publish
        assert delivery.content_type == "application/cloudevents+json"
        assert delivery.metadata == {"partitionKey": "11"}
        event = delivery.event
        # Dapr kept our envelope: id, source, subject and the extensions survive.
        assert event["source"] == "pakaura-api"
        assert event["subject"] == event["partitionkey"] == "11"
        assert event["data"]["task_id"] == 11 and event["data"]["user_id"] == "alice"
    assert [c.path for c in dapr.calls] == [f"/v1.0/publish/pubsub-kafka/{d.topic}" for d in got]
    assert got[0].event["correlationid"] == "req-42"
    assert got[1].event["data"]["changes"] == {
        "title": {"old": "Plan trip", "new": "Plan the trip"}
    }
    assert got[2].event["data"]["changes"] == {"completed": {"old": False, "new": True}}
    assert got[3].event["data"]["changes"] == {"completed": {"old": True, "new": False}}
    assert got[5].event["data"] == {
        "task_id": 11,
        "user_id": "alice",
        "action": "deleted",
        "timestamp": got[5].event["time"],
    }
    assert got[6].event["data"]["due_date"] == "2025-06-01T08:00:00Z"


def test_settings_choose_pubsub_topics_source_and_token(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.pubsubs = {"events"}
    dapr.require_token("s3cret-token")
    p = publisher_for(
        dapr_pubsub_name="events",
        topic_task_events="te",
        topic_task_updates="tu",
        topic_reminders="rm",
        events_source="pakaura-test",
        dapr_api_token="s3cret-token",
    )
    results = run(p, lambda: publish_one_of_each(p))
    assert all(r.ok for r in results), results
    assert [d.topic for d in dapr.received] == ["te"] * 5 + ["tu"] + ["rm"] * 2
    assert {d.pubsub for d in dapr.received} == {"events"}
    assert {d.event["source"] for d in dapr.received} == {"pakaura-test"}
    assert {c.headers.get("dapr-api-token") for c in dapr.calls} == {"s3cret-token"}


def test_an_orm_like_object_is_accepted(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    p = publisher_for()
    result = run(p, lambda: p.publish_task_event("created", SimpleNamespace(**task(), extra=1)))
    assert result.ok
    data = dapr.received[0].event["data"]
    assert data["task"]["title"] == "Plan trip"
    assert "extra" not in data["task"]


def test_correlation_id_comes_from_the_request_context(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()

    async def go() -> None:
        token = correlation_id.set("from-middleware")
        try:
            await p.publish_sync_event("created", 11, "alice")
            await p.publish_sync_event("created", 11, "alice", correlation_id="explicit")
        finally:
            correlation_id.reset(token)
        await p.publish_sync_event("created", 11, "alice")

    run(p, go)
    first, explicit, outside = dapr.received
    assert first.event["correlationid"] == "from-middleware"
    assert explicit.event["correlationid"] == "explicit"
    assert "correlationid" not in outside.event


def test_publish_event_sends_a_prebuilt_event(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()
    event = build_sync_event(
        action="created",
        task_id=5,
        user_id="u",
        source="elsewhere",
        correlation_id=None,
        event_id="fixed-id",
    )
    assert run(p, lambda: p.publish_event(event)).ok
    assert run(p, lambda: p.publish_event(event, topic="custom")).ok
    assert [(d.topic, d.event["id"]) for d in dapr.received] == [
        ("task-updates", "fixed-id"),
        ("custom", "fixed-id"),
    ]
    # The body is the event's JSON, unchanged; the key is its partition key.
    assert dapr.received[0].raw == event.to_json().encode()
    assert dapr.received[0].metadata == {"partitionKey": "5"}


def test_an_event_of_unknown_type_is_refused_without_a_topic(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    event = CloudEvent(
        id="e-1",
        source="elsewhere",
        type="com.example.other",
        subject="3",
        partitionkey="3",
        time=DUE,
    )
    result = run(p, lambda: p.publish_event(event))
    assert result.outcome is Outcome.PERMANENT
    assert "cannot publish: unknown event type 'com.example.other'" in (result.error or "")
    assert levels(log_records, "permanent") == ["ERROR"]
    assert dapr.calls == []


# --- failure modes (T-016): never raise, classify, log ---------------------------------------


def test_disabled_makes_no_http_call_and_logs_debug(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for(dapr_enabled=False)
    assert p.enabled is False
    results = run(p, lambda: publish_one_of_each(p))
    assert {r.outcome for r in results} == {Outcome.PERMANENT}
    assert all("DAPR_ENABLED=false" in (r.error or "") for r in results)
    assert {r.status for r in results} == {None}
    assert dapr.calls == [] and dapr.connections == 0
    disabled = with_outcome(log_records, "permanent")
    assert len(disabled) == 8
    assert {r["level"] for r in disabled} == {"DEBUG"}
    # The event itself is in the log record (contract §4: events are logged at DEBUG).
    assert disabled[0]["extra"]["event"]["type"] == "task.created"
    assert disabled[0]["extra"]["topic"] == "task-events"
    assert run(p, p.check_ready) is False
    assert dapr.calls == [] and dapr.connections == 0


def test_sidecar_down_is_transient_and_logged_warning(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    dapr.refuse()
    result = run(p, lambda: p.publish_sync_event("created", 11, "alice"))
    assert result.outcome is Outcome.TRANSIENT
    assert result.status is None
    assert "cannot reach the Dapr sidecar" in (result.error or "")
    assert levels(log_records, "transient") == ["WARNING"]

    dapr.resume()
    assert run(p, lambda: p.publish_sync_event("created", 11, "alice")).ok


def test_hung_sidecar_times_out_as_transient(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for(dapr_publish_timeout=0.2)
    dapr.hang(True)
    started = time.monotonic()
    result = run(p, lambda: p.publish_sync_event("created", 11, "alice"))
    elapsed = time.monotonic() - started
    dapr.hang(False)
    assert result.outcome is Outcome.TRANSIENT
    assert result.status is None
    assert "did not answer within 0.2s" in (result.error or "")
    # Bounded by the time-out, not by the hung sidecar (generous margin for slow CI).
    assert elapsed < 3.0
    assert levels(log_records, "transient") == ["WARNING"]
    assert dapr.received == []


def test_slow_but_within_timeout_is_delivered(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.delay(0.05)
    p = publisher_for(dapr_publish_timeout=1.0)
    assert run(p, lambda: p.publish_sync_event("created", 1, "u")).ok


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retryable_answers_are_transient_and_logged_error(
    dapr: DaprEmulator,
    publisher_for: MakePublisher,
    log_records: list[dict[str, Any]],
    status: int,
) -> None:
    dapr.fail_fraction(1.0, status=status)
    p = publisher_for()
    result = run(p, lambda: p.publish_sync_event("created", 11, "alice"))
    assert result.outcome is Outcome.TRANSIENT
    assert result.status == status
    assert f"Dapr answered {status}" in (result.error or "")
    assert levels(log_records, "transient") == ["ERROR"]
    assert with_outcome(log_records, "transient")[0]["extra"]["dapr_status"] == status


@pytest.mark.parametrize(
    ("setup", "status", "hint"),
    [
        (lambda d: d.require_token("right-token"), 401, "DAPR_API_TOKEN"),
        (lambda d: setattr(d, "pubsubs", {"other"}), 404, "DAPR_PUBSUB_NAME"),
        (lambda d: setattr(d, "allowed_topics", {"reminders"}), 403, "scopes"),
        (lambda d: d.respond_status(400), 400, "400"),
    ],
    ids=["401-wrong-token", "404-unknown-pubsub", "403-topic-not-allowed", "400"],
)
def test_configuration_errors_are_permanent_and_logged_error(
    dapr: DaprEmulator,
    publisher_for: MakePublisher,
    log_records: list[dict[str, Any]],
    setup: Callable[[DaprEmulator], None],
    status: int,
    hint: str,
) -> None:
    setup(dapr)
    p = publisher_for(dapr_api_token="wrong-token")
    result = run(p, lambda: p.publish_task_event("created", task()))
    assert result.outcome is Outcome.PERMANENT
    assert result.status == status
    assert hint in (result.error or "")
    errors = with_outcome(log_records, "permanent")
    assert [r["level"] for r in errors] == ["ERROR"]
    assert errors[0]["extra"]["dapr_status"] == status
    assert errors[0]["extra"]["topic"] == "task-events"
    assert dapr.received == []
    assert len(dapr.calls) == 1


def test_invalid_input_is_reported_not_raised(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    result = run(p, lambda: p.publish_task_event("created", {"id": 1}))
    assert result.outcome is Outcome.PERMANENT
    assert (result.error or "").startswith("cannot build the event: ")
    assert "task.user_id" in (result.error or "")
    assert [r["level"] for r in log_records if "cannot build" in r["message"]] == ["ERROR"]
    bad_reminder = run(p, lambda: p.publish_reminder_event("scheduled", 1, "u", None, "t"))
    assert bad_reminder.outcome is Outcome.PERMANENT
    assert (bad_reminder.error or "").startswith("cannot build the event: ")
    bad_changes = run(p, lambda: p.publish_task_event("updated", task(), changes={"title": 5}))
    assert bad_changes.outcome is Outcome.PERMANENT
    assert dapr.calls == []


def test_a_malformed_change_pair_is_reported_not_raised(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()
    changes = {"title": ("only the new value",)}
    result = run(p, lambda: p.publish_task_event("updated", task(), changes=changes))
    assert result.outcome is Outcome.PERMANENT


def test_invalid_input_is_logged_with_the_permanent_outcome(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    run(p, lambda: p.publish_task_event("created", {"id": 1}))
    assert levels(log_records, "permanent") == ["ERROR"]


def test_unexpected_errors_never_reach_the_caller(
    dapr: DaprEmulator,
    publisher_for: MakePublisher,
    monkeypatch: pytest.MonkeyPatch,
    log_records: list[dict[str, Any]],
) -> None:
    p = publisher_for()

    async def boom(*args: Any, **kwargs: Any) -> SendResult:
        raise RuntimeError("bug")

    monkeypatch.setattr(p.transport, "_single", boom)
    result = run(p, lambda: p.publish_sync_event("created", 1, "u"))
    assert result.outcome is Outcome.TRANSIENT
    assert "bug" in (result.error or "")
    assert levels(log_records, "transient") == ["WARNING"]


# --- logs (T-015) ----------------------------------------------------------------------------


def test_success_log_carries_the_structured_fields(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for(dapr_api_token="never-log-me")
    result = run(p, lambda: p.publish_task_event("created", task(), correlation_id="req-7"))
    assert result.ok
    (record,) = with_outcome(log_records, "ok")
    assert record["level"] == "INFO"
    assert record["message"] == "event published"
    assert {k: record["extra"][k] for k in LOG_FIELDS} == {
        "event_type": "task.created",
        "topic": "task-events",
        "task_id": "11",
        "user_id": "alice",
        "correlation_id": "req-7",
        "event_id": dapr.received[0].event["id"],
        "dapr_status": 204,
        "outcome": "ok",
    }


def test_every_failure_log_carries_the_structured_fields(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    dapr.respond_status(403)
    run(p, lambda: p.publish_reminder_event("scheduled", 11, "alice", DUE, "Plan trip"))
    dapr.refuse()
    run(p, lambda: p.publish_sync_event("created", 12, "bob"))
    permanent, transient = (
        with_outcome(log_records, "permanent"),
        with_outcome(log_records, "transient"),
    )
    assert len(permanent) == len(transient) == 1
    for record in (*permanent, *transient):
        assert set(LOG_FIELDS) <= set(record["extra"])
        assert record["message"].startswith("event not published: ")
    assert permanent[0]["extra"]["event_type"] == "reminder.scheduled"
    assert permanent[0]["extra"]["dapr_status"] == 403
    assert transient[0]["extra"]["task_id"] == "12"
    assert transient[0]["extra"]["dapr_status"] is None


def test_the_token_never_appears_in_logs(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    dapr.require_token("right")
    p = publisher_for(dapr_api_token="never-log-me-123")
    results = run(p, lambda: publish_one_of_each(p))
    assert {r.status for r in results} == {401}
    dapr.refuse()
    results.append(run(p, lambda: p.publish_sync_event("created", 1, "u")))
    assert log_records
    assert "never-log-me-123" not in repr(log_records)
    assert "never-log-me-123" not in repr(results)
    assert "never-log-me-123" not in repr(p.settings)


# --- connection handling and readiness -------------------------------------------------------


def test_one_pooled_keep_alive_connection(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    p = publisher_for()

    async def many() -> None:
        for i in range(30):
            assert (await p.publish_sync_event("created", i + 1, "u")).ok
        assert await p.check_ready()
        await p.aclose()

    asyncio.run(many())
    assert len(dapr.received) == 30
    assert dapr.connections == 1


def test_usable_from_several_event_loops(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    p = publisher_for()
    for _ in range(3):
        assert run(p, lambda: p.publish_sync_event("created", 1, "u")).ok
    assert run(p, p.check_ready) is True
    assert len(dapr.received) == 3
    assert dapr.connections == 4  # a session per loop, closed with it


def test_an_injected_transport_is_used(
    dapr: DaprEmulator, settings_for: Callable[..., Settings]
) -> None:
    settings = settings_for()
    transport = DaprTransport(settings)
    p = EventPublisher(settings, transport=transport)
    assert p.transport is transport and p.settings is settings
    sent: list[list[Message]] = []
    real_send = transport.send

    async def spy(messages: Sequence[Message]) -> list[SendResult]:
        sent.append(list(messages))
        return await real_send(messages)

    transport.send = spy  # type: ignore[method-assign]

    assert run(p, lambda: p.publish_sync_event("created", 1, "u")).ok
    (batch,) = sent
    (message,) = batch
    assert (message.topic, message.key) == ("task-updates", "1")
    assert message.id == dapr.received[0].event["id"]
    assert len(dapr.received) == 1


def test_the_default_transport_follows_the_settings(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(dapr_http_port=3777)
    p = EventPublisher(settings)
    assert isinstance(p.transport, DaprTransport)
    assert p.transport.settings is settings
    assert p.transport.base_url == "http://127.0.0.1:3777"


def test_check_ready_uses_outbound_health(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    dapr.require_token("t")  # health endpoints are exempt, as in Dapr
    p = publisher_for()
    assert run(p, p.check_ready) is True
    assert [(c.method, c.path) for c in dapr.calls] == [("GET", "/v1.0/healthz/outbound")]
    dapr.healthy = False
    assert run(p, p.check_ready) is False
    dapr.healthy = True
    dapr.refuse()
    assert run(p, p.check_ready) is False


# --- the process-wide publisher (T-012) ------------------------------------------------------


def test_get_event_publisher_is_cached_settings_driven_and_resettable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from src.events import get_event_publisher as exported

    assert exported is get_event_publisher
    first = get_event_publisher()
    assert first is get_event_publisher()
    assert first.enabled is False
    assert first.settings is get_settings()

    monkeypatch.setenv("DAPR_ENABLED", "true")
    monkeypatch.setenv("DAPR_HTTP_PORT", "3999")
    get_settings.cache_clear()
    second = get_event_publisher()
    assert second is not first
    assert second.enabled and second.settings.dapr_http_port == 3999
    assert second.transport.base_url == "http://127.0.0.1:3999"
    assert get_event_publisher() is second
    reset_event_publisher()
    assert get_event_publisher() is not second


def test_events_package_exports() -> None:
    import src.events as events

    assert set(events.__all__) >= {
        "EventPublisher",
        "get_event_publisher",
        "reset_event_publisher",
        "SendResult",
        "Outcome",
        "CloudEvent",
        "TaskSnapshot",
    }
    for name in events.__all__:
        assert hasattr(events, name)
    for removed in ("PublishOutcome", "PublishResult"):
        assert not hasattr(events, removed)
    import hooks

    assert events.SendResult is hooks.SendResult and events.Outcome is hooks.Outcome
