"""Errors the service layer raises; REST and MCP translate them at their boundary."""

from __future__ import annotations

__all__ = ["ServiceError", "TaskNotFound"]


class ServiceError(Exception):
    """Base of service-layer errors."""


class TaskNotFound(ServiceError):
    """No such task for this user (another user's task is reported the same way)."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id
