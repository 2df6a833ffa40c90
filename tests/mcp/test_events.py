"""MCP mutations produce exactly the outbox events REST produces (T-019).

Neither path publishes anything itself: the ORM hooks derive the events. The same sequence of
operations runs once through the REST routes and once through the MCP tools, for two users
of one database; their outbox rows must agree once ids, users and times are set aside.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mcp import Client
from src.config import get_settings
from src.db import get_engine
from src.events.wiring import install_task_hooks
from src.models import Task, outbox_table

from tests.mcp.conftest import LiveApp, connect, ok, token

pytestmark = pytest.mark.anyio

DUE = "2030-03-01T09:00:00+01:00"
MOVED = "2030-04-01T09:00:00+02:00"

# (operation, arguments): task arguments name tasks by their letter.
SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("add", {"as": "A", "title": "Pay rent", "description": "March", "due_date": DUE}),
    ("add", {"as": "B", "title": "Water plants"}),
    ("update", {"task": "A", "title": "Pay the rent"}),
    ("update", {"task": "A", "due_date": MOVED}),
    ("update", {"task": "A", "title": "Pay the rent"}),  # same value: no event
    ("complete", {"task": "A"}),
    ("uncomplete", {"task": "A"}),
    ("complete", {"task": "A"}),
    ("complete", {"task": "A"}),  # already completed: no event
    ("complete", {"task": "B"}),
    ("add", {"as": "C", "title": "Temporary", "due_date": DUE}),
    ("delete", {"task": "C"}),
    ("add", {"as": "D", "title": "Stays open"}),
    ("clear_completed", {}),
]


@pytest.fixture
def outbox_db(mcp_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Events on (the hooks write the outbox), no relay: the rows stay to be read."""
    # What importing src.models does (tests/hooks checks that); idempotent. Nothing here is
    # MCP-specific: REST and MCP get the same hooks.
    install_task_hooks(Task)
    monkeypatch.setenv("DAPR_ENABLED", "true")
    monkeypatch.setenv("RELAY_ENABLED", "false")
    get_settings.cache_clear()
    yield mcp_db


def _outbox_after(seq: int) -> list[dict[str, Any]]:
    query = sa.select(outbox_table).where(outbox_table.c.seq > seq).order_by(outbox_table.c.seq)
    with get_engine().connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _last_seq() -> int:
    with get_engine().connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(outbox_table.c.seq))).scalar() or 0)


Step = Callable[[str, dict[str, Any]], Awaitable[int | None]]
# Per request or transaction by design (issue 19).
_TRACE = ("traceparent", "traceid", "tracestate")


async def _run(step: Step) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Runs SCRIPT through `step`; returns all its outbox rows and those of clear_completed."""
    ids: dict[str, int] = {}
    start = _last_seq()
    clear_start = start
    for operation, arguments in SCRIPT:
        arguments = dict(arguments)
        name = arguments.pop("as", None)
        if "task" in arguments:
            arguments["task"] = ids[arguments["task"]]
        if operation == "clear_completed":
            clear_start = _last_seq()
        task_id = await step(operation, arguments)
        if name:
            assert task_id is not None
            ids[name] = task_id
    return _outbox_after(start), _outbox_after(clear_start)


def _rest_step(client: TestClient, user: str) -> Step:
    headers = {"Authorization": f"Bearer {token(user)}"}
    base = f"/api/{user}/tasks"

    async def step(operation: str, arguments: dict[str, Any]) -> int | None:
        task = arguments.pop("task", None)
        if operation == "add":
            response = client.post(base, json=arguments, headers=headers)
        elif operation == "update":
            response = client.patch(f"{base}/{task}", json=arguments, headers=headers)
        elif operation in ("complete", "uncomplete"):
            response = client.patch(f"{base}/{task}/{operation}", headers=headers)
        elif operation == "delete":
            response = client.delete(f"{base}/{task}", headers=headers)
        else:
            response = client.delete(f"{base}/completed", headers=headers)
        assert response.status_code < 300, response.text
        body = response.json() if response.content else {}
        return body.get("id") if isinstance(body, dict) else None

    return step


def _mcp_step(client: Client) -> Step:
    async def step(operation: str, arguments: dict[str, Any]) -> int | None:
        if "task" in arguments:
            arguments["task_id"] = arguments.pop("task")
        tool = "clear_completed" if operation == "clear_completed" else f"{operation}_task"
        result = await ok(client, tool, arguments)
        return result.get("task_id")

    return step


def _normalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Task ids become ordinals, the user and times placeholders; the rest must be equal."""
    ordinals: dict[str, int] = {}

    def ordinal(value: Any) -> str:
        return f"task#{ordinals.setdefault(str(value), len(ordinals) + 1)}"

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: clean(v, k) for k, v in value.items()}
        if key in ("task_id", "subject", "partitionkey", "id"):  # "id" of the task snapshot
            return ordinal(value)
        if key == "user_id":
            return "<user>"
        if key in ("timestamp", "created_at", "updated_at", "correlationid", *_TRACE):
            return "<varies>"
        return value

    normalized = []
    for row in rows:
        event = json.loads(row["payload"])
        assert event["subject"] == row["partition_key"] == event["partitionkey"]
        assert event["data"]["user_id"] and event["time"] and event["id"]
        del event["id"], event["time"]  # unique per event by design
        normalized.append({"topic": row["topic"], **clean(event)})
    return normalized


async def test_mcp_mutations_produce_the_same_outbox_events_as_rest(outbox_db: str) -> None:
    from src.main import create_app

    with TestClient(create_app(get_settings())) as api:
        rest_rows, rest_clear = await _run(_rest_step(api, "rest-user"))
    async with connect("mcp-user") as client:
        mcp_rows, mcp_clear = await _run(_mcp_step(client))

    assert rest_rows, "REST wrote no outbox rows: are the ORM hooks installed?"
    assert _normalized(mcp_rows) == _normalized(rest_rows)
    assert {json.loads(r["payload"])["data"]["user_id"] for r in mcp_rows} == {"mcp-user"}

    # clear_completed: one task.deleted + task.sync per removed task (A and B), nothing else
    # about the task left open.
    for rows in (rest_clear, mcp_clear):
        events = [json.loads(r["payload"]) for r in rows]
        lifecycle = [(e["type"], e["subject"]) for e in events if e["type"].startswith("task.")]
        removed = sorted({subject for _, subject in lifecycle})
        assert len(removed) == 2
        assert sorted(lifecycle) == sorted(
            [("task.deleted", s) for s in removed] + [("task.sync", s) for s in removed]
        )


async def test_events_of_an_http_tool_call_carry_its_request_id(
    outbox_db: str, live_app: LiveApp
) -> None:
    """The X-Request-ID of the MCP HTTP request is the events' correlation id."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    start = _last_seq()
    headers = {"Authorization": f"Bearer {token('erin')}", "X-Request-ID": "mcp-call-42"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=20) as http,
        Client(streamable_http_client(live_app.mcp_url, http_client=http)) as client,
    ):
        await ok(client, "add_task", {"title": "correlated"})
    events = [json.loads(row["payload"]) for row in _outbox_after(start)]
    assert [e["type"] for e in events] == ["task.created", "task.sync"]
    assert {e["correlationid"] for e in events} == {"mcp-call-42"}
    assert {e["data"]["user_id"] for e in events} == {"erin"}
