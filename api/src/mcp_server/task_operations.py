"""The MCP task tools: thin adapters over `src.services` (T-019).

Each tool resolves the acting user (from authentication, never from the model), validates its
arguments with the same `TaskCreate` / `TaskUpdate` models as REST, runs one service call in
its own session and transaction, and returns structured content. Nothing here publishes
events: the ORM hooks derive them from the committed change, exactly as for REST, so
`clear_completed` yields one `task.deleted` + `task.sync` per removed task.

Every anticipated failure is a `ToolError`, which the SDK returns as an `is_error` result whose
text the agent can act on. Validation happens before the session opens, and each service call
commits once, so a failed call writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar, cast

import anyio.to_thread
import sqlalchemy as sa
from loguru import logger
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field, ValidationError
from sqlmodel import Session
from typing_extensions import TypedDict

from src import services
from src.db import get_engine
from src.models import MAX_DESCRIPTION, MAX_TITLE, Task, TaskCreate, TaskPublic, TaskUpdate
from src.request_context import correlation_id

__all__ = [
    "MAX_LIST_LIMIT",
    "ClearedCount",
    "TaskChange",
    "TaskItem",
    "TaskList",
    "UserProvider",
    "register_task_tools",
]

UserProvider = Callable[[], str | None]
"""Returns the authenticated user of the current call, or None when there is none."""

MAX_LIST_LIMIT = 500  # the REST page limit too
MAX_OFFSET = 2**31 - 1  # as REST: the database binds a larger offset as out of range
_T = TypeVar("_T")

ChangeStatus = Literal["created", "updated", "completed", "uncompleted", "deleted"]


# Output schemas. typing_extensions.TypedDict: pydantic refuses typing.TypedDict on 3.11.
class TaskChange(TypedDict):
    """Result of a mutation."""

    task_id: int
    status: ChangeStatus
    title: str


class ClearedCount(TypedDict):
    """Result of clear_completed."""

    deleted: int


class TaskItem(TypedDict):
    """A task as REST returns it (TaskPublic); datetimes are ISO 8601 strings in UTC."""

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    due_date: str | None
    created_at: str
    updated_at: str


class TaskList(TypedDict):
    """Wrapped so that an empty list is still a structured answer."""

    tasks: list[TaskItem]


# Parameter types: the descriptions are what an agent reads to fill the arguments.
TaskIdArg = Annotated[
    int,
    Field(description="Id of one of your tasks, as returned by add_task or list_tasks."),
]
UserIdArg = Annotated[
    str | None,
    Field(
        description=(
            "Optional and best omitted: the acting user comes from authentication. If given, "
            "it must be your own user id or the call fails."
        )
    ),
]
DueDateArg = Annotated[
    datetime | None,
    Field(
        description=(
            "When the task is due: ISO 8601 date-time WITH a time zone offset, "
            "e.g. 2026-12-01T09:00:00+01:00 or 2026-12-01T08:00:00Z."
        )
    ),
]


def _field_errors(exc: ValidationError) -> str:
    """`title: must not be empty; ...`: field names and rules, never the rejected input."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "arguments"
        limits = err.get("ctx") or {}
        # pydantic words length limits on an Annotated str as "items"; say characters.
        if err["type"] in ("too_short", "string_too_short") and "min_length" in limits:
            minimum = limits["min_length"]
            message = "must not be empty" if minimum == 1 else f"needs {minimum}+ characters"
        elif err["type"] in ("too_long", "string_too_long") and "max_length" in limits:
            message = f"must be at most {limits['max_length']} characters"
        else:
            message = err["msg"]
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


_M = TypeVar("_M", bound=BaseModel)


def _validated(model: type[_M], values: Mapping[str, Any]) -> _M:
    """The REST models' validation, so MCP and REST accept and refuse the same input."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise ToolError(f"invalid arguments: {_field_errors(exc)}") from None


def _sent_arguments(ctx: Context) -> Mapping[str, Any]:
    """The arguments of the tools/call request as the client sent them."""
    params = ctx.request_context.params or {}
    arguments = params.get("arguments")
    return arguments if isinstance(arguments, Mapping) else {}


def _acting_user(user_provider: UserProvider, claimed: str | None) -> str:
    user = user_provider()
    if not user:
        # Unreachable over the authenticated transports; a safety net for embeddings.
        raise ToolError("not authenticated: no user for this call")
    if claimed is not None and claimed != user:
        raise ToolError(
            f"user_id {claimed!r} is not the authenticated user; omit user_id "
            "(the acting user comes from authentication)"
        )
    return user


@contextmanager
def _correlated() -> Iterator[None]:
    """Over HTTP the request middleware set a correlation id; stdio gets one per call."""
    if correlation_id.get() is not None:
        yield
        return
    token = correlation_id.set(uuid.uuid4().hex)
    try:
        yield
    finally:
        correlation_id.reset(token)


async def _in_session(work: Callable[[Session], _T]) -> _T:
    """Runs `work` with a fresh session in a worker thread (the services are sync)."""

    def run() -> _T:
        with Session(get_engine(), expire_on_commit=False) as session:
            return work(session)

    try:
        return await anyio.to_thread.run_sync(run)
    except services.TaskNotFound as exc:
        # Another user's task is reported exactly like a missing one.
        raise ToolError(f"{exc}: call list_tasks to see the ids of your tasks") from None
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        logger.bind(error=type(exc).__name__).error("mcp tool: database unavailable")
        raise ToolError("database unavailable, nothing was changed; retry later") from None


def _change(task: Task, status: ChangeStatus, user_id: str) -> TaskChange:
    assert task.id is not None  # a flushed task always has its id
    logger.bind(task_id=task.id, user_id=user_id, action=status).info("mcp task {}", status)
    return TaskChange(task_id=task.id, status=status, title=task.title)


def _item(task: Task) -> TaskItem:
    # Through TaskPublic, so the JSON shape and datetime format are exactly REST's.
    data = TaskPublic.model_validate(task, from_attributes=True).model_dump(mode="json")
    return cast(TaskItem, data)


def register_task_tools(mcp: MCPServer, *, user_provider: UserProvider) -> None:
    """Adds the seven task tools to `mcp`, acting as whoever `user_provider` returns."""

    @mcp.tool(
        title="Add a task",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False),
    )
    async def add_task(
        title: Annotated[
            str,
            Field(description=f"What to do: 1 to {MAX_TITLE} characters (blanks trimmed)."),
        ],
        description: Annotated[
            str | None,
            Field(description=f"Optional details, at most {MAX_DESCRIPTION} characters."),
        ] = None,
        due_date: DueDateArg = None,
        user_id: UserIdArg = None,
    ) -> TaskChange:
        """Create a new task for the authenticated user. Returns its id, status "created" and
        title; use the id with the other tools."""
        user = _acting_user(user_provider, user_id)
        data = _validated(
            TaskCreate, {"title": title, "description": description, "due_date": due_date}
        )
        with _correlated():
            task = await _in_session(lambda s: services.create_task(s, user, data))
        return _change(task, "created", user)

    @mcp.tool(
        title="List tasks",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def list_tasks(
        status: Annotated[
            Literal["all", "pending", "completed"],
            Field(description='Which tasks: "all" (default), "pending" or "completed".'),
        ] = "all",
        limit: Annotated[
            int,
            Field(ge=1, le=MAX_LIST_LIMIT, description="Most tasks to return (default 100)."),
        ] = 100,
        offset: Annotated[
            int,
            Field(ge=0, le=MAX_OFFSET, description="Tasks to skip, for paging (default 0)."),
        ] = 0,
        user_id: UserIdArg = None,
    ) -> TaskList:
        """List the authenticated user's tasks, oldest first, as {"tasks": [...]}; each task
        has id, title, description, completed, due_date, created_at and updated_at."""
        user = _acting_user(user_provider, user_id)
        with _correlated():
            tasks = await _in_session(
                lambda s: services.list_tasks(s, user, status, limit=limit, offset=offset)
            )
        return TaskList(tasks=[_item(task) for task in tasks])

    @mcp.tool(
        title="Update a task",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True
        ),
    )
    async def update_task(
        task_id: TaskIdArg,
        ctx: Context,
        title: Annotated[
            str | None,
            Field(
                description=(
                    f"New title, 1 to {MAX_TITLE} characters (blanks trimmed). Omit to keep it; "
                    "null is refused."
                )
            ),
        ] = None,
        description: Annotated[
            str | None,
            Field(
                description=(
                    f"New description, at most {MAX_DESCRIPTION} characters. Omit to keep it; "
                    'null or an empty string "" removes it.'
                )
            ),
        ] = None,
        due_date: Annotated[
            datetime | None,
            Field(
                description=(
                    "New due date: ISO 8601 date-time WITH a time zone offset, e.g. "
                    "2026-12-01T09:00:00+01:00. Omit to keep it; null removes it."
                )
            ),
        ] = None,
        clear_due_date: Annotated[
            bool,
            Field(description="true removes the due date (the same as due_date: null)."),
        ] = False,
        user_id: UserIdArg = None,
    ) -> TaskChange:
        """Change the title, description and/or due date of one of your tasks. Only the fields
        you pass change: an omitted field keeps its value, null removes the description or the
        due date (as in the REST API's PUT/PATCH). To mark a task done use complete_task."""
        user = _acting_user(user_provider, user_id)
        # As REST (T-019: same models, same meaning; `exclude_unset`): what was sent counts,
        # null included. The validated arguments cannot tell "omitted" from null; the
        # request's own arguments can.
        sent = _sent_arguments(ctx)
        values: dict[str, Any] = {}
        if "title" in sent:
            values["title"] = title
        if "description" in sent:
            values["description"] = description or None
        if "due_date" in sent:
            values["due_date"] = due_date
        if clear_due_date:
            if due_date is not None:
                raise ToolError("invalid arguments: pass either due_date or clear_due_date")
            values["due_date"] = None
        if not values:
            raise ToolError(
                "nothing to update: pass at least one of title, description, due_date or "
                "clear_due_date"
            )
        data = _validated(TaskUpdate, values)
        with _correlated():
            task = await _in_session(lambda s: services.update_task(s, user, task_id, data))
        return _change(task, "updated", user)

    @mcp.tool(
        title="Complete a task",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True
        ),
    )
    async def complete_task(task_id: TaskIdArg, user_id: UserIdArg = None) -> TaskChange:
        """Mark one of your tasks as done (no effect if it already is)."""
        user = _acting_user(user_provider, user_id)
        with _correlated():
            task = await _in_session(lambda s: services.complete_task(s, user, task_id))
        return _change(task, "completed", user)

    @mcp.tool(
        title="Reopen a task",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True
        ),
    )
    async def uncomplete_task(task_id: TaskIdArg, user_id: UserIdArg = None) -> TaskChange:
        """Mark one of your completed tasks as not done again (no effect if it is open)."""
        user = _acting_user(user_provider, user_id)
        with _correlated():
            task = await _in_session(lambda s: services.uncomplete_task(s, user, task_id))
        return _change(task, "uncompleted", user)

    @mcp.tool(
        title="Delete a task",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False
        ),
    )
    async def delete_task(task_id: TaskIdArg, user_id: UserIdArg = None) -> TaskChange:
        """Delete one of your tasks for good. Returns the id and title it had."""
        user = _acting_user(user_provider, user_id)
        with _correlated():
            task = await _in_session(lambda s: services.delete_task(s, user, task_id))
        return _change(task, "deleted", user)

    @mcp.tool(
        title="Delete completed tasks",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True
        ),
    )
    async def clear_completed(user_id: UserIdArg = None) -> ClearedCount:
        """Delete all of your completed tasks at once. Returns how many were deleted."""
        user = _acting_user(user_provider, user_id)
        with _correlated():
            count = await _in_session(lambda s: services.clear_completed(s, user))
        logger.bind(user_id=user, deleted=count).info("mcp cleared completed tasks")
        return ClearedCount(deleted=count)
