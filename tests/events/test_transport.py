"""DaprTransport: what the outbox relay gets for each message (bulk and single, every fault)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from src.config import Settings
from src.events import transport as transport_module
from src.events.schemas import build_sync_event, build_task_event, topic_for
from src.events.transport import DaprTransport, classify_status

from hooks import Message, Outcome, SendResult
from tests.support.dapr_emulator import DaprEmulator

T0 = datetime(2025, 2, 1, tzinfo=UTC)
MakeSettings = Callable[..., Settings]
BULK_EVENTS = "/v1.0-alpha1/publish/bulk/pubsub-kafka/task-events"
BULK_UPDATES = "/v1.0-alpha1/publish/bulk/pubsub-kafka/task-updates"


def messages_for(task_ids: Sequence[int], settings: Settings | None = None) -> list[Message]:
    """Lifecycle + sync message pairs, in the order the derivation would produce them.

    The relay never hands the transport two events of one (topic, key) at once, so callers
    pass distinct task ids."""
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


def send(transport: DaprTransport, messages: Sequence[Message]) -> list[SendResult]:
    """One `send` in a fresh event loop, closing that loop's session afterwards."""

    async def go() -> list[SendResult]:
        try:
            return await transport.send(messages)
        finally:
            await transport.aclose()

    return asyncio.run(go())


def outcomes(results: Sequence[SendResult]) -> list[Outcome]:
    return [r.outcome for r in results]


def delivered_ids(dapr: DaprEmulator) -> list[str]:
    return [d.event["id"] for d in dapr.received]


# --- the happy paths --------------------------------------------------------------------------


def test_a_batch_goes_out_in_bulk_with_per_entry_partition_keys(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    msgs = messages_for(range(1, 51))
    results = send(DaprTransport(settings_for()), msgs)
    assert outcomes(results) == [Outcome.OK] * 100
    assert all(r.error is None and r.status == 204 for r in results)
    assert sorted(delivered_ids(dapr)) == sorted(m.id for m in msgs)
    calls = dapr.calls
    assert sorted(c.path for c in calls) == [BULK_EVENTS, BULK_UPDATES]
    # No request-level metadata: it would override the per-entry partition keys.
    assert all(c.query == {} for c in calls)
    for d in dapr.received:
        assert d.bulk and d.content_type == "application/cloudevents+json"
        assert d.metadata == {"partitionKey": d.event["subject"]}
        assert d.entry_id == d.event["id"]
    # The stored JSON is embedded as is, byte for byte.
    bodies = {m.id: m.body.encode() for m in msgs}
    assert all(d.raw == bodies[d.entry_id] for d in dapr.received if d.entry_id)


def test_events_of_different_keys_go_out_as_one_bulk_request_per_topic(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    # Bulk promises no order between entries; the relay guarantees one event per (topic, key)
    # per batch, so the transport has no per-key waves: one request per topic.
    msgs = messages_for([5, 1, 4, 2, 3])
    results = send(DaprTransport(settings_for()), msgs)
    assert outcomes(results) == [Outcome.OK] * 10
    assert sorted(c.path for c in dapr.calls) == [BULK_EVENTS, BULK_UPDATES]
    for topic in ("task-events", "task-updates"):
        assert sorted(d.metadata["partitionKey"] for d in dapr.received if d.topic == topic) == [
            "1",
            "2",
            "3",
            "4",
            "5",
        ]


def test_never_mode_publishes_one_by_one_in_order(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    msgs = messages_for([1, 2, 3])
    results = send(DaprTransport(settings_for(dapr_bulk_publish="never")), msgs)
    assert outcomes(results) == [Outcome.OK] * 6
    assert all(c.path.startswith("/v1.0/publish/pubsub-kafka/") for c in dapr.calls)
    for topic in ("task-events", "task-updates"):
        assert [d.event["id"] for d in dapr.received if d.topic == topic] == [
            m.id for m in msgs if m.topic == topic
        ]
    assert all(not d.bulk for d in dapr.received)
    assert all(d.metadata == {"partitionKey": d.event["subject"]} for d in dapr.received)


def test_a_single_message_uses_single_publish(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    (msg,) = messages_for([7])[:1]
    assert outcomes(send(DaprTransport(settings_for()), [msg])) == [Outcome.OK]
    assert [c.path for c in dapr.calls] == ["/v1.0/publish/pubsub-kafka/task-events"]
    assert dapr.calls[0].query == {"metadata.partitionKey": "7"}
    assert dapr.calls[0].headers["content-type"] == "application/cloudevents+json"
    assert dapr.received[0].raw == msg.body.encode()


def test_an_empty_batch_makes_no_call(dapr: DaprEmulator, settings_for: MakeSettings) -> None:
    assert send(DaprTransport(settings_for()), []) == []
    assert dapr.calls == []


# --- bulk API versions ------------------------------------------------------------------------


def test_auto_falls_back_to_single_publish_on_an_old_sidecar_and_remembers(
    dapr: DaprEmulator, settings_for: MakeSettings, log_records: list[dict[str, Any]]
) -> None:
    dapr.bulk_supported = False  # older than 1.10: no bulk route at all
    transport = DaprTransport(settings_for())
    assert outcomes(send(transport, messages_for([1, 2, 3]))) == [Outcome.OK] * 6
    assert transport.bulk_unsupported
    assert len(dapr.received) == 6 and not any(d.bulk for d in dapr.received)
    # Logged once per topic that found out (the topics were sent concurrently).
    found = [r for r in log_records if "no bulk publish API" in r["message"]]
    assert {r["level"] for r in found} == {"INFO"} and 1 <= len(found) <= 2
    log_records.clear()
    dapr.clear()
    assert outcomes(send(transport, messages_for([4, 5, 6]))) == [Outcome.OK] * 6
    # Remembered: no bulk path is tried again.
    assert all("/bulk/" not in c.path for c in dapr.calls)
    assert len(dapr.calls) == 6 and len(dapr.received) == 6
    assert not [r for r in log_records if "no bulk publish API" in r["message"]]


def test_auto_uses_the_stable_bulk_path_when_alpha1_is_gone(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    dapr.alpha1_bulk = False
    transport = DaprTransport(settings_for())
    assert outcomes(send(transport, messages_for([1, 2]))) == [Outcome.OK] * 4
    assert not transport.bulk_unsupported
    assert {d.path for d in dapr.received} == {
        "/v1.0/publish/bulk/pubsub-kafka/task-events",
        "/v1.0/publish/bulk/pubsub-kafka/task-updates",
    }
    assert all(d.bulk for d in dapr.received)
    # The working path is remembered: the next batch goes straight to it.
    dapr.clear()
    assert outcomes(send(transport, messages_for([3, 4]))) == [Outcome.OK] * 4
    assert all(c.path.startswith("/v1.0/publish/bulk/") for c in dapr.calls)
    assert len(dapr.calls) == 2


def test_always_mode_does_not_fall_back(dapr: DaprEmulator, settings_for: MakeSettings) -> None:
    dapr.bulk_supported = False
    transport = DaprTransport(settings_for(dapr_bulk_publish="always"))
    results = send(transport, messages_for([1, 2]))
    assert outcomes(results) == [Outcome.PERMANENT] * 4
    assert "DAPR_BULK_PUBLISH=always" in (results[0].error or "")
    assert not transport.bulk_unsupported
    assert dapr.received == []
    assert all("/bulk/" in c.path for c in dapr.calls)


def test_partially_failed_bulk_reads_failed_entries(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    dapr.fail_entries(0.3)
    msgs = messages_for(range(1, 81))
    results = send(DaprTransport(settings_for()), msgs)
    received = set(delivered_ids(dapr))
    assert received, "some entries must get through"
    assert len(received) < len(msgs), "some entries must fail"
    assert len(dapr.calls) == 2  # one bulk request per topic
    for message, result in zip(msgs, results, strict=True):
        # OK exactly for what the broker got; the rest is retried later (transient).
        assert (result.outcome is Outcome.OK) == (message.id in received)
        if not result.ok:
            assert result.outcome is Outcome.TRANSIENT
            assert result.status == 500
            assert result.error == "emulated broker failure"


def test_large_batches_are_split_into_bounded_requests(
    dapr: DaprEmulator, settings_for: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "_MAX_BULK_ENTRIES", 7)
    msgs = messages_for(range(1, 31))
    assert outcomes(send(DaprTransport(settings_for()), msgs)) == [Outcome.OK] * 60
    for path in (BULK_EVENTS, BULK_UPDATES):
        assert len([c for c in dapr.calls if c.path == path]) == 5  # 30 entries, 7 at most each
    assert sorted(delivered_ids(dapr)) == sorted(m.id for m in msgs)


def test_large_bodies_are_split_by_size(
    dapr: DaprEmulator, settings_for: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    msgs = [m for m in messages_for(range(1, 11)) if m.topic == "task-events"]
    # Room for about three entries per request.
    monkeypatch.setattr(transport_module, "_MAX_BULK_BYTES", 3 * (len(msgs[0].body) + 250))
    assert outcomes(send(DaprTransport(settings_for()), msgs)) == [Outcome.OK] * 10
    assert len(dapr.calls) == 4  # 3 + 3 + 3 + 1
    assert sorted(delivered_ids(dapr)) == sorted(m.id for m in msgs)


def test_results_follow_the_input_order_across_topics(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    dapr.allowed_topics = {"task-updates"}
    msgs = messages_for([1, 2, 3])
    results = send(DaprTransport(settings_for()), msgs)
    assert outcomes(results) == [
        Outcome.PERMANENT if m.topic == "task-events" else Outcome.OK for m in msgs
    ]
    assert [r.status for r in results] == [403 if m.topic == "task-events" else 204 for m in msgs]


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_sidecar_down_every_message_transient(
    dapr: DaprEmulator, settings_for: MakeSettings, mode: str
) -> None:
    port = dapr.port
    dapr.refuse()
    transport = DaprTransport(settings_for(dapr_bulk_publish=mode))
    results = send(transport, messages_for(range(1, 21)))
    assert outcomes(results) == [Outcome.TRANSIENT] * 40
    assert all(r.status is None for r in results)
    assert f"cannot reach the Dapr sidecar at http://127.0.0.1:{port}" in (results[0].error or "")
    dapr.resume()
    assert outcomes(send(transport, messages_for([1, 2]))) == [Outcome.OK] * 4


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_hung_sidecar_costs_one_timeout_per_topic_not_one_per_message(
    dapr: DaprEmulator, settings_for: MakeSettings, mode: str
) -> None:
    dapr.hang(True)
    transport = DaprTransport(settings_for(dapr_publish_timeout=0.2, dapr_bulk_publish=mode))
    started = time.monotonic()
    results = send(transport, messages_for(range(1, 21)))
    elapsed = time.monotonic() - started
    dapr.hang(False)
    assert outcomes(results) == [Outcome.TRANSIENT] * 40
    assert all(r.status is None for r in results)
    assert "did not answer within 0.2s" in (results[0].error or "")
    # 40 messages x 0.2 s would be 8 s; topics are sent concurrently and stop at the first.
    assert elapsed < 3.0
    # One request per topic reached the sidecar; nothing was answered or recorded.
    assert [c.status for c in dapr.wait_for_calls(2)] == [None, None]
    time.sleep(0.05)
    assert len(dapr.calls) == 2 and dapr.received == []


def test_hung_sidecar_costs_one_timeout_per_topic_even_when_chunked(
    dapr: DaprEmulator, settings_for: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "_MAX_BULK_ENTRIES", 7)  # 30 per topic: 5 chunks
    dapr.hang(True)
    transport = DaprTransport(settings_for(dapr_publish_timeout=0.2))
    results = send(transport, messages_for(range(1, 31)))
    dapr.hang(False)
    assert outcomes(results) == [Outcome.TRANSIENT] * 60
    time.sleep(0.1)
    assert len(dapr.calls) == 2  # fails: 10, one time-out per chunk


def test_slow_but_within_the_timeout_is_delivered(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    dapr.delay(0.05)
    transport = DaprTransport(settings_for(dapr_publish_timeout=1.0))
    assert outcomes(send(transport, messages_for([1, 2]))) == [Outcome.OK] * 4


@pytest.mark.parametrize("mode", ["auto", "never"])
@pytest.mark.parametrize("status", [500, 503])
def test_http_5xx_is_transient(
    dapr: DaprEmulator, settings_for: MakeSettings, mode: str, status: int
) -> None:
    dapr.fail_fraction(1.0, status=status)
    results = send(DaprTransport(settings_for(dapr_bulk_publish=mode)), messages_for(range(1, 6)))
    assert outcomes(results) == [Outcome.TRANSIENT] * 10
    assert {r.status for r in results} == {status}


@pytest.mark.parametrize("status", [408, 429])
def test_retryable_4xx_is_transient(
    dapr: DaprEmulator, settings_for: MakeSettings, status: int
) -> None:
    dapr.respond_status(status)
    results = send(DaprTransport(settings_for()), messages_for([1]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 2
    assert {r.status for r in results} == {status}


def test_status_classes() -> None:
    assert classify_status(204) is Outcome.OK
    assert classify_status(200) is Outcome.OK
    for transient in (408, 425, 429, 500, 502, 503, 504):
        assert classify_status(transient) is Outcome.TRANSIENT
    for permanent in (400, 401, 403, 404, 405, 413):
        assert classify_status(permanent) is Outcome.PERMANENT


def test_a_broker_outage_does_not_cost_a_request_per_event(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    dapr.fail_fraction(1.0, status=500)
    transport = DaprTransport(settings_for(dapr_bulk_publish="never"))
    results = send(transport, messages_for(range(1, 21)))
    assert outcomes(results) == [Outcome.TRANSIENT] * 40
    assert {r.status for r in results} == {500}
    # Three failures in a row per topic, then the rest waits for the next round.
    assert len(dapr.calls) == 6
    not_sent = [r for r in results if (r.error or "").startswith("not sent: Dapr answered 500")]
    assert len(not_sent) == 40 - 6


def test_a_5xx_streak_is_broken_by_a_success(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    # Seeded: the failures come as ..FF.F.FF...F..F.... (never three in a row).
    dapr.fail_fraction(0.5, status=500)
    transport = DaprTransport(settings_for(dapr_bulk_publish="never"))
    msgs = [m for m in messages_for(range(1, 21)) if m.topic == "task-updates"]
    results = send(transport, msgs)
    assert len(dapr.calls) == 20  # no early stop
    assert "".join("F" if c.status == 500 else "." for c in dapr.calls) == "..FF.F.FF...F..F...."
    assert [r.ok for r in results] == [c.status == 204 for c in dapr.calls]
    assert sorted(delivered_ids(dapr)) == sorted(
        m.id for m, r in zip(msgs, results, strict=True) if r.ok
    )


@pytest.mark.parametrize(
    ("setup", "status", "hint"),
    [
        (lambda d: d.require_token("right"), 401, "DAPR_API_TOKEN"),
        (lambda d: setattr(d, "pubsubs", {"other"}), 404, "DAPR_PUBSUB_NAME"),
        (lambda d: setattr(d, "allowed_topics", set()), 403, "scopes"),
    ],
    ids=["401", "404-pubsub", "403-topic"],
)
@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_configuration_errors_are_permanent_and_stop_the_topic(
    dapr: DaprEmulator,
    settings_for: MakeSettings,
    setup: Callable[[DaprEmulator], None],
    status: int,
    hint: str,
    mode: str,
) -> None:
    setup(dapr)
    transport = DaprTransport(settings_for(dapr_api_token="wrong", dapr_bulk_publish=mode))
    results = send(transport, messages_for(range(1, 11)))
    assert outcomes(results) == [Outcome.PERMANENT] * 20
    assert {r.status for r in results} == {status}
    assert hint in (results[0].error or "")
    # One call per topic: the error is about the topic/pubsub/token, not one event.
    assert len(dapr.calls) == 2
    assert [c.status for c in dapr.calls] == [status, status]
    # A 404 for an unknown pubsub is a configuration error, not a missing bulk route.
    assert not transport.bulk_unsupported
    assert dapr.received == []


def test_a_malformed_entry_fails_alone(dapr: DaprEmulator, settings_for: MakeSettings) -> None:
    msgs = messages_for([1, 2, 3])
    bad = Message(id="bad-1", topic="task-events", key="9", body='{"not json')
    batch = [*msgs[:2], bad, *msgs[2:]]
    results = send(DaprTransport(settings_for()), batch)
    by_id = {m.id: r for m, r in zip(batch, results, strict=True)}
    assert not by_id["bad-1"].ok
    assert all(by_id[m.id].ok for m in msgs)
    assert sorted(delivered_ids(dapr)) == sorted(m.id for m in msgs)
    # The spoilt bulk request (400), then one single publish per entry of that topic.
    events_calls = [c for c in dapr.calls if c.path.endswith("/task-events")]
    assert [c.status for c in events_calls][:1] == [400]
    assert len(events_calls) == 1 + 4


def test_disabled_sends_nothing_and_keeps_the_events(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    transport = DaprTransport(settings_for(dapr_enabled=False))
    results = send(transport, messages_for([1, 2]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 4
    assert {r.error for r in results} == {"publishing disabled (DAPR_ENABLED=false)"}
    assert asyncio.run(transport.check_ready()) is False
    assert dapr.calls == [] and dapr.connections == 0


# --- never raises -----------------------------------------------------------------------------


def test_send_never_raises(
    dapr: DaprEmulator, settings_for: MakeSettings, log_records: list[dict[str, Any]]
) -> None:
    transport = DaprTransport(settings_for())

    async def broken(topic: str, messages: list[Message]) -> list[SendResult]:
        raise RuntimeError("bug in the transport")

    transport._send_topic = broken  # type: ignore[method-assign]
    results = send(transport, messages_for([1]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 2
    assert "bug in the transport" in (results[0].error or "")
    errors = [r for r in log_records if r["level"] == "ERROR"]
    assert errors and errors[0]["exception"] is not None


@pytest.mark.parametrize("method", ["_bulk_results", "_bulk_bodies"])
def test_unexpected_errors_inside_a_batch_keep_every_event(
    dapr: DaprEmulator,
    settings_for: MakeSettings,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("unexpected")

    async def aboom(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("unexpected")

    if method == "_bulk_bodies":
        monkeypatch.setattr(transport_module, "_bulk_bodies", boom)
    else:
        monkeypatch.setattr(DaprTransport, method, aboom)
    results = send(DaprTransport(settings_for()), messages_for([1, 2]))
    assert outcomes(results) == [Outcome.TRANSIENT] * 4
    assert all("unexpected" in (r.error or "") for r in results)


# --- connections, loops, token, readiness -----------------------------------------------------


def test_one_pooled_keep_alive_connection_is_reused_across_calls(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    transport = DaprTransport(settings_for())
    msgs = [m for m in messages_for(range(1, 31)) if m.topic == "task-updates"]

    async def many() -> None:
        try:
            for message in msgs:  # single publishes
                assert outcomes(await transport.send([message])) == [Outcome.OK]
            for start in range(0, 30, 10):  # bulk requests
                batch = msgs[start : start + 10]
                assert outcomes(await transport.send(batch)) == [Outcome.OK] * 10
            assert await transport.check_ready()
        finally:
            await transport.aclose()

    asyncio.run(many())
    assert len(dapr.received) == 60
    assert len(dapr.calls) == 30 + 3 + 1
    assert dapr.connections == 1


def test_usable_from_several_event_loops(dapr: DaprEmulator, settings_for: MakeSettings) -> None:
    transport = DaprTransport(settings_for())
    for n in range(3):
        assert outcomes(send(transport, messages_for([n + 1]))) == [Outcome.OK] * 2
    assert len(dapr.received) == 6


def test_usable_from_several_threads_at_once(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    transport = DaprTransport(settings_for())
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            assert outcomes(send(transport, messages_for([n, n + 100]))) == [Outcome.OK] * 4
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert failures == []
    assert len(dapr.received) == 16


def test_the_token_is_sent_and_never_logged(
    dapr: DaprEmulator, settings_for: MakeSettings, log_records: list[dict[str, Any]]
) -> None:
    dapr.require_token("s3cret-token")
    transport = DaprTransport(settings_for(dapr_api_token="s3cret-token"))
    assert outcomes(send(transport, messages_for([1, 2]))) == [Outcome.OK] * 4
    assert {c.headers.get("dapr-api-token") for c in dapr.calls} == {"s3cret-token"}
    wrong = DaprTransport(settings_for(dapr_api_token="wrong-s3cret"))
    results = send(wrong, messages_for([4]))
    assert outcomes(results) == [Outcome.PERMANENT] * 2
    dapr.bulk_supported = False
    send(DaprTransport(settings_for(dapr_api_token="s3cret-token")), messages_for([5, 6]))
    dapr.refuse()
    send(transport, messages_for([7, 8]))
    assert log_records
    text = repr(log_records) + repr(results)
    assert "s3cret-token" not in text and "wrong-s3cret" not in text


def test_no_token_no_header(dapr: DaprEmulator, settings_for: MakeSettings) -> None:
    send(DaprTransport(settings_for()), messages_for([1]))
    assert all("dapr-api-token" not in c.headers for c in dapr.calls)


def test_check_ready_uses_outbound_health(dapr: DaprEmulator, settings_for: MakeSettings) -> None:
    dapr.require_token("t")  # health endpoints are exempt, as in Dapr
    transport = DaprTransport(settings_for())

    def ready() -> bool:
        async def go() -> bool:
            try:
                return await transport.check_ready()
            finally:
                await transport.aclose()

        return asyncio.run(go())

    assert ready() is True
    assert [(c.method, c.path) for c in dapr.calls] == [("GET", "/v1.0/healthz/outbound")]
    dapr.healthy = False
    assert ready() is False
    dapr.healthy = True
    dapr.refuse()
    assert ready() is False


def test_settings_choose_the_sidecar_pubsub_and_topics(
    dapr: DaprEmulator, settings_for: MakeSettings
) -> None:
    dapr.pubsubs = {"my pubsub"}
    transport = DaprTransport(settings_for(dapr_pubsub_name="my pubsub"))
    assert transport.base_url == f"http://127.0.0.1:{dapr.port}"
    msgs = [Message(id="a", topic="odd/topic", key="1", body=messages_for([1])[0].body)]
    assert outcomes(send(transport, msgs)) == [Outcome.OK]
    assert dapr.received[0].pubsub == "my pubsub"
    assert dapr.received[0].topic == "odd/topic"


def test_default_settings_are_the_process_settings() -> None:
    from src.config import get_settings

    transport = DaprTransport()
    assert transport.settings is get_settings()
    assert transport.base_url == "http://127.0.0.1:3500"
