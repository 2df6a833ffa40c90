"""The transactional outbox writer: one multi-row INSERT per flush, in the flush's transaction.

T-016 (publish failures never reach API callers): the request only writes rows; delivery
happens after commit, in the relay.

The rows commit or vanish with the change that produced them (the database discards them on
rollback and savepoint rollback), so no event exists for a write that did not commit. After the
outermost commit the relay is woken (`WakeSignal.notify()`: cheap, coalesced, never raises);
on PostgreSQL the INSERT also carries `pg_notify(channel, '')` (in its RETURNING clause),
which the server delivers only at commit, so relays in other processes wake too.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from hooks._outbox_table import DEFAULT_OUTBOX_TABLE
from hooks._sqltypes import utc_now
from hooks._transaction import defer_until_commit, install_transaction_listeners
from hooks._types import HooksError, Message
from hooks._wakeups import WakeSignal

__all__ = ["DEFAULT_NOTIFY_CHANNEL", "OutboxSink"]

DEFAULT_NOTIFY_CHANNEL = DEFAULT_OUTBOX_TABLE
_REQUIRED = frozenset(
    {"seq", "event_id", "topic", "partition_key", "payload", "created_at", "attempts"}
    | {"next_attempt_at", "last_error"}
)

# The columns each row sets (the others have server defaults: attempts, last_error); the two
# times are one parameter shared by every row (fewer parameters for the driver to adapt).
_COLUMNS = ("event_id", "topic", "partition_key", "payload")
_TIME_COLUMNS = ("created_at", "next_attempt_at")
# Rows per statement: far inside every driver's bound-parameter limit (SQLite: 32766).
MAX_ROWS_PER_STATEMENT = 500
# Above this many messages, a statement whose text does not depend on the row count (T-014,
# bulk statements): psycopg parses a query's placeholders in Python for every execution of
# a long text (it caches only short ones), which for 500-row VALUES lists cost more than all
# the rest of the hooks' work. PostgreSQL: one INSERT ... SELECT FROM unnest(arrays) per
# chunk; SQLite: executemany of the one-row INSERT (prepared once by the driver).
BULK_THRESHOLD = 16
# Rows per bulk statement: bounds the memory a statement's parameters take.
BULK_CHUNK = 1000
# Compiled statements kept (per dialect, row count and notify flag).
_CACHE_SIZE = 256

WakeupSource = WakeSignal | Callable[[], WakeSignal | None] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    # Bind names in the driver's order for positional paramstyles (qmark, format, numeric).
    order: tuple[str, ...] | None


class OutboxSink:
    """Writes each flush's messages into the outbox table on the flush's own connection.

    `table` comes from `build_outbox_table()`. `wakeup` is the relay's `WakeSignal` (or a
    callable returning the current one, so it can be swapped in tests), notified once after
    each outermost commit that wrote rows. `notify_channel=None` turns `pg_notify` off.

    The statement is one `INSERT ... VALUES (...), (...), ...` per flush. A multi-VALUES insert
    is not cacheable in SQLAlchemy, so it is compiled here once per dialect and row count and
    run on a DBAPI cursor through `_execute` (engine events and echo still see it), with the
    time column's own bind processing applied.
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
        self._compiled: dict[tuple[Dialect, int, bool], _Compiled] = {}
        self._processors: dict[Dialect, Callable[[Any], Any] | None] = {}
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
        dialect = connection.dialect
        notify = self.notify_channel is not None and dialect.name == "postgresql"
        now = self._processed_time(dialect, self._clock())
        if len(messages) > BULK_THRESHOLD:
            bulk = self._bulk_sql(dialect, notify)
            if bulk is not None:
                self._write_bulk(connection, dialect.name, bulk, messages, now)
                defer_until_commit(session, self)
                return
        for start in range(0, len(messages), MAX_ROWS_PER_STATEMENT):
            chunk = messages[start : start + MAX_ROWS_PER_STATEMENT]
            compiled = self._statement(dialect, len(chunk), notify)
            params: dict[str, Any] = {"now": now}
            if notify:
                params["channel"] = self.notify_channel
            for i, message in enumerate(chunk):
                params[f"event_id_{i}"] = message.id
                params[f"topic_{i}"] = message.topic
                params[f"partition_key_{i}"] = message.key
                params[f"payload_{i}"] = message.body
            if compiled.order is None:
                _execute(connection, compiled.sql, params)
            else:
                _execute(connection, compiled.sql, tuple(params[name] for name in compiled.order))
        defer_until_commit(session, self)

    def _write_bulk(
        self, connection: Connection, dialect: str, sql: str, messages: Sequence[Message], now: Any
    ) -> None:
        for start in range(0, len(messages), BULK_CHUNK):
            chunk = messages[start : start + BULK_CHUNK]
            if dialect == "postgresql":
                params: dict[str, Any] = {
                    "ids": [m.id for m in chunk],
                    "topics": [m.topic for m in chunk],
                    "keys": [m.key for m in chunk],
                    "bodies": [m.body for m in chunk],
                    "now": now,
                    "channel": self.notify_channel,
                }
            else:
                params = [(m.id, m.topic, m.key, m.body, now, now) for m in chunk]  # type: ignore[assignment]
            # Public API: one statement per chunk, so SQLAlchemy's per-execution overhead
            # (execution context, result) does not matter here.
            connection.exec_driver_sql(sql, params).close()

    def _bulk_sql(self, dialect: Dialect, notify: bool) -> str | None:
        """The fixed-shape bulk INSERT for `dialect`, or None (then multi-row VALUES)."""
        key = (dialect, -1, notify)
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled.sql
        preparer = dialect.identifier_preparer
        table = preparer.format_table(self.table)
        columns = ", ".join(preparer.quote(name) for name in (*_COLUMNS, *_TIME_COLUMNS))
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            # Rows in array order (WITH ORDINALITY ... ORDER BY), so `seq` follows the messages.
            # `%(name)b`: psycopg sends the arrays in binary; as text it would escape every
            # quote of every JSON payload in Python (3x the cost of everything else).
            sql = (
                f"INSERT INTO {table} ({columns}) SELECT u.e, u.t, u.k, u.p, %(now)s, %(now)s "
                "FROM unnest(%(ids)b::text[], %(topics)b::text[], %(keys)b::text[], "
                "%(bodies)b::text[]) WITH ORDINALITY AS u(e, t, k, p, n) ORDER BY u.n"
            )
            if notify:
                # One pg_notify per statement (not per row); delivered at commit only.
                sql = f"WITH hooks_rows AS ({sql}) SELECT pg_notify(%(channel)s, '')"
        elif dialect.name == "sqlite" and dialect.paramstyle == "qmark":
            sql = f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?, ?, ?)"
        else:
            return None
        with self._lock:
            self._compiled[key] = _Compiled(sql=sql, order=None)
        return sql

    # -- CommitHandler -------------------------------------------------------------------------

    def on_commit(self, messages: list[Message], /) -> None:
        signal = self._wakeup() if callable(self._wakeup) else self._wakeup
        if signal is not None:
            signal.notify()

    # -- internals -----------------------------------------------------------------------------

    def _processed_time(self, dialect: Dialect, value: datetime) -> Any:
        """The time as the driver takes it (UTCDateTime's bind processing)."""
        try:
            process = self._processors[dialect]
        except KeyError:
            column_type = self.table.c.created_at.type
            # dialect_impl: the decorator over the dialect's own type (SQLite: to text).
            process = column_type.dialect_impl(dialect).bind_processor(dialect)
            self._processors[dialect] = process
        return value if process is None else process(value)

    def _statement(self, dialect: Dialect, rows: int, notify: bool) -> _Compiled:
        key = (dialect, rows, notify)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                if len(self._compiled) >= _CACHE_SIZE:
                    self._compiled.clear()
                compiled = self._compiled[key] = self._compile(dialect, rows, notify)
        return compiled

    def _compile(self, dialect: Dialect, rows: int, notify: bool) -> _Compiled:
        now: sa.BindParameter[Any] = sa.bindparam("now")
        statement = self.table.insert().values(
            [
                {
                    **{name: sa.bindparam(f"{name}_{i}") for name in _COLUMNS},
                    **dict.fromkeys(_TIME_COLUMNS, now),
                }
                for i in range(rows)
            ]
        )
        if notify:
            # pg_notify in RETURNING: the wake-up rides on the INSERT (no extra round trip);
            # the server sends it at commit only, once per transaction and channel.
            statement = statement.returning(
                sa.func.pg_notify(sa.bindparam("channel"), sa.literal_column("''"))
            )
        compiled = statement.compile(dialect=dialect)
        order = tuple(compiled.positiontup or ()) if compiled.positional else None
        return _Compiled(sql=str(compiled), order=order)


def _private_cursor_execute_fits() -> bool:
    """Whether `Connection._cursor_execute` still has the signature this module relies on."""
    method = getattr(Connection, "_cursor_execute", None)
    if method is None:
        return False
    try:
        names = list(inspect.signature(method).parameters)
    except (TypeError, ValueError):  # pragma: no cover - a compiled method without a signature
        return False
    return names[:5] == ["self", "cursor", "statement", "parameters", "context"]


# Checked once; tests/hooks/test_outbox_writer.py fails loudly when it turns False.
PRIVATE_CURSOR_EXECUTE = _private_cursor_execute_fits()


def _execute(connection: Connection, sql: str, parameters: Any) -> None:
    """Runs the small per-flush INSERT on a plain DBAPI cursor of `connection`.

    `Connection._cursor_execute` is what SQLAlchemy itself uses for its one-off statements
    (sequences, column defaults): it fires `before/after_cursor_execute`, echoes and wraps
    driver errors in `sqlalchemy.exc.DBAPIError`, without building an execution context and a
    result. Private, so used only while its signature is the expected one (else the public
    `exec_driver_sql`); a test pins it. Measured (docs/benchmarks.md, issue 16): the public
    path costs +5 µs of CPU per flush on SQLite and +40 µs on PostgreSQL (its RETURNING
    pg_notify makes a result object), 7-9% of a single task write's CPU there.
    """
    if not PRIVATE_CURSOR_EXECUTE:
        connection.exec_driver_sql(sql, parameters).close()
        return
    cursor = connection.connection.cursor()
    try:
        connection._cursor_execute(cursor, sql, parameters, None)
    finally:
        cursor.close()
