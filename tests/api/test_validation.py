"""Bad input gets 422 naming the offending field, and nothing is written (issue 2, §5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from src.models import Task

from tests.support.app import Api

MakeTasks = Callable[..., list[Task]]


def assert_names(response: Any, field: str) -> None:  # the TestClient's response
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(field in error["loc"] for error in errors), (field, errors)
    assert all(isinstance(error["msg"], str) and error["msg"] for error in errors)


@pytest.fixture
def alices_task(make_tasks: MakeTasks) -> int:
    (task,) = make_tasks(user_id="alice", title="Original", description="as stored")
    assert task.id is not None
    return task.id


# --- POST ------------------------------------------------------------------------------------

CREATE_ERRORS: list[tuple[str, Any]] = [
    ("title", {}),
    ("title", {"title": ""}),
    ("title", {"title": "   "}),
    ("title", {"title": "x" * 201}),
    ("title", {"title": None}),
    ("title", {"title": 42}),
    ("title", {"title": ["a"]}),
    ("description", {"title": "ok", "description": "x" * 1001}),
    ("description", {"title": "ok", "description": 5}),
    ("due_date", {"title": "ok", "due_date": "2030-01-01T10:00:00"}),  # no offset
    ("due_date", {"title": "ok", "due_date": "next tuesday"}),
    ("due_date", {"title": "ok", "due_date": "2030-02-30T10:00:00Z"}),
    ("completed", {"title": "ok", "completed": True}),  # not a create field
    ("user_id", {"title": "ok", "user_id": "bob"}),  # the owner comes from the path
    ("id", {"title": "ok", "id": 7}),
    ("priority", {"title": "ok", "priority": "high"}),
]


def test_create_rejects_bad_fields_by_name(api: Api, alices_task: int) -> None:
    before = api.state()
    for field, body in CREATE_ERRORS:
        response = api.client.post("/api/alice/tasks", json=body, headers=api.auth("alice"))
        assert_names(response, field)
        assert api.state() == before, body


def test_create_rejects_a_body_that_is_not_a_json_object(api: Api, alices_task: int) -> None:
    before = api.state()
    for content in [b"{not json", b'["title"]', b'"title"', b"null", b""]:
        response = api.client.post(
            "/api/alice/tasks",
            content=content,
            headers={**api.auth("alice"), "Content-Type": "application/json"},
        )
        assert response.status_code == 422, content
        assert api.state() == before


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"title": "x" * 201}, "String should have at most 200 characters"),
        ({"title": "   "}, "String should have at least 1 character"),
        ({"title": "ok", "description": "x" * 1001}, "String should have at most 1000 characters"),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_length_messages_speak_of_characters(
    api: Api, alices_task: int, body: dict[str, str], message: str, method: str
) -> None:
    path = "/api/alice/tasks" + ("" if method == "POST" else f"/{alices_task}")
    response = api.client.request(method, path, json=body, headers=api.auth("alice"))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["msg"] == message
    assert "items" not in response.text


def test_title_limits_apply_as_sent_and_blanks_are_trimmed(api: Api) -> None:
    """The OpenAPI schema states the rule exactly (maxLength + pattern): at most 200
    characters as sent, something left once trimmed."""
    longest = "x" * 200
    padded = f"  {'x' * 196}  "
    for title, stored in [(longest, longest), (padded, "x" * 196), ("a", "a")]:
        response = api.client.post(
            "/api/alice/tasks",
            json={"title": title, "description": "d" * 1000},
            headers=api.auth("alice"),
        )
        assert response.status_code == 201, response.text
        assert response.json()["title"] == stored
        assert len(response.json()["description"]) == 1000
    response = api.client.post(
        "/api/alice/tasks", json={"title": f"  {longest}  "}, headers=api.auth("alice")
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "title"]


# --- PUT / PATCH ------------------------------------------------------------------------------

UPDATE_ERRORS: list[tuple[str, Any]] = [
    ("title", {"title": None}),  # may be omitted, not cleared
    ("title", {"title": ""}),
    ("title", {"title": "  "}),
    ("title", {"title": "x" * 201}),
    ("completed", {"completed": None}),
    ("completed", {"completed": "maybe"}),
    ("description", {"description": "x" * 1001}),
    ("due_date", {"due_date": "2030-01-01 10:00"}),
    ("user_id", {"user_id": "bob"}),
    ("id", {"id": 1}),
    ("created_at", {"created_at": "2020-01-01T00:00:00Z"}),
    ("colour", {"colour": "red"}),
    # A valid change next to a bad one: the whole request fails, nothing half-applied.
    ("due_date", {"title": "Changed", "due_date": "tomorrow"}),
    ("title", {"completed": True, "title": ""}),
]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_update_rejects_bad_fields_by_name(api: Api, alices_task: int, method: str) -> None:
    before = api.state()
    for field, body in UPDATE_ERRORS:
        response = api.client.request(
            method, f"/api/alice/tasks/{alices_task}", json=body, headers=api.auth("alice")
        )
        assert_names(response, field)
        assert api.state() == before, body


# --- Query and path parameters ----------------------------------------------------------------

BAD_QUERIES = [
    ("status=done", "status"),
    ("status=", "status"),
    ("limit=0", "limit"),
    ("limit=-5", "limit"),
    ("limit=501", "limit"),
    ("limit=ten", "limit"),
    ("offset=-1", "offset"),
    ("offset=x", "offset"),
]


def test_list_rejects_bad_query_parameters_by_name(api: Api) -> None:
    for query, field in BAD_QUERIES:
        response = api.client.get(f"/api/alice/tasks?{query}", headers=api.auth("alice"))
        assert_names(response, field)


ID_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("PUT", "", {"title": "x"}),
    ("PATCH", "", {"title": "x"}),
    ("DELETE", "", None),
    ("PATCH", "/complete", None),
    ("PATCH", "/uncomplete", None),
]


def test_a_task_id_that_is_not_a_number_is_no_task_route(api: Api, alices_task: int) -> None:
    """`{task_id:int}`: only digits reach a task route, anything else is no such resource."""
    before = api.state()
    for method, suffix, body in ID_ROUTES:
        for bad_id in ("abc", "1.5"):
            url = f"/api/alice/tasks/{bad_id}{suffix}"
            response = api.client.request(method, url, json=body, headers=api.auth("alice"))
            assert response.status_code == 404, (method, url)
            assert response.json() == {"detail": "Not Found"}
    assert api.state() == before


def test_other_methods_on_the_completed_collection_are_405(api: Api) -> None:
    # `completed` only exists for DELETE; no task route reads it as an id.
    for method in ("GET", "PUT", "PATCH", "POST"):
        response = api.client.request(
            method, "/api/alice/tasks/completed", headers=api.auth("alice")
        )
        assert response.status_code == 405, method
        assert response.headers["allow"] == "DELETE"


def test_405_names_every_method_of_the_path(api: Api) -> None:
    response = api.client.post("/api/alice/tasks/1", headers=api.auth("alice"))
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, PATCH, PUT"
    response = api.client.options("/api/alice/tasks", headers=api.auth("alice"))
    assert response.headers["allow"] == "GET, POST"


# --- Oversized bodies -------------------------------------------------------------------------


def test_a_body_over_one_megabyte_is_refused_before_it_is_read(api: Api, alices_task: int) -> None:
    before = api.state()
    huge = {"title": "ok", "description": "x" * (1024 * 1024)}
    response = api.client.post("/api/alice/tasks", json=huge, headers=api.auth("alice"))
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]
    assert api.state() == before
