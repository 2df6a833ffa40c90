"""The API process runs the outbox relay from its lifespan and shows it in /health, /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.app import make_client
from tests.support.dapr_emulator import DaprEmulator


@pytest.fixture
def sidecar() -> Iterator[DaprEmulator]:
    with DaprEmulator() as emulator:
        yield emulator


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_request_s_events_reach_the_sidecar_without_any_publishing_call(
    db_url: str, sidecar: DaprEmulator
) -> None:
    with make_client(db_url, DAPR_ENABLED="true", DAPR_HTTP_PORT=str(sidecar.port)) as api:
        headers = {**api.auth("alice"), "X-Request-ID": "req-relay-1"}
        created = api.client.post(
            "/api/alice/tasks",
            json={"title": "pay rent", "due_date": "2030-01-01T09:00:00+01:00"},
            headers=headers,
        )
        assert created.status_code == 201
        task_id = str(created.json()["id"])

        assert _wait_for(lambda: len(sidecar.received) >= 3)
        types = sorted(d.event["type"] for d in sidecar.received)
        assert types == ["reminder.scheduled", "task.created", "task.sync"]
        assert {d.event["subject"] for d in sidecar.received} == {task_id}
        assert {d.event["correlationid"] for d in sidecar.received} == {"req-relay-1"}
        assert {d.metadata.get("partitionKey") for d in sidecar.received} == {task_id}

        # Delivered rows leave the outbox; /health and /metrics say so.
        assert _wait_for(lambda: api.client.get("/health").json()["outbox"]["backlog"] == 0)
        health = api.client.get("/health").json()
        assert health["relay"]["state"] == "leader"
        metrics = api.client.get("/metrics")
        assert metrics.status_code == 200
        assert "outbox_relay_leader 1.0" in metrics.text


def test_with_dapr_disabled_no_relay_runs_and_nothing_is_sent(
    sqlite_url: str, sidecar: DaprEmulator
) -> None:
    with make_client(sqlite_url, DAPR_HTTP_PORT=str(sidecar.port)) as api:
        assert (
            api.client.post(
                "/api/alice/tasks", json={"title": "quiet"}, headers=api.auth("alice")
            ).status_code
            == 201
        )
        health = api.client.get("/health").json()
        assert health["relay"]["state"] == "disabled"
        assert health["outbox"]["backlog"] == 0
    assert sidecar.received == []
    assert sidecar.calls == []
