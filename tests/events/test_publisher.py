"""EventPublisher against the emulated sidecar over real loopback HTTP (T-011, T-015, T-016)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, TypeVar

import httpx
import pytest
from src.config import get_settings
from src.events import (
    EventPublisher,
    PublishOutcome,
    PublishResult,
    get_event_publisher,
    reset_event_publisher,
)
from src.events.schemas import build_sync_event
from src.request_context import correlation_id

from tests.support.dapr_emulator import DaprEmulator

T = TypeVar("T")
MakePublisher = Callable[..., EventPublisher]
DUE = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

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


async def publish_one_of_each(p: EventPublisher) -> list[PublishResult]:
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


def test_every_event_type_lands_with_topic_type_subject_key_and_data(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()
    results = run(lambda: publish_one_of_each(p))
    assert [r.outcome for r in results] == [PublishOutcome.DELIVERED] * 8
    assert {r.dapr_status for r in results} == {204}

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
    for delivery, result in zip(got, results, strict=True):
        assert delivery.pubsub == "pubsub-kafka"
        assert delivery.bulk is False
        assert delivery.content_type == "application/cloudevents+json"
        assert delivery.metadata == {"partitionKey": "11"}
        event = delivery.event
        # Dapr kept our envelope: id, source, subject and the extensions survive.
        assert event["id"] == result.event_id
        assert event["source"] == "pakaura-api"
        assert event["subject"] == event["partitionkey"] == "11"
        assert event["data"]["task_id"] == 11 and event["data"]["user_id"] == "alice"
    assert got[0].event["correlationid"] == "req-42"
    assert got[1].event["data"]["changes"] == {
        "title": {"old": "Plan trip", "new": "Plan the trip"}
    }
    assert got[2].event["data"]["changes"] == {"completed": {"old": False, "new": True}}
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
    results = run(lambda: publish_one_of_each(p))
    assert all(r.ok for r in results), results
    assert [d.topic for d in dapr.received] == ["te"] * 5 + ["tu"] + ["rm"] * 2
    assert {d.event["source"] for d in dapr.received} == {"pakaura-test"}
    assert {c.headers.get("dapr-api-token") for c in dapr.calls} == {"s3cret-token"}


def test_an_orm_like_object_is_accepted(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    p = publisher_for()
    result = run(lambda: p.publish_task_event("created", SimpleNamespace(**task(), extra=1)))
    assert result.ok
    assert dapr.received[0].event["data"]["task"]["title"] == "Plan trip"


def test_correlation_id_comes_from_the_request_context(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()

    async def go() -> None:
        token = correlation_id.set("from-middleware")
        try:
            await p.publish_sync_event("created", 11, "alice")
        finally:
            correlation_id.reset(token)
        await p.publish_sync_event("created", 11, "alice")

    run(go)
    first, second = dapr.received
    assert first.event["correlationid"] == "from-middleware"
    assert "correlationid" not in second.event


# --- failure modes (T-016): never raise, classify, log ---------------------------------------


def levels(records: list[dict[str, Any]], outcome: str) -> list[str]:
    return [r["level"] for r in records if r["extra"].get("outcome") == outcome]


def test_disabled_makes_no_http_call_and_logs_debug(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for(dapr_enabled=False)
    results = run(lambda: publish_one_of_each(p))
    assert {r.outcome for r in results} == {PublishOutcome.DISABLED}
    assert dapr.calls == [] and dapr.connections == 0
    disabled = [r for r in log_records if r["extra"].get("outcome") == "disabled"]
    assert len(disabled) == 8
    assert {r["level"] for r in disabled} == {"DEBUG"}
    # The event itself is in the log record (contract §4: events are logged at DEBUG).
    assert disabled[0]["extra"]["event"]["type"] == "task.created"
    assert run(p.check_ready) is False
    assert dapr.calls == []


def test_sidecar_down_is_transient_and_logged_warning(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    dapr.refuse()
    result = run(lambda: p.publish_sync_event("created", 11, "alice"))
    assert result.outcome is PublishOutcome.TRANSIENT
    assert result.dapr_status is None
    assert "cannot reach the Dapr sidecar" in (result.error or "")
    assert levels(log_records, "transient") == ["WARNING"]

    dapr.resume()
    assert run(lambda: p.publish_sync_event("created", 11, "alice")).ok


def test_hung_sidecar_times_out_as_transient(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for(dapr_publish_timeout=0.2)
    dapr.hang(True)
    started = time.monotonic()
    result = run(lambda: p.publish_sync_event("created", 11, "alice"))
    elapsed = time.monotonic() - started
    dapr.hang(False)
    assert result.outcome is PublishOutcome.TRANSIENT
    assert "did not answer within 0.2s" in (result.error or "")
    # Bounded by the time-out, not by the hung sidecar (generous margin for slow CI).
    assert elapsed < 3.0
    assert levels(log_records, "transient") == ["WARNING"]
    assert dapr.received == []


def test_slow_but_within_timeout_is_delivered(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.delay(0.05)
    assert run(
        lambda: publisher_for(dapr_publish_timeout=1.0).publish_sync_event("created", 1, "u")
    ).ok


def test_http_500_is_transient_and_logged_error(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    dapr.fail_fraction(1.0, status=500)
    result = run(lambda: publisher_for().publish_sync_event("created", 11, "alice"))
    assert result.outcome is PublishOutcome.TRANSIENT
    assert result.dapr_status == 500
    assert levels(log_records, "transient") == ["ERROR"]


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
def test_configuration_errors_are_logged_error(
    dapr: DaprEmulator,
    publisher_for: MakePublisher,
    log_records: list[dict[str, Any]],
    setup: Callable[[DaprEmulator], None],
    status: int,
    hint: str,
) -> None:
    setup(dapr)
    p = publisher_for(dapr_api_token="wrong-token")
    result = run(lambda: p.publish_task_event("created", task()))
    assert result.outcome is PublishOutcome.CONFIG_ERROR
    assert result.dapr_status == status
    assert hint in (result.error or "")
    errors = [r for r in log_records if r["extra"].get("outcome") == "config_error"]
    assert [r["level"] for r in errors] == ["ERROR"]
    assert errors[0]["extra"]["dapr_status"] == status
    assert dapr.received == []


def test_invalid_input_is_reported_not_raised(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for()
    result = run(lambda: p.publish_task_event("created", {"id": 1}))
    assert result.outcome is PublishOutcome.INVALID
    assert "task.user_id" in (result.error or "")
    assert levels(log_records, "invalid") == ["ERROR"]
    bad_reminder = run(lambda: p.publish_reminder_event("scheduled", 1, "u", None, "t"))
    assert bad_reminder.outcome is PublishOutcome.INVALID
    assert dapr.calls == []


def test_unexpected_errors_never_reach_the_caller(
    dapr: DaprEmulator, publisher_for: MakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = publisher_for()

    async def boom(*args: Any, **kwargs: Any) -> PublishResult:
        raise RuntimeError("bug")

    monkeypatch.setattr(p, "_post_single", boom)
    result = run(lambda: p.publish_sync_event("created", 1, "u"))
    assert result.outcome is PublishOutcome.TRANSIENT
    assert "bug" in (result.error or "")


# --- logs (T-015) ----------------------------------------------------------------------------


def test_success_log_carries_the_structured_fields(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    p = publisher_for(dapr_api_token="never-log-me")
    result = run(lambda: p.publish_task_event("created", task(), correlation_id="req-7"))
    assert result.ok
    (record,) = [r for r in log_records if r["extra"].get("outcome") == "delivered"]
    assert record["level"] == "INFO"
    assert {
        k: record["extra"][k]
        for k in (
            "event_type",
            "topic",
            "task_id",
            "user_id",
            "correlation_id",
            "dapr_status",
            "event_id",
        )
    } == {
        "event_type": "task.created",
        "topic": "task-events",
        "task_id": "11",
        "user_id": "alice",
        "correlation_id": "req-7",
        "dapr_status": 204,
        "event_id": result.event_id,
    }


def test_the_token_never_appears_in_logs(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    dapr.require_token("right")
    p = publisher_for(dapr_api_token="never-log-me-123")
    run(lambda: publish_one_of_each(p))
    dapr.refuse()
    run(lambda: p.publish_sync_event("created", 1, "u"))
    assert log_records
    assert "never-log-me-123" not in repr(log_records)


# --- connection handling and readiness -------------------------------------------------------


def test_one_pooled_keep_alive_connection(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    p = publisher_for()

    async def many() -> None:
        for i in range(30):
            assert (await p.publish_sync_event("created", i + 1, "u")).ok
        await p.aclose()

    run(many)
    assert len(dapr.received) == 30
    assert dapr.connections == 1


def test_usable_from_several_event_loops(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    p = publisher_for()
    for _ in range(3):
        assert run(lambda: p.publish_sync_event("created", 1, "u")).ok
    assert len(dapr.received) == 3


def test_an_injected_client_is_used_and_left_open(
    dapr: DaprEmulator, settings_for: Callable[..., Any]
) -> None:
    async def go() -> bool:
        async with httpx.AsyncClient() as client:
            p = EventPublisher(settings_for(), client=client)
            ok = (await p.publish_sync_event("created", 1, "u")).ok
            await p.aclose()
            assert not client.is_closed
            return ok

    assert run(go)
    assert len(dapr.received) == 1


def test_check_ready_uses_outbound_health(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    dapr.require_token("t")  # health endpoints are exempt, as in Dapr
    p = publisher_for()
    assert run(p.check_ready) is True
    assert dapr.calls[-1].path == "/v1.0/healthz/outbound"
    dapr.healthy = False
    assert run(p.check_ready) is False
    dapr.healthy = True
    dapr.refuse()
    assert run(p.check_ready) is False


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
    assert run(lambda: p.publish_event(event)).ok
    assert run(lambda: p.publish_event(event, topic="custom")).ok
    assert [(d.topic, d.event["id"]) for d in dapr.received] == [
        ("task-updates", "fixed-id"),
        ("custom", "fixed-id"),
    ]


def test_publish_serialized_sends_the_stored_body_unchanged(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    p = publisher_for()
    body = build_sync_event(
        action="created", task_id=5, user_id="u", source="s", correlation_id=None
    ).to_json()
    result = run(lambda: p.publish_serialized("task-updates", "5", body))
    assert result.ok
    assert dapr.received[0].raw == body.encode()
    assert dapr.received[0].metadata == {"partitionKey": "5"}


# --- the process-wide publisher (T-012) ------------------------------------------------------


def test_get_event_publisher_is_cached_settings_driven_and_resettable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from src.events import get_event_publisher as exported

    assert exported is get_event_publisher
    first = get_event_publisher()
    assert first is get_event_publisher()
    assert first.enabled is False

    monkeypatch.setenv("DAPR_ENABLED", "true")
    monkeypatch.setenv("DAPR_HTTP_PORT", "3999")
    get_settings.cache_clear()
    second = get_event_publisher()
    assert second is not first
    assert second.enabled and second.settings.dapr_http_port == 3999
    reset_event_publisher()
    assert get_event_publisher() is not second


def test_events_package_exports() -> None:
    import src.events as events

    assert set(events.__all__) >= {"EventPublisher", "get_event_publisher"}
    for name in events.__all__:
        assert hasattr(events, name)
