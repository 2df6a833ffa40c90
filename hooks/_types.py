"""The small vocabulary shared by capture, outbox and relay.

Nothing here knows about tasks, FastAPI or Dapr: the application supplies a rule that turns a
`RowChange` into `Message`s, and a `Transport` that delivers messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "ChangeKind",
    "ChangeRule",
    "HooksError",
    "Message",
    "Outcome",
    "RowChange",
    "SendResult",
    "Transport",
    "UnsupportedWritePath",
]

ChangeKind = Literal["insert", "update", "delete"]


class HooksError(Exception):
    """Base of the errors this package raises."""


class UnsupportedWritePath(HooksError):
    """A write path the hooks cannot observe (e.g. `bulk_save_objects` on a tracked model)."""


@dataclass(frozen=True, slots=True)
class RowChange:
    """One row's committed-to-be change, as seen in one flush or one ORM statement.

    `old` is the row before the change (empty for an insert), `new` the row after it (empty for
    a delete). Both hold every tracked column. `changed` names the columns whose value really
    changed (updates only; ignored columns such as `updated_at` are never listed).
    """

    kind: ChangeKind
    table: str
    identity: tuple[Any, ...]
    old: Mapping[str, Any]
    new: Mapping[str, Any]
    changed: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Message:
    """An outgoing message: id (stable across retries), topic, ordering key, serialised body."""

    id: str
    topic: str
    key: str
    body: str


class ChangeRule(Protocol):
    """Turns one row change into the messages it stands for (none for a no-op)."""

    def __call__(self, change: RowChange, /) -> Sequence[Message]: ...


class Outcome(enum.Enum):
    OK = "ok"
    # Worth retrying soon: connection refused, time-out, 5xx.
    TRANSIENT = "transient"
    # Configuration errors (400/401/403/404): logged at ERROR, retried on the capped schedule.
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The one result of a delivery attempt, for the relay and for direct publishing alike."""

    outcome: Outcome
    error: str | None = None
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


class Transport(Protocol):
    """Delivers a batch; returns one result per message, in the same order. Never raises."""

    async def send(self, messages: Sequence[Message], /) -> Sequence[SendResult]: ...


Row = Mapping[str, Any]
