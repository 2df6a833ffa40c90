"""The seven task tools through the SDK client, in memory (T-019): results, errors, isolation.

In memory the server acts as one fixed user, exactly as over stdio; the HTTP and stdio
transports have their own tests.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.mcp.conftest import Client, connect, fails, ok, task_rows

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("mcp_db")]

TOOLS = {
    "add_task",
    "list_tasks",
    "update_task",
    "complete_task",
    "uncomplete_task",
    "delete_task",
    "clear_completed",
}


async def test_tools_are_listed_with_described_parameters_and_output_schemas() -> None:
    async with connect("alice") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 20, tool.name
        assert tool.output_schema is not None, tool.name
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert tools["add_task"].input_schema["required"] == ["title"]
    assert tools["update_task"].input_schema["required"] == ["task_id"]
    assert "offset" in tools["add_task"].input_schema["properties"]["due_date"]["description"]
    list_output = tools["list_tasks"].output_schema
    assert list_output is not None and list_output["required"] == ["tasks"]
    assert tools["list_tasks"].annotations and tools["list_tasks"].annotations.read_only_hint
    assert tools["delete_task"].annotations and tools["delete_task"].annotations.destructive_hint


async def test_add_task_then_list_shows_it_like_rest_does() -> None:
    async with connect("alice") as client:
        created = await ok(
            client,
            "add_task",
            {
                "title": "  Buy milk  ",
                "description": "2 litres",
                "due_date": "2026-12-01T09:00:00+01:00",
            },
        )
        listed = await ok(client, "list_tasks")
    assert created == {"task_id": created["task_id"], "status": "created", "title": "Buy milk"}
    [task] = listed["tasks"]
    assert task["id"] == created["task_id"]
    assert task["user_id"] == "alice"
    assert task["title"] == "Buy milk"
    assert task["description"] == "2 litres"
    assert task["completed"] is False
    assert task["due_date"] == "2026-12-01T08:00:00Z"  # stored and returned in UTC
    assert set(task) == {
        "id",
        "user_id",
        "title",
        "description",
        "completed",
        "due_date",
        "created_at",
        "updated_at",
    }
    assert task["created_at"].endswith("Z")


async def test_empty_list_is_still_a_structured_answer() -> None:
    async with connect("alice") as client:
        result = await client.call_tool("list_tasks", {})
    assert not result.is_error
    assert result.structured_content == {"tasks": []}
    assert result.content, "clients that read only text content must see the answer too"


async def test_list_filters_by_status_and_pages() -> None:
    async with connect("alice") as client:
        ids = [(await ok(client, "add_task", {"title": f"t{i}"}))["task_id"] for i in range(4)]
        await ok(client, "complete_task", {"task_id": ids[1]})
        await ok(client, "complete_task", {"task_id": ids[3]})

        async def listed(**arguments: Any) -> list[int]:
            return [t["id"] for t in (await ok(client, "list_tasks", arguments))["tasks"]]

        assert await listed() == ids
        assert await listed(status="pending") == [ids[0], ids[2]]
        assert await listed(status="completed") == [ids[1], ids[3]]
        assert await listed(limit=2) == ids[:2]
        assert await listed(limit=2, offset=2) == ids[2:]
        assert "status" in await fails(client, "list_tasks", {"status": "done"})
        assert "limit" in await fails(client, "list_tasks", {"limit": 0})


async def add_draft(client: Client) -> int:
    """A task with every optional field set, for updates to change or clear."""
    draft = {"title": "Draft", "description": "notes", "due_date": "2026-12-01T08:00:00Z"}
    task_id: int = (await ok(client, "add_task", draft))["task_id"]
    return task_id


async def test_update_changes_only_the_fields_passed() -> None:
    async with connect("alice") as client:
        task_id = await add_draft(client)
        # Omitted means "keep".
        result = await ok(client, "update_task", {"task_id": task_id, "title": "Final"})
        assert result == {"task_id": task_id, "status": "updated", "title": "Final"}
        [row] = task_rows()
        assert (row["title"], row["description"]) == ("Final", "notes")
        assert row["due_date"].isoformat() == "2026-12-01T08:00:00+00:00"

        await ok(
            client, "update_task", {"task_id": task_id, "due_date": "2027-01-02T10:00:00-05:00"}
        )
        assert task_rows()[0]["due_date"].isoformat() == "2027-01-02T15:00:00+00:00"

        await ok(client, "update_task", {"task_id": task_id, "description": ""})
        await ok(client, "update_task", {"task_id": task_id, "clear_due_date": True})
        [row] = task_rows()
        assert (row["title"], row["description"], row["due_date"]) == ("Final", None, None)


async def test_null_means_what_it_means_in_rest() -> None:
    """REST PUT/PATCH: null clears description and due_date, and is refused for title."""
    async with connect("alice") as client:
        task_id = await add_draft(client)
        assert "title" in await fails(client, "update_task", {"task_id": task_id, "title": None})
        await ok(client, "update_task", {"task_id": task_id, "description": None})
        [row] = task_rows()
        assert (row["description"], row["due_date"] is not None) == (None, True)
        await ok(client, "update_task", {"task_id": task_id, "due_date": None})
        [row] = task_rows()
        assert (row["title"], row["description"], row["due_date"]) == ("Draft", None, None)


async def test_complete_uncomplete_are_idempotent() -> None:
    async with connect("alice") as client:
        task_id = (await ok(client, "add_task", {"title": "Call mum"}))["task_id"]
        for _ in range(2):
            assert await ok(client, "complete_task", {"task_id": task_id}) == {
                "task_id": task_id,
                "status": "completed",
                "title": "Call mum",
            }
            assert task_rows()[0]["completed"] is True
        for _ in range(2):
            assert (await ok(client, "uncomplete_task", {"task_id": task_id}))[
                "status"
            ] == "uncompleted"
            assert task_rows()[0]["completed"] is False


async def test_delete_returns_what_was_deleted() -> None:
    async with connect("alice") as client:
        keep = (await ok(client, "add_task", {"title": "keep"}))["task_id"]
        gone = (await ok(client, "add_task", {"title": "gone"}))["task_id"]
        assert await ok(client, "delete_task", {"task_id": gone}) == {
            "task_id": gone,
            "status": "deleted",
            "title": "gone",
        }
        assert [t["id"] for t in (await ok(client, "list_tasks"))["tasks"]] == [keep]
        assert "not found" in await fails(client, "delete_task", {"task_id": gone})


async def test_clear_completed_deletes_only_completed_tasks() -> None:
    async with connect("alice") as client:
        ids = [(await ok(client, "add_task", {"title": f"t{i}"}))["task_id"] for i in range(3)]
        await ok(client, "complete_task", {"task_id": ids[0]})
        await ok(client, "complete_task", {"task_id": ids[2]})
        assert await ok(client, "clear_completed") == {"deleted": 2}
        assert await ok(client, "clear_completed") == {"deleted": 0}
    assert [r["id"] for r in task_rows()] == [ids[1]]


BAD_CALLS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("add_task", {}, ("title", "required")),
    ("add_task", {"title": "   "}, ("title", "must not be empty")),
    ("add_task", {"title": "x" * 201}, ("title", "at most 200")),
    ("add_task", {"title": 5}, ("title", "string")),
    ("add_task", {"title": "ok", "description": "d" * 1001}, ("description", "at most 1000")),
    ("add_task", {"title": "ok", "due_date": "2026-12-01T09:00:00"}, ("due_date", "offset")),
    ("add_task", {"title": "ok", "due_date": "next tuesday"}, ("due_date",)),
    ("list_tasks", {"offset": 2**63}, ("offset", "less than or equal")),
    ("list_tasks", {"status": "done"}, ("status",)),
    ("update_task", {"task_id": "{id}"}, ("nothing to update",)),
    ("update_task", {"task_id": "{id}", "title": " "}, ("title", "must not be empty")),
    ("update_task", {"task_id": "{id}", "due_date": "2026-12-01T09:00"}, ("due_date", "offset")),
    (
        "update_task",
        {"task_id": "{id}", "due_date": "2026-12-01T09:00:00Z", "clear_due_date": True},
        ("due_date", "clear_due_date"),
    ),
    ("update_task", {"task_id": 999_999, "title": "x"}, ("task 999999 not found", "list_tasks")),
    ("update_task", {"task_id": "abc", "title": "x"}, ("task_id", "integer")),
    ("complete_task", {"task_id": 999_999}, ("task 999999 not found",)),
    ("complete_task", {"task_id": 2**31}, ("not found",)),  # beyond the id column's range
    ("complete_task", {"task_id": 2**70}, ("not found",)),
    ("complete_task", {}, ("task_id", "required")),
    ("uncomplete_task", {"task_id": 999_999}, ("task 999999 not found",)),
    ("delete_task", {"task_id": 999_999}, ("task 999999 not found",)),
]


async def test_bad_arguments_are_tool_errors_that_change_nothing(
    subtests: pytest.Subtests,
) -> None:
    async with connect("alice") as client:
        existing = await ok(
            client, "add_task", {"title": "existing", "due_date": "2026-12-01T08:00:00Z"}
        )
        for tool, arguments, expected in BAD_CALLS:
            with subtests.test(tool=tool, arguments=arguments):
                arguments = {
                    k: existing["task_id"] if v == "{id}" else v for k, v in arguments.items()
                }
                before = task_rows()
                message = await fails(client, tool, arguments)
                assert task_rows() == before
                for part in expected:
                    assert part in message, f"{part!r} not in {message!r}"


USER_SCOPED_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("add_task", {"title": "t"}),
    ("list_tasks", {}),
    ("update_task", {"task_id": "{id}", "title": "t"}),
    ("complete_task", {"task_id": "{id}"}),
    ("uncomplete_task", {"task_id": "{id}"}),
    ("delete_task", {"task_id": "{id}"}),
    ("clear_completed", {}),
]


async def test_user_id_argument_must_match_the_acting_user(subtests: pytest.Subtests) -> None:
    async with connect("alice") as client:
        for tool, arguments in USER_SCOPED_CALLS:
            with subtests.test(tool=tool):
                task_id = (await ok(client, "add_task", {"title": "mine"}))["task_id"]
                await ok(client, "complete_task", {"task_id": task_id})
                arguments = {k: task_id if v == "{id}" else v for k, v in arguments.items()}
                before = task_rows()
                message = await fails(client, tool, {**arguments, "user_id": "bob"})
                assert "user_id" in message and "not the authenticated user" in message
                assert task_rows() == before
                # The matching user id is accepted (clients that always send it).
                await ok(client, tool, {**arguments, "user_id": "alice"})


async def test_one_user_can_never_see_or_change_another_users_tasks() -> None:
    async with connect("alice") as alice, connect("bob") as bob:
        task_id = (await ok(alice, "add_task", {"title": "alice's secret"}))["task_id"]
        done_id = (await ok(alice, "add_task", {"title": "alice's done"}))["task_id"]
        await ok(alice, "complete_task", {"task_id": done_id})
        before = task_rows()

        assert await ok(bob, "list_tasks") == {"tasks": []}
        for tool, extra in [
            ("update_task", {"title": "mine now"}),
            ("complete_task", {}),
            ("uncomplete_task", {}),
            ("delete_task", {}),
        ]:
            message = await fails(bob, tool, {"task_id": task_id, **extra})
            # Exactly what a missing task says: nothing reveals that the id exists.
            assert message == (await fails(bob, tool, {"task_id": 999_999, **extra})).replace(
                "999999", str(task_id)
            )
        assert await ok(bob, "clear_completed") == {"deleted": 0}
        assert task_rows() == before
        assert len((await ok(alice, "list_tasks"))["tasks"]) == 2
