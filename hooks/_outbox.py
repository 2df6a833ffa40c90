"""The transactional outbox writer: one multi-row INSERT per flush, in the flush's transaction.

The rows commit or vanish with the change that produced them (the database discards them on
rollback and savepoint rollback), so no event exists for a write that did not commit. After the
outermost commit the relay is woken (`WakeSignal.notify()`: cheap, coalesced, never raises);
on PostgreSQL the INSERT also carries `pg_notify(channel, '')`, delivered by the server only
at commit, so relays in other processes wake too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from hooks._outbox_table import DEFAULT_OUTBOX_TABLE
from hooks._signal import WakeSignal
from hooks._sqltypes import utc_now
from hooks._transaction import defer_until_commit, install_transaction_listeners
from hooks._types import HooksError, Message

__all__ = ["DEFAULT_NOTIFY_CHANNEL", "OutboxSink"]

DEFAULT_NOTIFY_CHANNEL = DEFAULT_OUTBOX_TABLE
# Rows per statement: far below SQLite's 32766 bound parameters (6 per row), and a flush
# rarely has more than a handful of events anyway.
_CHUNK = 500
_COLUMNS = ("event_id", "topic", "partition_key", "payload", "created_at", "next_attempt_at")
_REQUIRED = frozenset(_COLUMNS) | {"seq", "attempts", "last_error"}

WakeupSource = WakeSignal | Callable[[], WakeSignal | None] | None


class OutboxSink:
    """Writes each flush's messages into the outbox table on the flush's own connection.

    `table` comes from `build_outbox_table()`. `wakeup` is the relay's `WakeSignal` (or a
    callable returning the current one, so it can be swapped in tests), notified once after
    each outermost commit that wrote rows. `notify_channel=None` turns `pg_notify` off.
    """

    def __init__(
        self,
        table: sa.Table,
        *,
        wakeup: WakeupSource = None,
        notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        missing = _REQUIRED - set(table.c.keys())
        if missing:
            raise HooksError(
                f"table {table.name!r} is not an outbox table (missing "
                f"{', '.join(sorted(missing))}); build it with hooks.build_outbox_table()"
            )
        if notify_channel is not None and not notify_channel:
            raise HooksError("notify_channel must be a non-empty name or None")
        self.table = table
        self.notify_channel = notify_channel
        self._wakeup = wakeup
        self._clock = clock
        # Statements are built once per (row count, notify?) and reused: a reused statement
        # keeps its cache key, so each flush pays for parameters only.
        self._statements: dict[tuple[int, bool], sa.Executable] = {}
        self._lock = threading.Lock()
        install_transaction_listeners()

    def __repr__(self) -> str:
        return f"OutboxSink({self.table.name!r})"

    # -- Sink ----------------------------------------------------------------------------------

    def write(
        self, session: Session, connection: Connection, messages: Sequence[Message], /
    ) -> None:
        if not messages:
            return
        notify = self.notify_channel is not None and connection.dialect.name == "postgresql"
        now = self._clock()
        for start in range(0, len(messages), _CHUNK):
            chunk = messages[start : start + _CHUNK]
            # One notify per flush is enough: identical notifications of one transaction are
            # folded into one by the server anyway.
            last = start + _CHUNK >= len(messages)
            with_notify = notify and last
            params: dict[str, Any] = {"channel": self.notify_channel} if with_notify else {}
            for i, message in enumerate(chunk):
                params[f"event_id_{i}"] = message.id
                params[f"topic_{i}"] = message.topic
                params[f"partition_key_{i}"] = message.key
                params[f"payload_{i}"] = message.body
                params[f"created_at_{i}"] = now
                params[f"next_attempt_at_{i}"] = now
            connection.execute(self._statement(len(chunk), with_notify), params)
        defer_until_commit(session, self)

    # -- CommitHandler -------------------------------------------------------------------------

    def on_commit(self, messages: list[Message], /) -> None:
        signal = self._wakeup() if callable(self._wakeup) else self._wakeup
        if signal is not None:
            signal.notify()

    # -- internals -----------------------------------------------------------------------------

    def _statement(self, rows: int, notify: bool) -> sa.Executable:
        key = (rows, notify)
        statement = self._statements.get(key)
        if statement is None:
            with self._lock:
                statement = self._statements.get(key)
                if statement is None:
                    statement = self._statements[key] = self._build(rows, notify)
        return statement

    def _build(self, rows: int, notify: bool) -> sa.Executable:
        insert = self.table.insert().values(
            [{name: sa.bindparam(f"{name}_{i}") for name in _COLUMNS} for i in range(rows)]
        )
        if not notify:
            return insert
        # A data-modifying CTE runs even though the SELECT does not read it: one round trip.
        return sa.select(sa.func.pg_notify(sa.bindparam("channel"), "")).add_cte(
            insert.cte("outbox_rows")
        )
