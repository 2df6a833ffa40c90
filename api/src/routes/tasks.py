"""REST routes of contract §5. They call the service layer only: events come from the ORM
hooks (T-014, T-017 by hooks, not by explicit calls here). `TaskNotFound` becomes 404 in the
app's exception handler, so another user's task looks exactly like a missing one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from src import services
from src.deps import OwnerId, SessionDep
from src.models import (
    AuthErrorBody,
    DeletedCount,
    ErrorDetail,
    Task,
    TaskCreate,
    TaskPublic,
    TaskUpdate,
)

__all__ = ["router"]

# Every status a route can answer, with its body (422 is FastAPI's own HTTPValidationError),
# so a generated client has a type for each and schemathesis finds no undeclared one.
_COMMON: dict[int | str, dict[str, Any]] = {
    401: {
        "model": AuthErrorBody,
        "description": "Missing or invalid bearer token (see the WWW-Authenticate header)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    403: {"model": ErrorDetail, "description": "The token's user is not {user_id}"},
    413: {"model": ErrorDetail, "description": "Request body larger than 1 MiB"},
    503: {
        "model": ErrorDetail,
        "description": "Database unavailable; nothing was written, retry later",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorDetail, "description": "No such task of this user"}
}
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "The body could not be read (not UTF-8 JSON)"}
}

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"], responses=_COMMON)

MAX_PAGE = 500
# `offset` is bound as a BIGINT by PostgreSQL: a larger one used to answer 500 (issue 7).
MAX_OFFSET = 2**31 - 1


@router.get("", response_model=list[TaskPublic])
def list_tasks(
    user_id: OwnerId,
    session: SessionDep,
    status_filter: Annotated[services.StatusFilter, Query(alias="status")] = "all",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[Task]:
    return services.list_tasks(session, user_id, status_filter, limit=limit, offset=offset)


@router.post(
    "", response_model=TaskPublic, status_code=status.HTTP_201_CREATED, responses=_BAD_BODY
)
def create_task(user_id: OwnerId, session: SessionDep, body: TaskCreate) -> Task:
    return services.create_task(session, user_id, body)


# `{task_id:int}`: "completed" never matches a task route (PUT /tasks/completed is a 405,
# not a 422 about the id), and /completed is still declared first.
@router.delete("/completed", response_model=DeletedCount)
def clear_completed(user_id: OwnerId, session: SessionDep) -> DeletedCount:
    return DeletedCount(deleted=services.clear_completed(session, user_id))


@router.get("/{task_id:int}", response_model=TaskPublic, responses=_NOT_FOUND)
def get_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Task:
    return services.get_task(session, user_id, task_id)


@router.put("/{task_id:int}", response_model=TaskPublic, responses={**_NOT_FOUND, **_BAD_BODY})
@router.patch("/{task_id:int}", response_model=TaskPublic, responses={**_NOT_FOUND, **_BAD_BODY})
def update_task(user_id: OwnerId, session: SessionDep, task_id: int, body: TaskUpdate) -> Task:
    return services.update_task(session, user_id, task_id, body)


@router.delete("/{task_id:int}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
def delete_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Response:
    services.delete_task(session, user_id, task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/{task_id:int}/complete", response_model=TaskPublic, responses=_NOT_FOUND)
def complete_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Task:
    return services.complete_task(session, user_id, task_id)


@router.patch("/{task_id:int}/uncomplete", response_model=TaskPublic, responses=_NOT_FOUND)
def uncomplete_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Task:
    return services.uncomplete_task(session, user_id, task_id)
