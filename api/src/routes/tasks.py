"""REST routes of contract §5. They call the service layer only: events come from the ORM
hooks (T-014, T-017 by hooks, not by explicit calls here). `TaskNotFound` becomes 404 in the
app's exception handler, so another user's task looks exactly like a missing one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel

from src import services
from src.deps import OwnerId, SessionDep
from src.models import Task, TaskCreate, TaskPublic, TaskUpdate

__all__ = ["router"]

router = APIRouter(prefix="/api/{user_id}/tasks", tags=["tasks"])

MAX_PAGE = 500
# `offset` is bound as a BIGINT by PostgreSQL: a larger one used to answer 500 (issue 7).
MAX_OFFSET = 2**31 - 1


class DeletedCount(BaseModel):
    deleted: int


@router.get("", response_model=list[TaskPublic])
def list_tasks(
    user_id: OwnerId,
    session: SessionDep,
    status_filter: Annotated[services.StatusFilter, Query(alias="status")] = "all",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[Task]:
    return services.list_tasks(session, user_id, status_filter, limit=limit, offset=offset)


@router.post("", response_model=TaskPublic, status_code=status.HTTP_201_CREATED)
def create_task(user_id: OwnerId, session: SessionDep, body: TaskCreate) -> Task:
    return services.create_task(session, user_id, body)


# Declared before /{task_id} so "completed" is not read as an id.
@router.delete("/completed", response_model=DeletedCount)
def clear_completed(user_id: OwnerId, session: SessionDep) -> DeletedCount:
    return DeletedCount(deleted=services.clear_completed(session, user_id))


@router.get("/{task_id}", response_model=TaskPublic)
def get_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Task:
    return services.get_task(session, user_id, task_id)


@router.put("/{task_id}", response_model=TaskPublic)
@router.patch("/{task_id}", response_model=TaskPublic)
def update_task(user_id: OwnerId, session: SessionDep, task_id: int, body: TaskUpdate) -> Task:
    return services.update_task(session, user_id, task_id, body)


@router.delete("/{task_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Response:
    services.delete_task(session, user_id, task_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/{task_id}/complete", response_model=TaskPublic)
def complete_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Task:
    return services.complete_task(session, user_id, task_id)


@router.patch("/{task_id}/uncomplete", response_model=TaskPublic)
def uncomplete_task(user_id: OwnerId, session: SessionDep, task_id: int) -> Task:
    return services.uncomplete_task(session, user_id, task_id)
