"""DaprTransport: what the outbox relay gets for each message (bulk and single, every fault)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from src.config import Settings
from src.events import EventPublisher, PublishResult
from src.events import publisher as publisher_module
from src.events.schemas import build_sync_event, build_task_event, topic_for
from src.events.transport import DaprTransport

from hooks import Message, Outcome, SendResult
from tests.support.dapr_emulator import DaprEmulator

T0 = datetime(2025, 2, 1, tzinfo=UTC)
MakePublisher = Callable[..., EventPublisher]


def messages_for(task_ids: Sequence[int], settings: Settings | None = None) -> list[Message]:
    """Lifecycle + sync message pairs, in the order the derivation would produce them."""
    settings = settings or Settings()
    out = []
    for n, task_id in enumerate(task_ids):
        when = T0 + timedelta(seconds=n)
        user_id = f"user-{task_id % 3}"
        row: dict[str, Any] = {
            "id": task_id,
            "user_id": user_id,
            "title": f"task {task_id} #{n}",
            "description": None,
            "completed": False,
            "due_date": None,
            "created_at": T0,
            "updated_at": when,
        }
        for event in (
            build_task_event(
                action="updated",
                task=row,
                changes={"title": ("x", row["title"])},
                source="pakaura-api",
                correlation_id=None,
                time=when,
            ),
            build_sync_event(
                action="updated",
                task_id=task_id,
                user_id=user_id,
                source="pakaura-api",
                correlation_id=None,
                time=when,
            ),
        ):
            out.append(
                Message(
                    id=event.id,
                    topic=topic_for(event.type, settings),
                    key=str(task_id),
                    body=event.to_json(),
                )
            )
    return out


def send(transport: DaprTransport, messages: Sequence[Message]) -> Sequence[SendResult]:
    async def go() -> Sequence[SendResult]:
        try:
            return await transport.send(messages)
        finally:
            await transport.aclose()

    return asyncio.run(go())


def outcomes(results: Sequence[SendResult]) -> list[Outcome]:
    return [r.outcome for r in results]


def delivered_ids(dapr: DaprEmulator) -> list[str]:
    return [d.event["id"] for d in dapr.received]


def per_key_order(dapr: DaprEmulator, topic: str) -> dict[str, list[str]]:
    order: dict[str, list[str]] = {}
    for d in dapr.received:
        if d.topic == topic:
            order.setdefault(d.metadata["partitionKey"], []).append(d.event["data"]["timestamp"])
    return order


def test_a_batch_goes_out_in_bulk_with_per_entry_partition_keys(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    msgs = messages_for(range(1, 51))
    results = send(DaprTransport(publisher_for()), msgs)
    assert outcomes(results) == [Outcome.OK] * 100
    assert sorted(delivered_ids(dapr)) == sorted(m.id for m in msgs)
    calls = dapr.calls
    assert {c.path for c in calls} == {
        "/v1.0-alpha1/publish/bulk/pubsub-kafka/task-events",
        "/v1.0-alpha1/publish/bulk/pubsub-kafka/task-updates",
    }
    # No request-level metadata: it would override the per-entry partition keys.
    assert all(c.query == {} for c in calls)
    for d in dapr.received:
        assert d.bulk and d.content_type == "application/cloudevents+json"
        assert d.metadata == {"partitionKey": d.event["subject"]}
        assert d.entry_id == d.event["id"]


def test_per_task_order_holds_within_a_bulk_batch(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    # Task 1 changes four times, interleaved with others: four sequential waves.
    msgs = messages_for([1, 2, 1, 3, 1, 4, 1, 5])
    results = send(DaprTransport(publisher_for()), msgs)
    assert outcomes(results) == [Outcome.OK] * len(msgs)
    for topic in ("task-events", "task-updates"):
        for key, stamps in per_key_order(dapr, topic).items():
            assert stamps == sorted(stamps), (topic, key)
        assert len(per_key_order(dapr, topic)["1"]) == 4
    bulk_calls = [c for c in dapr.calls if "task-events" in c.path]
    assert len(bulk_calls) == 4


def test_never_mode_publishes_one_by_one_in_order(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    msgs = messages_for([1, 2, 1])
    results = send(DaprTransport(publisher_for(dapr_bulk_publish="never")), msgs)
    assert outcomes(results) == [Outcome.OK] * 6
    assert all(c.path.startswith("/v1.0/publish/pubsub-kafka/") for c in dapr.calls)
    assert [d.event["id"] for d in dapr.received if d.topic == "task-events"] == [
        m.id for m in msgs if m.topic == "task-events"
    ]
    assert all(d.metadata == {"partitionKey": d.event["subject"]} for d in dapr.received)


def test_a_single_message_uses_single_publish(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    (msg,) = messages_for([7])[:1]
    assert outcomes(send(DaprTransport(publisher_for()), [msg])) == [Outcome.OK]
    assert [c.path for c in dapr.calls] == ["/v1.0/publish/pubsub-kafka/task-events"]
    assert dapr.calls[0].query == {"metadata.partitionKey": "7"}
    assert dapr.received[0].raw == msg.body.encode()


def test_auto_falls_back_to_single_publish_on_an_old_sidecar_and_remembers(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.bulk_supported = False  # older than 1.10: no bulk route at all
    publisher = publisher_for()
    transport = DaprTransport(publisher)
    assert outcomes(send(transport, messages_for([1, 2, 3]))) == [Outcome.OK] * 6
    assert publisher.bulk_unsupported
    dapr.clear()
    assert outcomes(send(transport, messages_for([4, 5, 6]))) == [Outcome.OK] * 6
    assert all("/bulk/" not in c.path for c in dapr.calls)
    assert len(dapr.received) == 6


def test_auto_uses_the_stable_bulk_path_when_alpha1_is_gone(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.alpha1_bulk = False
    publisher = publisher_for()
    assert outcomes(send(DaprTransport(publisher), messages_for([1, 2]))) == [Outcome.OK] * 4
    assert not publisher.bulk_unsupported
    assert {d.path for d in dapr.received} == {
        "/v1.0/publish/bulk/pubsub-kafka/task-events",
        "/v1.0/publish/bulk/pubsub-kafka/task-updates",
    }


def test_always_mode_does_not_fall_back(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    dapr.bulk_supported = False
    results = send(DaprTransport(publisher_for(dapr_bulk_publish="always")), messages_for([1, 2]))
    assert outcomes(results) == [Outcome.PERMANENT] * 4
    assert "DAPR_BULK_PUBLISH=always" in (results[0].error or "")
    assert dapr.received == []


def test_partially_failed_bulk_reads_failed_entries(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.fail_entries(0.3)
    msgs = messages_for(list(range(1, 41)) + list(range(1, 41)))
    results = send(DaprTransport(publisher_for()), msgs)
    received = set(delivered_ids(dapr))
    assert received, "some entries must get through"
    failed = {m.key for m, r in zip(msgs, results, strict=True) if r.outcome is not Outcome.OK}
    assert failed, "some entries must fail"
    for message, result in zip(msgs, results, strict=True):
        # OK exactly for what the broker got; the rest is retried later (transient).
        assert (result.outcome is Outcome.OK) == (message.id in received)
        if result.outcome is not Outcome.OK:
            assert result.outcome is Outcome.TRANSIENT
    # A failed event holds back the later events of its task: order survives the retry.
    for topic in ("task-events", "task-updates"):
        firsts = [m for m in msgs[: len(msgs) // 2] if m.topic == topic]
        seconds = [m for m in msgs[len(msgs) // 2 :] if m.topic == topic]
        for first, second in zip(firsts, seconds, strict=True):
            if first.id not in received:
                assert second.id not in received


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_sidecar_down_every_message_transient(
    dapr: DaprEmulator, publisher_for: MakePublisher, mode: str
) -> None:
    dapr.refuse()
    results = send(DaprTransport(publisher_for(dapr_bulk_publish=mode)), messages_for(range(1, 21)))
    assert outcomes(results) == [Outcome.TRANSIENT] * 40
    assert all(r.status is None for r in results)


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_hung_sidecar_costs_one_timeout_not_one_per_message(
    dapr: DaprEmulator, publisher_for: MakePublisher, mode: str
) -> None:
    dapr.hang(True)
    transport = DaprTransport(publisher_for(dapr_publish_timeout=0.2, dapr_bulk_publish=mode))
    started = time.monotonic()
    results = send(transport, messages_for(range(1, 21)))
    elapsed = time.monotonic() - started
    dapr.hang(False)
    assert outcomes(results) == [Outcome.TRANSIENT] * 40
    assert "did not answer within 0.2s" in (results[0].error or "")
    # 40 messages x 0.2 s would be 8 s; topics are sent concurrently and stop at the first.
    assert elapsed < 3.0
    # One request per topic reached the sidecar; nothing was answered or recorded.
    assert [c.status for c in dapr.wait_for_calls(2)] == [None, None]
    time.sleep(0.05)
    assert len(dapr.calls) == 2 and dapr.received == []


def test_http_500_is_transient(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    dapr.fail_fraction(1.0, status=503)
    results = send(DaprTransport(publisher_for()), messages_for(range(1, 6)))
    assert outcomes(results) == [Outcome.TRANSIENT] * 10
    assert {r.status for r in results} <= {503, None}


def test_a_broker_outage_does_not_cost_a_request_per_event(
    dapr: DaprEmulator, publisher_for: MakePublisher, log_records: list[dict[str, Any]]
) -> None:
    dapr.fail_fraction(1.0, status=500)
    transport = DaprTransport(publisher_for(dapr_bulk_publish="never"))
    results = send(transport, messages_for(range(1, 21)))
    assert outcomes(results) == [Outcome.TRANSIENT] * 40
    # Three failures in a row per topic, then the rest waits for the next round.
    assert len(dapr.calls) == 6
    assert len([r for r in log_records if r["extra"].get("outcome") == "transient"]) == 6


@pytest.mark.parametrize(
    ("setup", "status"),
    [
        (lambda d: d.require_token("right"), 401),
        (lambda d: setattr(d, "pubsubs", {"other"}), 404),
        (lambda d: setattr(d, "allowed_topics", set()), 403),
    ],
    ids=["401", "404-pubsub", "403-topic"],
)
@pytest.mark.parametrize("mode", ["auto", "never"])
def test_configuration_errors_are_permanent_and_stop_the_topic(
    dapr: DaprEmulator,
    publisher_for: MakePublisher,
    log_records: list[dict[str, Any]],
    setup: Callable[[DaprEmulator], None],
    status: int,
    mode: str,
) -> None:
    setup(dapr)
    publisher = publisher_for(dapr_api_token="wrong", dapr_bulk_publish=mode)
    results = send(DaprTransport(publisher), messages_for(range(1, 11)))
    assert outcomes(results) == [Outcome.PERMANENT] * 20
    # One call per topic: the error is about the topic/pubsub/token, not one event.
    assert len([c for c in dapr.calls if c.status == status]) == 2
    assert {r["level"] for r in log_records if r["extra"].get("outcome") == "config_error"} == {
        "ERROR"
    }
    # A 404 for an unknown pubsub is a configuration error, not a missing bulk route.
    assert not publisher.bulk_unsupported


def test_disabled_sends_nothing_and_keeps_the_events(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    results = send(DaprTransport(publisher_for(dapr_enabled=False)), messages_for([1, 2]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 4
    assert "DAPR_ENABLED=false" in (results[0].error or "")
    assert dapr.calls == []


def test_a_malformed_body_fails_alone(dapr: DaprEmulator, publisher_for: MakePublisher) -> None:
    msgs = messages_for([1, 2, 3])
    bad = Message(id="bad-1", topic="task-events", key="9", body='{"not json')
    batch = [*msgs[:2], bad, *msgs[2:]]
    results = send(DaprTransport(publisher_for()), batch)
    by_id = {m.id: r for m, r in zip(batch, results, strict=True)}
    assert by_id["bad-1"].outcome is not Outcome.OK
    assert all(by_id[m.id].outcome is Outcome.OK for m in msgs)
    assert sorted(delivered_ids(dapr)) == sorted(m.id for m in msgs)


def test_large_batches_are_split_into_bounded_requests(
    dapr: DaprEmulator, publisher_for: MakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "_MAX_BULK_ENTRIES", 7)
    msgs = messages_for(range(1, 31))
    assert outcomes(send(DaprTransport(publisher_for()), msgs)) == [Outcome.OK] * 60
    sizes = [c for c in dapr.calls if "task-events" in c.path]
    assert len(sizes) == 5  # 30 entries in chunks of at most 7
    assert len(dapr.received) == 60


def test_results_follow_the_input_order_across_topics(
    dapr: DaprEmulator, publisher_for: MakePublisher
) -> None:
    dapr.allowed_topics = {"task-updates"}
    msgs = messages_for([1, 2, 3])
    results = send(DaprTransport(publisher_for()), msgs)
    assert outcomes(results) == [
        Outcome.PERMANENT if m.topic == "task-events" else Outcome.OK for m in msgs
    ]


def test_send_never_raises(
    dapr: DaprEmulator, publisher_for: MakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = publisher_for()

    async def broken(messages: Sequence[Any]) -> list[PublishResult]:
        raise RuntimeError("bug in the publisher")

    monkeypatch.setattr(publisher, "publish_batch", broken)
    results = send(DaprTransport(publisher), messages_for([1]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 2
    assert "bug in the publisher" in (results[0].error or "")
    assert asyncio.run(DaprTransport(publisher).send([])) == []


def test_unexpected_errors_inside_a_batch_keep_every_event(
    dapr: DaprEmulator, publisher_for: MakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = publisher_for()

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("unexpected")

    monkeypatch.setattr(publisher, "_post_bulk", boom)
    results = send(DaprTransport(publisher), messages_for([1, 2]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 4


def test_default_transport_uses_the_process_publisher(monkeypatch: pytest.MonkeyPatch) -> None:
    from src.events import get_event_publisher

    assert DaprTransport().publisher is get_event_publisher()
