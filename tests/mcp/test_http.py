"""The streamable HTTP transport at /mcp/ of the running app (uvicorn): bearer token, acting
user, isolation, host checks (T-019)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from src.config import get_settings

from tests.mcp.conftest import LiveApp, fails, http_client, ok, task_rows, token
from tests.support.mcp_requests import INITIALIZE
from tests.support.mcp_requests import MCP_HEADERS as JSONRPC_HEADERS

pytestmark = pytest.mark.anyio


BAD_AUTHORIZATION = {
    "missing": None,
    "malformed": "Bearer not-a-jwt",
    "wrong-secret": f"Bearer {token('alice', secret='another-secret-another-secret-0123456789')}",
    "expired": f"Bearer {token('alice', expires_in=-60)}",
    "no-subject": f"Bearer {token(None)}",
    "not-bearer": f"Basic {token('alice')}",
}


async def test_requests_without_a_valid_bearer_token_get_401(
    live_sqlite_app: LiveApp, subtests: pytest.Subtests
) -> None:
    live_app = live_sqlite_app
    for case, authorization in BAD_AUTHORIZATION.items():
        with subtests.test(case=case):
            headers = dict(JSONRPC_HEADERS)
            if authorization:
                headers["Authorization"] = authorization
            response = httpx.post(live_app.mcp_url, json=INITIALIZE, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
    # The same request with a valid token is answered: the 401s were about the token.
    headers = {**JSONRPC_HEADERS, "Authorization": f"Bearer {token('alice')}"}
    assert httpx.post(live_app.mcp_url, json=INITIALIZE, headers=headers).status_code == 200
    assert task_rows() == []


async def test_the_acting_user_is_the_tokens_subject(live_app: LiveApp) -> None:
    async with http_client(live_app.mcp_url, token("alice")) as alice:
        created = await ok(alice, "add_task", {"title": "over http"})
        done = await ok(alice, "add_task", {"title": "done"})
        await ok(alice, "complete_task", {"task_id": done["task_id"]})
        assert "not the authenticated user" in await fails(alice, "list_tasks", {"user_id": "bob"})
        titles = [
            t["title"] for t in (await ok(alice, "list_tasks", {"user_id": "alice"}))["tasks"]
        ]
        assert titles == ["over http", "done"]
    assert {row["user_id"] for row in task_rows()} == {"alice"}

    before = task_rows()
    async with http_client(live_app.mcp_url, token("bob")) as bob:
        assert await ok(bob, "list_tasks") == {"tasks": []}
        message = await fails(bob, "delete_task", {"task_id": created["task_id"]})
        assert f"task {created['task_id']} not found" in message
        assert await ok(bob, "clear_completed") == {"deleted": 0}
        # Naming alice does not help bob: the token decides.
        assert "not the authenticated user" in await fails(
            bob, "complete_task", {"task_id": created["task_id"], "user_id": "alice"}
        )
    assert task_rows() == before


async def test_every_tool_works_over_http(live_app: LiveApp) -> None:
    async with http_client(live_app.mcp_url, token("carol")) as client:
        task_id = (
            await ok(client, "add_task", {"title": "a", "due_date": "2026-12-01T09:00:00+01:00"})
        )["task_id"]
        assert (await ok(client, "update_task", {"task_id": task_id, "title": "b"}))["title"] == "b"
        assert (await ok(client, "complete_task", {"task_id": task_id}))["status"] == "completed"
        assert (await ok(client, "uncomplete_task", {"task_id": task_id}))["status"] == (
            "uncompleted"
        )
        [listed] = (await ok(client, "list_tasks", {"status": "pending"}))["tasks"]
        assert (listed["title"], listed["due_date"]) == ("b", "2026-12-01T08:00:00Z")
        assert (await ok(client, "delete_task", {"task_id": task_id}))["status"] == "deleted"
        assert await ok(client, "clear_completed") == {"deleted": 0}
        assert "offset" in await fails(
            client, "add_task", {"title": "x", "due_date": "2026-12-01T09:00:00"}
        )
    assert task_rows() == []


async def test_handshake_era_clients_work_too(live_sqlite_app: LiveApp) -> None:
    """Clients that still use the initialize handshake (protocol 2025-xx) are served."""
    live_app = live_sqlite_app
    async with http_client(live_app.mcp_url, token("dave"), mode="legacy") as client:
        assert client.protocol_version.startswith("2025")
        assert (await ok(client, "add_task", {"title": "legacy"}))["status"] == "created"


def test_mcp_without_slash_redirects_and_hosts_are_checked(
    mcp_sqlite_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Kubernetes Service name, as the chart would configure it.
    monkeypatch.setenv("MCP_ALLOWED_HOSTS", '["pakaura-api", "pakaura-api.tasks.svc:*"]')
    get_settings.cache_clear()
    from src.main import create_app

    headers = {**JSONRPC_HEADERS, "Authorization": f"Bearer {token('alice')}"}
    with TestClient(create_app(get_settings()), base_url="http://pakaura-api") as client:
        redirect = client.post("/mcp", json=INITIALIZE, headers=headers, follow_redirects=False)
        assert redirect.status_code == 307
        assert redirect.headers["location"] == "http://pakaura-api/mcp/"

        assert client.post("/mcp/", json=INITIALIZE, headers=headers).status_code == 200
        other_port = {**headers, "Host": "pakaura-api.tasks.svc:8000"}
        assert client.post("/mcp/", json=INITIALIZE, headers=other_port).status_code == 200
        # DNS rebinding protection: an unknown Host is refused before anything else.
        rebound = {**headers, "Host": "attacker.example"}
        assert client.post("/mcp/", json=INITIALIZE, headers=rebound).status_code == 421
        foreign_origin = {**headers, "Origin": "http://attacker.example"}
        assert client.post("/mcp/", json=INITIALIZE, headers=foreign_origin).status_code == 403
