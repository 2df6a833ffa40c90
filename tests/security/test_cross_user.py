"""Cross-user reads and writes are impossible over REST and MCP (issue 7, part 4).

A valid token of user B on B's own path (or MCP tools called by B) must neither see nor change
any task of user A; A's tasks look exactly like missing ones (404 / tool error).
"""

from __future__ import annotations

import httpx
import pytest

from bench.reliability import Stack
from bench.reliability._mcp_client import call_tool_sync

OWNER, OTHER = "owner-a", "other-b"


@pytest.fixture(scope="module")
def owner_tasks(secured_stack: Stack) -> list[dict[str, object]]:
    headers = secured_stack.headers(OWNER)
    tasks = []
    with httpx.Client(base_url=secured_stack.api.base_url, headers=headers) as client:
        for title in ("owner open", "owner done"):
            response = client.post(f"/api/{OWNER}/tasks", json={"title": title})
            assert response.status_code == 201, response.text
            tasks.append(response.json())
        client.patch(f"/api/{OWNER}/tasks/{tasks[1]['id']}/complete").raise_for_status()
    return tasks


def _owner_view(stack: Stack) -> list[dict[str, object]]:
    response = httpx.get(f"{stack.api.base_url}/api/{OWNER}/tasks", headers=stack.headers(OWNER))
    response.raise_for_status()
    tasks: list[dict[str, object]] = response.json()
    return tasks


def test_rest_other_user_cannot_read_or_write(
    secured_stack: Stack, owner_tasks: list[dict[str, object]]
) -> None:
    before = _owner_view(secured_stack)
    missing_id = 2_000_000_000  # far beyond any id this run creates
    with httpx.Client(
        base_url=secured_stack.api.base_url, headers=secured_stack.headers(OTHER)
    ) as client:
        for task in owner_tasks:
            attempts = [
                ("GET", f"/api/{OTHER}/tasks/{task['id']}", None),
                ("PUT", f"/api/{OTHER}/tasks/{task['id']}", {"title": "stolen"}),
                ("PATCH", f"/api/{OTHER}/tasks/{task['id']}", {"completed": True}),
                ("PATCH", f"/api/{OTHER}/tasks/{task['id']}/complete", None),
                ("PATCH", f"/api/{OTHER}/tasks/{task['id']}/uncomplete", None),
                ("DELETE", f"/api/{OTHER}/tasks/{task['id']}", None),
            ]
            for method, path, body in attempts:
                theirs = client.request(method, path, json=body)
                # Indistinguishable from a missing task: same status, same shape of detail.
                missing = client.request(
                    method, path.replace(str(task["id"]), str(missing_id)), json=body
                )
                assert theirs.status_code == 404, (method, path, theirs.text)
                assert theirs.json()["detail"].replace(str(task["id"]), "N") == missing.json()[
                    "detail"
                ].replace(str(missing_id), "N")
        assert client.get(f"/api/{OTHER}/tasks").json() == []
        assert client.get(f"/api/{OTHER}/tasks?status=completed").json() == []
        cleared = client.delete(f"/api/{OTHER}/tasks/completed")
        assert cleared.status_code == 200
        assert cleared.json() == {"deleted": 0}
    assert _owner_view(secured_stack) == before


def test_mcp_other_user_cannot_read_or_write(
    secured_stack: Stack, owner_tasks: list[dict[str, object]]
) -> None:
    before = _owner_view(secured_stack)
    token = secured_stack.token(OTHER)
    with httpx.Client(base_url=secured_stack.api.base_url) as client:
        listed = call_tool_sync(client, "list_tasks", {"status": "all"}, token=token)
        assert not listed.is_error
        assert listed.structured == {"tasks": []}
        for task in owner_tasks:
            for name, args in [
                ("update_task", {"task_id": task["id"], "title": "stolen"}),
                ("complete_task", {"task_id": task["id"]}),
                ("uncomplete_task", {"task_id": task["id"]}),
                ("delete_task", {"task_id": task["id"]}),
            ]:
                result = call_tool_sync(client, name, args, token=token)
                assert result.is_error, (name, result)
                assert "not found" in result.text
        # Claiming to be the owner in the arguments does not make it so.
        claims: list[tuple[str, dict[str, object]]] = [
            ("list_tasks", {"user_id": OWNER}),
            ("add_task", {"title": "planted", "user_id": OWNER}),
            ("delete_task", {"task_id": owner_tasks[0]["id"], "user_id": OWNER}),
            ("clear_completed", {"user_id": OWNER}),
        ]
        for name, args in claims:
            result = call_tool_sync(client, name, args, token=token)
            assert result.is_error, (name, result)
        cleared = call_tool_sync(client, "clear_completed", {}, token=token)
        assert cleared.structured == {"deleted": 0}
    assert _owner_view(secured_stack) == before
