"""The Task table and its Create / Update / Public schema family.

Importing this module installs the ORM hooks on `Task` (last lines): no ORM write path can
change a task without its events.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlmodel import Field, SQLModel

from hooks import UTCDateTime, build_outbox_table, utc_now

__all__ = [
    "MAX_DESCRIPTION",
    "MAX_TITLE",
    "AuthErrorBody",
    "DeletedCount",
    "ErrorDetail",
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


# The OpenAPI schema states every rule the validators apply, so that a generated client (and
# schemathesis) never sees a schema-valid value refused. Python's `str.strip()` removes
# exactly the characters of `str.isspace()`; the pattern lists the same set.
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Only NUL: unpaired surrogates (refused too) are not characters (I-JSON, RFC 7493), and a
# pattern naming them is not a valid regex for most engines (Rust's, ECMAScript's u-mode).
_FORBIDDEN = r"\x00"
STORABLE_PATTERN = rf"^[^{_FORBIDDEN}]*$"
# Optional blanks, something kept, optional blanks. The length limit applies to the title as
# sent (`maxLength`), so trimming never makes a too-long title acceptable: schema and
# validation agree exactly. (Counting the trimmed length needs a bounded quantifier that
# schemathesis, and most client generators, cannot draw from.)
_KEPT = f"[^{_SPACE}{_FORBIDDEN}]"
TITLE_PATTERN = rf"^[{_SPACE}]*{_KEPT}(?:[^{_FORBIDDEN}]*{_KEPT})?[{_SPACE}]*$"
TITLE_RULE = (
    f"1 to {MAX_TITLE} characters as sent; leading and trailing whitespace (the characters of "
    "Python's str.isspace) is removed before storing, and something must remain. No NUL "
    "(U+0000) and no unpaired surrogates (U+D800-U+DFFF)."
)
DESCRIPTION_RULE = (
    f"At most {MAX_DESCRIPTION} characters, stored as sent. No NUL (U+0000) and no unpaired "
    "surrogates (U+D800-U+DFFF)."
)
DUE_DATE_RULE = (
    "RFC 3339 date-time WITH a time zone offset (e.g. 2026-12-01T09:00:00+01:00); stored and "
    "answered in UTC."
)


def _title_json_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TITLE,
            "pattern": TITLE_PATTERN,
            "description": description,
        }
    )


def _strip_title(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TITLE:  # as sent, before trimming
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max_length} characters",
            {"max_length": MAX_TITLE},
        )
    return _strip(value)


Title = Annotated[
    str,
    BeforeValidator(_strip_title),
    StringConstraints(min_length=1, max_length=MAX_TITLE),
    AfterValidator(_storable_text),
    _title_json_schema(TITLE_RULE),
]
Description = Annotated[
    str,
    StringConstraints(max_length=MAX_DESCRIPTION),
    AfterValidator(_storable_text),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": MAX_DESCRIPTION,
            "pattern": STORABLE_PATTERN,
            "description": DESCRIPTION_RULE,
        }
    ),
]


def _date_time_text(value: Any) -> Any:
    # Lax pydantic took numbers as Unix timestamps; the schema promises a string. (Not
    # `Strict()`: FastAPI validates the decoded JSON in Python mode, where strict refuses str.)
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


def _real_bool(value: Any) -> Any:
    if not isinstance(value, bool):  # lax pydantic took "yes", 1, "on"
        raise ValueError("must be true or false")
    return value


AwareDatetime = Annotated[
    datetime,
    BeforeValidator(_date_time_text),
    AfterValidator(_require_offset),
    WithJsonSchema({"type": "string", "format": "date-time", "description": DUE_DATE_RULE}),
]
StrictBool = Annotated[bool, BeforeValidator(_real_bool)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


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
    # Examples: documentation, and what schemathesis's examples phase sends.
    model_config = ConfigDict(  # type: ignore[assignment]
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"title": "Buy milk"},
                {
                    "title": "File the tax return",
                    "description": "Receipts are in the blue folder",
                    "due_date": "2026-12-01T09:00:00+01:00",
                },
            ]
        },
    )

    title: Title
    description: Description | None = Field(
        default=None, description=f"{DESCRIPTION_RULE} null or omitted: none."
    )
    due_date: AwareDatetime | None = Field(
        default=None, description=f"{DUE_DATE_RULE} null or omitted: none."
    )


class TaskUpdate(SQLModel):
    """Only the fields sent change (`model_dump(exclude_unset=True)`); MCP's update_task
    follows the same rule (null clears description / due_date, omitted keeps)."""

    model_config = ConfigDict(  # type: ignore[assignment]
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"title": "Buy oat milk"},
                {"description": None, "due_date": "2027-01-02T10:00:00-05:00"},
                {"completed": True},
            ]
        },
    )

    # May be omitted but not null: the schema says so (not nullable, no default). The Python
    # default None only stands for "not sent" (`exclude_unset`); `_not_null` refuses a null.
    title: Title = Field(default=None, schema_extra={"json_schema_extra": _no_default})
    description: Description | None = Field(
        default=None, description=f"{DESCRIPTION_RULE} null clears it; omitted keeps it."
    )
    due_date: AwareDatetime | None = Field(
        default=None, description=f"{DUE_DATE_RULE} null clears it; omitted keeps it."
    )
    completed: StrictBool = Field(default=None, schema_extra={"json_schema_extra": _no_default})

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


class ErrorDetail(SQLModel):
    """The body of every error answer but 401 and 422."""

    detail: str


class AuthErrorBody(SQLModel):
    """The body of every 401, REST and MCP alike: FastAPI's `detail` and RFC 6750's fields."""

    detail: str
    error: Literal["invalid_token"]
    error_description: str


class DeletedCount(SQLModel):
    deleted: int = Field(ge=0)


outbox_table = build_outbox_table(SQLModel.metadata)

# Importing the model is enough: every ORM write path of Task now derives its events (T-014).
from src.events.wiring import install_task_hooks  # noqa: E402 - needs Task defined

install_task_hooks(Task)
