"""Task logic, the one place REST and MCP both call. No publishing here: the ORM hooks do it."""

from src.services.errors import ServiceError, TaskNotFound
from src.services.tasks import (
    StatusFilter,
    clear_completed,
    complete_task,
    create_task,
    delete_task,
    get_task,
    list_tasks,
    uncomplete_task,
    update_task,
)

__all__ = [
    "ServiceError",
    "StatusFilter",
    "TaskNotFound",
    "clear_completed",
    "complete_task",
    "create_task",
    "delete_task",
    "get_task",
    "list_tasks",
    "uncomplete_task",
    "update_task",
]
