"""Every task route and what a client sees, on SQLite and PostgreSQL (issue 2, contract §5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.app import Api
from tests.support.factories import payload

TASK_KEYS = {"id", "user_id", "title", "description", "completed", "due_date"} | {
    "created_at",
    "updated_at",
}


def when(value: str) -> datetime:
    """An ISO 8601 timestamp from a response; it must carry an offset."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() is not None, f"{value!r} has no time zone"
    return parsed


def create(api: Api, user: str = "alice", **body: Any) -> dict[str, Any]:
    body.setdefault("title", "Buy milk")
    response = api.client.post(f"/api/{user}/tasks", json=body, headers=api.auth(user))
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def get(api: Api, task_id: int, user: str = "alice") -> dict[str, Any]:
    response = api.client.get(f"/api/{user}/tasks/{task_id}", headers=api.auth(user))
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


# --- POST /api/{user}/tasks ------------------------------------------------------------------


def test_create_returns_the_stored_task(api: Api) -> None:
    before = datetime.now(UTC)
    task = create(
        api, title="  Buy milk  ", description="2 litres", due_date="2030-05-01T09:30:00+02:00"
    )

    assert set(task) == TASK_KEYS
    assert task["user_id"] == "alice"
    assert task["title"] == "Buy milk"  # trimmed
    assert task["description"] == "2 litres"
    assert task["completed"] is False
    assert when(task["due_date"]) == datetime(2030, 5, 1, 7, 30, tzinfo=UTC)
    assert before - timedelta(seconds=5) <= when(task["created_at"]) <= datetime.now(UTC)
    assert when(task["updated_at"]) >= when(task["created_at"])
    assert get(api, task["id"]) == task
    [row] = api.rows()
    assert (row["id"], row["user_id"], row["title"]) == (task["id"], "alice", "Buy milk")


def test_create_with_only_a_title_uses_defaults(api: Api) -> None:
    task = create(api, title="Call mum")
    assert (task["description"], task["due_date"], task["completed"]) == (None, None, False)


def test_what_is_posted_is_what_is_read_back(api: Api) -> None:
    for body in (payload(), payload(due=True), payload(description=None)):
        task = create(api, **body)
        assert (task["title"], task["description"]) == (body["title"], body["description"])
        if "due_date" in body:
            assert when(task["due_date"]) == datetime.fromisoformat(body["due_date"])
        else:
            assert task["due_date"] is None
        assert get(api, task["id"]) == task


def test_created_ids_are_distinct_and_growing(api: Api) -> None:
    ids = [create(api, title=f"t{i}")["id"] for i in range(3)]
    assert ids == sorted(set(ids))


def test_a_deleted_id_is_never_given_to_a_new_task(api: Api) -> None:
    # The id is the events' subject and partition key: reuse would mix two tasks' streams.
    first = create(api, title="first")
    second = create(api, title="second")
    assert (
        api.client.delete(f"/api/alice/tasks/{second['id']}", headers=api.auth("alice")).status_code
        == 204
    )
    third = create(api, title="third")
    assert third["id"] > second["id"] > first["id"]


# --- GET /api/{user}/tasks -------------------------------------------------------------------


def test_list_is_empty_for_a_new_user(api: Api) -> None:
    response = api.client.get("/api/alice/tasks", headers=api.auth("alice"))
    assert response.status_code == 200
    assert response.json() == []


def test_list_returns_own_tasks_oldest_first(api: Api) -> None:
    mine = [create(api, title=f"mine {i}") for i in range(3)]
    create(api, user="bob", title="not yours")
    response = api.client.get("/api/alice/tasks", headers=api.auth("alice"))
    assert response.status_code == 200
    assert response.json() == mine


@pytest.mark.parametrize(
    ("status", "expected"),
    [("all", ["open", "done"]), ("pending", ["open"]), ("completed", ["done"])],
)
def test_list_filters_by_status(api: Api, status: str, expected: list[str]) -> None:
    create(api, title="open")
    done = create(api, title="done")
    api.client.patch(f"/api/alice/tasks/{done['id']}/complete", headers=api.auth("alice"))
    response = api.client.get(f"/api/alice/tasks?status={status}", headers=api.auth("alice"))
    assert response.status_code == 200
    assert [t["title"] for t in response.json()] == expected


# --- GET /api/{user}/tasks/{id} --------------------------------------------------------------


def test_get_missing_task_is_404(api: Api) -> None:
    response = api.client.get("/api/alice/tasks/999999", headers=api.auth("alice"))
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


@pytest.mark.parametrize("task_id", [0, -1, 2**31, 2**63, 10**30])
def test_get_impossible_id_is_404_not_a_server_error(api: Api, task_id: int) -> None:
    # Ids beyond the integer column (PostgreSQL INTEGER, SQLite INTEGER) cannot exist.
    response = api.client.get(f"/api/alice/tasks/{task_id}", headers=api.auth("alice"))
    assert response.status_code == 404


# --- PUT / PATCH /api/{user}/tasks/{id} -------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_update_changes_only_the_fields_sent(api: Api, method: str) -> None:
    task = create(api, title="Old", description="keep me", due_date="2030-01-01T10:00:00+00:00")
    response = api.client.request(
        method, f"/api/alice/tasks/{task['id']}", json={"title": " New "}, headers=api.auth("alice")
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["title"] == "New"
    for unchanged in ("id", "user_id", "description", "due_date", "completed", "created_at"):
        assert updated[unchanged] == task[unchanged], unchanged
    assert when(updated["updated_at"]) > when(task["updated_at"])
    assert get(api, task["id"]) == updated


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_update_every_field(api: Api, method: str) -> None:
    task = create(api, title="Old")
    body = {
        "title": "New",
        "description": "details",
        "due_date": "2031-02-03T04:05:06-05:00",
        "completed": True,
    }
    response = api.client.request(
        method, f"/api/alice/tasks/{task['id']}", json=body, headers=api.auth("alice")
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert (updated["title"], updated["description"], updated["completed"]) == (
        "New",
        "details",
        True,
    )
    assert when(updated["due_date"]) == datetime(2031, 2, 3, 9, 5, 6, tzinfo=UTC)
    assert get(api, task["id"]) == updated


def test_update_clears_description_and_due_date_with_null(api: Api) -> None:
    task = create(api, description="x", due_date="2030-01-01T10:00:00+00:00")
    response = api.client.put(
        f"/api/alice/tasks/{task['id']}",
        json={"description": None, "due_date": None},
        headers=api.auth("alice"),
    )
    assert response.status_code == 200
    assert (response.json()["description"], response.json()["due_date"]) == (None, None)
    assert get(api, task["id"])["due_date"] is None


def test_update_with_an_empty_body_changes_nothing(api: Api) -> None:
    task = create(api)
    response = api.client.patch(
        f"/api/alice/tasks/{task['id']}", json={}, headers=api.auth("alice")
    )
    assert response.status_code == 200
    assert response.json() == task


def test_update_can_reopen_a_completed_task(api: Api) -> None:
    task = create(api)
    api.client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=api.auth("alice"))
    response = api.client.put(
        f"/api/alice/tasks/{task['id']}", json={"completed": False}, headers=api.auth("alice")
    )
    assert response.status_code == 200
    assert get(api, task["id"])["completed"] is False


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_update_missing_task_is_404_and_creates_nothing(api: Api, method: str) -> None:
    response = api.client.request(
        method, "/api/alice/tasks/424242", json={"title": "x"}, headers=api.auth("alice")
    )
    assert response.status_code == 404
    assert api.rows() == []


# --- DELETE /api/{user}/tasks/{id} ------------------------------------------------------------


def test_delete_removes_the_task(api: Api) -> None:
    task = create(api)
    keep = create(api, title="keep")
    response = api.client.delete(f"/api/alice/tasks/{task['id']}", headers=api.auth("alice"))
    assert response.status_code == 204
    assert response.content == b""
    assert (
        api.client.get(f"/api/alice/tasks/{task['id']}", headers=api.auth("alice")).status_code
        == 404
    )
    assert [row["id"] for row in api.rows()] == [keep["id"]]


def test_delete_twice_is_404_the_second_time(api: Api) -> None:
    task = create(api)
    url = f"/api/alice/tasks/{task['id']}"
    assert api.client.delete(url, headers=api.auth("alice")).status_code == 204
    assert api.client.delete(url, headers=api.auth("alice")).status_code == 404


# --- PATCH .../complete and .../uncomplete ---------------------------------------------------


def test_complete_then_uncomplete(api: Api) -> None:
    task = create(api)
    done = api.client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=api.auth("alice"))
    assert done.status_code == 200
    assert done.json()["completed"] is True
    assert when(done.json()["updated_at"]) > when(task["updated_at"])
    assert get(api, task["id"])["completed"] is True

    reopened = api.client.patch(
        f"/api/alice/tasks/{task['id']}/uncomplete", headers=api.auth("alice")
    )
    assert reopened.status_code == 200
    assert reopened.json()["completed"] is False
    assert get(api, task["id"])["completed"] is False


@pytest.mark.parametrize(("action", "completed"), [("complete", True), ("uncomplete", False)])
def test_complete_and_uncomplete_are_idempotent(api: Api, action: str, completed: bool) -> None:
    task = create(api)
    if not completed:
        api.client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=api.auth("alice"))
    url = f"/api/alice/tasks/{task['id']}/{action}"
    first = api.client.patch(url, headers=api.auth("alice"))
    second = api.client.patch(url, headers=api.auth("alice"))
    assert first.status_code == second.status_code == 200
    assert first.json()["completed"] is second.json()["completed"] is completed
    assert second.json() == first.json()  # a repeat changes nothing, not even updated_at


@pytest.mark.parametrize("action", ["complete", "uncomplete"])
def test_complete_missing_task_is_404(api: Api, action: str) -> None:
    response = api.client.patch(f"/api/alice/tasks/31337/{action}", headers=api.auth("alice"))
    assert response.status_code == 404


# --- DELETE /api/{user}/tasks/completed -------------------------------------------------------


def test_clear_completed_deletes_only_own_completed_tasks(api: Api) -> None:
    open_task = create(api, title="open")
    for title in ("done 1", "done 2"):
        task = create(api, title=title)
        api.client.patch(f"/api/alice/tasks/{task['id']}/complete", headers=api.auth("alice"))
    bobs = create(api, user="bob", title="bob's done")
    api.client.patch(f"/api/bob/tasks/{bobs['id']}/complete", headers=api.auth("bob"))

    response = api.client.delete("/api/alice/tasks/completed", headers=api.auth("alice"))
    assert response.status_code == 200
    assert response.json() == {"deleted": 2}
    remaining = api.client.get("/api/alice/tasks", headers=api.auth("alice")).json()
    assert [t["id"] for t in remaining] == [open_task["id"]]
    assert get(api, bobs["id"], user="bob")["completed"] is True


def test_clear_completed_with_nothing_to_clear(api: Api) -> None:
    create(api)
    response = api.client.delete("/api/alice/tasks/completed", headers=api.auth("alice"))
    assert response.status_code == 200
    assert response.json() == {"deleted": 0}
    assert len(api.rows()) == 1


# --- Cross-user isolation ---------------------------------------------------------------------

FOREIGN_CALLS = [
    ("GET", "", None),
    ("PUT", "", {"title": "hijacked"}),
    ("PATCH", "", {"completed": True}),
    ("DELETE", "", None),
    ("PATCH", "/complete", None),
    ("PATCH", "/uncomplete", None),
]


@pytest.mark.parametrize(("method", "suffix", "body"), FOREIGN_CALLS)
def test_another_users_task_looks_missing_and_stays_untouched(
    api: Api, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    bobs = create(api, user="bob", title="bob's")
    before = api.state()
    foreign = api.client.request(
        method, f"/api/alice/tasks/{bobs['id']}{suffix}", json=body, headers=api.auth("alice")
    )
    missing_id = bobs["id"] + 1000
    missing = api.client.request(
        method, f"/api/alice/tasks/{missing_id}{suffix}", json=body, headers=api.auth("alice")
    )
    assert foreign.status_code == missing.status_code == 404
    # Same answer as for an id that does not exist, apart from the id itself.
    assert foreign.json()["detail"].replace(str(bobs["id"]), "ID") == missing.json()[
        "detail"
    ].replace(str(missing_id), "ID")
    assert api.state() == before


def test_lists_never_show_another_users_tasks(api: Api) -> None:
    create(api, user="bob", title="bob's")
    for status in ("all", "pending", "completed"):
        response = api.client.get(f"/api/alice/tasks?status={status}", headers=api.auth("alice"))
        assert response.json() == []


# --- Documentation ----------------------------------------------------------------------------


def test_openapi_documents_every_task_route(api: Api) -> None:
    spec = api.client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    expected = {
        "/api/{user_id}/tasks": {"get", "post"},
        "/api/{user_id}/tasks/completed": {"delete"},
        "/api/{user_id}/tasks/{task_id}": {"get", "put", "patch", "delete"},
        "/api/{user_id}/tasks/{task_id}/complete": {"patch"},
        "/api/{user_id}/tasks/{task_id}/uncomplete": {"patch"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
    assert api.client.get("/docs").status_code == 200
