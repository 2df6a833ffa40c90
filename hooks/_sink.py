"""Where captured messages go: the seam between change capture and storage/delivery."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from hooks._types import Message

__all__ = ["Sink", "SinkFactory"]


class Sink(Protocol):
    """Receives the messages of one flush (or one ORM statement), in order.

    Called inside the flush/statement, on the connection that wrote the rows, so a sink may
    run SQL there (the outbox) or park the messages until the outermost commit (see
    `hooks._transaction`). Raising fails the write: the transaction is not committed.
    """

    def write(
        self, session: Session, connection: Connection, messages: Sequence[Message], /
    ) -> None: ...


SinkFactory = Callable[[Session], Sink]
"""Chooses the sink at write time (e.g. outbox or log, from settings read then)."""
