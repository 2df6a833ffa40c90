"""MCP tools: over stdio (in memory here, no request) each call is a trace of its own; over
HTTP the request's traceparent is the context, as for REST (issue 19)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mcp.conftest import connect, ok
from tests.support.app import Api, make_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def api(sqlite_url: str) -> Iterator[Api]:
    with make_client(sqlite_url, DAPR_ENABLED="true", RELAY_ENABLED="false") as api:
        yield api


async def test_each_stdio_tool_call_is_a_trace_of_its_own(api: Api) -> None:
    async with connect("erin") as client:
        first = await ok(client, "add_task", {"title": "one"})
        await ok(client, "add_task", {"title": "two"})
        created = api.take_events()
        await ok(client, "complete_task", {"task_id": first["task_id"]})
        await ok(client, "complete_task", {"task_id": first["task_id"] + 1})
        api.take_events()
        assert await ok(client, "clear_completed") == {"deleted": 2}
        cleared = api.take_events()
    traces = [e["traceparent"][3:35] for e in created]
    assert len(created) == 4 and traces[0] == traces[1] != traces[2] == traces[3]
    assert len(cleared) == 4 and len({e["traceparent"] for e in cleared}) == 1
    assert cleared[0]["traceparent"][3:35] not in traces


def test_an_http_tool_call_carries_its_request_s_trace(api: Api) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    headers = {
        **api.auth("erin"),
        "Accept": "application/json, text/event-stream",
        "traceparent": parent,
    }
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "add_task", "arguments": {"title": "over http"}},
    }
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    started = api.client.post("/mcp/", json=init, headers=headers)
    assert started.status_code == 200, started.text
    session = started.headers.get("mcp-session-id")
    more = {**headers, **({"mcp-session-id": session} if session else {})}
    api.client.post(
        "/mcp/", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=more
    )
    answer = api.client.post("/mcp/", json=call, headers=more)
    assert answer.status_code == 200, answer.text
    events = api.take_events()
    assert [e["type"] for e in events] == ["task.created", "task.sync"]
    assert {e["traceparent"] for e in events} == {parent}
