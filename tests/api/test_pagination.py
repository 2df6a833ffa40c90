"""`limit` / `offset` on `GET /api/{user}/tasks` (issue 2, contract §5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from src.models import Task

from tests.support.app import Api

MakeTasks = Callable[..., list[Task]]


def page(api: Api, query: str = "", user: str = "alice") -> list[dict[str, Any]]:
    response = api.client.get(f"/api/{user}/tasks?{query}", headers=api.auth(user))
    assert response.status_code == 200, response.text
    tasks: list[dict[str, Any]] = response.json()
    return tasks


def ids(tasks: list[dict[str, Any]]) -> list[int]:
    return [task["id"] for task in tasks]


def test_pages_cover_every_task_once_in_id_order(api: Api, make_tasks: MakeTasks) -> None:
    made = [task.id for task in make_tasks(7, user_id="alice")]
    make_tasks(3, user_id="bob")  # other users' tasks take no place on alice's pages
    pages = [ids(page(api, f"limit=3&offset={offset}")) for offset in (0, 3, 6)]
    assert pages == [made[0:3], made[3:6], made[6:7]]
    assert ids(page(api)) == made


def test_an_offset_past_the_end_is_an_empty_page(api: Api, make_tasks: MakeTasks) -> None:
    make_tasks(2)
    assert page(api, "offset=2") == []
    assert page(api, "limit=5&offset=100") == []


def test_limit_bounds(api: Api, make_tasks: MakeTasks) -> None:
    made = [task.id for task in make_tasks(3)]
    assert ids(page(api, "limit=1")) == made[:1]
    assert ids(page(api, "limit=500")) == made


def test_without_limit_a_page_holds_100_tasks(api: Api, make_tasks: MakeTasks) -> None:
    made = [task.id for task in make_tasks(101)]
    assert ids(page(api)) == made[:100]
    assert ids(page(api, "offset=100")) == made[100:]


def test_pages_are_stable_while_tasks_are_added(api: Api, make_tasks: MakeTasks) -> None:
    made = [task.id for task in make_tasks(4)]
    first = ids(page(api, "limit=2"))
    make_tasks(2)  # a client reading page 2 next must not see page 1's tasks again
    second = ids(page(api, "limit=2&offset=2"))
    assert first + second == made


def test_pagination_applies_after_the_status_filter(api: Api, make_tasks: MakeTasks) -> None:
    tasks = make_tasks(6)
    done = make_tasks(3, done=True)
    pending_ids = [task.id for task in tasks]
    assert ids(page(api, "status=pending&limit=4")) == pending_ids[:4]
    assert ids(page(api, "status=pending&limit=4&offset=4")) == pending_ids[4:]
    assert ids(page(api, "status=completed&limit=2&offset=1")) == [t.id for t in done[1:3]]
    assert len(page(api, "status=all&limit=8")) == 8
