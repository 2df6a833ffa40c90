"""`GET /health`: liveness plus database, outbox backlog and relay state (issue 2, §5)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from src.models import outbox_table

from hooks import utc_now
from tests.support.app import Api, make_client


def test_health_needs_no_token_and_reports_ok(api: Api) -> None:
    response = api.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["outbox"] == {"backlog": 0, "oldest_pending_age_seconds": None}
    assert isinstance(body["relay"], dict)


def _pending_event(age: timedelta) -> dict[str, object]:
    now = utc_now()
    event_id = str(uuid.uuid4())
    return {
        "event_id": event_id,
        "topic": "task-events",
        "partition_key": "1",
        "payload": json.dumps({"id": event_id}),
        "created_at": now - age,
        # Not due for an hour: a relay running beside the test leaves them where they are.
        "next_attempt_at": now + timedelta(hours=1),
    }


def test_health_reports_the_outbox_backlog_and_its_oldest_age(db_url: str) -> None:
    with make_client(db_url, RELAY_ENABLED="false") as api:
        with api.engine.begin() as conn:
            conn.execute(
                outbox_table.insert(),
                [_pending_event(timedelta(seconds=90)), _pending_event(timedelta(seconds=5))],
            )
        response = api.client.get("/health")
    assert response.status_code == 200
    outbox = response.json()["outbox"]
    assert outbox["backlog"] == 2
    assert 90 <= outbox["oldest_pending_age_seconds"] < 150


def test_health_is_503_when_the_database_is_down(db_url: str) -> None:
    # Same backend, unreachable: a SQLite file in a missing directory, a closed PostgreSQL port.
    if db_url.startswith("sqlite"):
        down = "sqlite:////nonexistent-pakaura-dir/db.sqlite"
    else:
        down = "postgresql+psycopg://pakaura:hunter2-secret@127.0.0.1:1/pakaura"
    with make_client(down, DATABASE_CREATE_TABLES="false", RELAY_ENABLED="false") as api:
        health = api.client.get("/health")
        tasks = api.client.get("/api/alice/tasks", headers=api.auth("alice"))
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert health.json()["database"].startswith("unavailable")
    assert "hunter2" not in health.text  # no credentials in the answer
    # A request that needs the database says "retry later" rather than crashing.
    assert tasks.status_code == 503
    assert tasks.headers["retry-after"]
    assert "hunter2" not in tasks.text
