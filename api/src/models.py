"""The Task table and its Create / Update / Public schema family.

Importing this module installs the ORM hooks on `Task` (last lines): no ORM write path can
change a task without its events.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    field_validator,
)
from sqlmodel import Field, SQLModel

from hooks import UTCDateTime, build_outbox_table, utc_now

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_TITLE",
    "Task",
    "TaskCreate",
    "TaskPublic",
    "TaskUpdate",
    "outbox_table",
]

MAX_TITLE = 200
MAX_DESCRIPTION = 1000


def _require_offset(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("due_date needs a time zone offset, e.g. 2026-12-01T09:00:00+01:00")
    try:
        # Stored and answered in UTC: 0001-01-01T00:00+01:00 has no UTC form.
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("due_date is out of range once converted to UTC") from None


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


# PostgreSQL text cannot hold NUL and a lone surrogate has no UTF-8 form: both used to fail
# at INSERT with a 500; refused here they are a 422 naming the field (issue 7).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable_text(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain NUL (U+0000) or unpaired surrogates (U+D800-U+DFFF)")
    return value


Title = Annotated[
    str,
    BeforeValidator(_strip),
    StringConstraints(min_length=1, max_length=MAX_TITLE),
    AfterValidator(_storable_text),
]
Description = Annotated[
    str, StringConstraints(max_length=MAX_DESCRIPTION), AfterValidator(_storable_text)
]
AwareDatetime = Annotated[datetime, AfterValidator(_require_offset)]


class TaskBase(SQLModel):
    title: str = Field(max_length=MAX_TITLE)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    due_date: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Task(TaskBase, table=True):
    # sqlite_autoincrement: ids are the events' subject and partition key, never reused.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    user_id: str = Field(index=True, max_length=255)
    completed: bool = Field(default=False)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(
        default_factory=utc_now,
        sa_type=UTCDateTime,
        sa_column_kwargs={"onupdate": utc_now},
    )


class TaskCreate(SQLModel):
    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    title: Title
    description: Description | None = None
    due_date: AwareDatetime | None = None


class TaskUpdate(SQLModel):
    """Only the fields sent change (`model_dump(exclude_unset=True)`)."""

    model_config = ConfigDict(extra="forbid")  # type: ignore[assignment]

    title: Title | None = None
    description: Description | None = None
    due_date: AwareDatetime | None = None
    completed: bool | None = None

    @field_validator("title", "completed", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # description and due_date may be cleared with null; title and completed may not.
        if value is None:
            raise ValueError("may be omitted but not null")
        return value


class TaskPublic(SQLModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    due_date: datetime | None
    created_at: datetime
    updated_at: datetime


outbox_table = build_outbox_table(SQLModel.metadata)

# Importing the model is enough: every ORM write path of Task now derives its events (T-014).
from src.events.wiring import install_task_hooks  # noqa: E402 - needs Task defined

install_task_hooks(Task)
