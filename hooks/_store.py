"""The relay's SQL on the outbox table: pick the next batch, record results, count (T-016).

Runs on one thread (`OutboxStore.submit`) with kept connections, in autocommit. Every pick
reads ONE snapshot: a pick that its first page completes is that one statement; one that needs
more pages is read again in a `REPEATABLE READ READ ONLY` transaction on PostgreSQL (SQLite's
single writer commits rows in sequence order). docs/relay.md, "Pick", says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from hooks._types import Message

__all__ = ["OutboxRow", "OutboxStore", "Pick"]

_T = TypeVar("_T")
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    message: Message
    attempts: int
    created: Any  # as the driver returns it: OutboxStore.created_at() converts it


@dataclass(slots=True)
class Pick:
    """A batch: per (topic, key) the key's first row, when it is due."""

    rows: list[OutboxRow] = field(default_factory=list)
    # More may be sendable once this batch is recorded (batch or scan limit reached, or a
    # key's next row waits behind its row in this batch).
    more: bool = False
    # Earliest time a row passed over (not due yet) falls due.
    next_due: datetime | None = None


def _member(column: sa.ColumnElement[Any], name: str, dialect: str) -> tuple[Any, Callable]:
    """`column IN (list)` with one bound parameter however long the list (an expanding IN is
    compiled anew for every length), as a subquery (hashed: `= ANY(array)` compares every row
    with every item), and the function that encodes the list for it."""
    if dialect == "postgresql":  # a text, not a list: psycopg dumps lists in Python, slowly
        from sqlalchemy.dialects.postgresql import ARRAY

        array = sa.func.string_to_array(sa.bindparam(name, type_=sa.Text()), "\x1f")
        encode = "\x1f".join if isinstance(column.type, sa.String) else _join_ints
        return column.in_(sa.select(sa.func.unnest(sa.cast(array, ARRAY(column.type))))), encode
    if dialect == "sqlite":
        values = sa.func.json_each(sa.bindparam(name, type_=sa.Text())).table_valued("value")
        return column.in_(sa.select(values.c.value)), json.dumps
    return column.in_(sa.bindparam(name, expanding=True)), list


def _join_ints(values: list[int]) -> str:
    return "\x1f".join(map(str, values))


class OutboxStore:
    """All SQL the relay runs on `table` of `engine`, on one thread (see module docstring)."""

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.table = t = table
        dialect = engine.dialect
        when = t.c.next_attempt_at
        now = sa.bindparam("now", type_=when.type)
        # The time columns are read raw (a TypeDecorator per row and column cost more than the
        # rest of the pick) and converted here only where needed; PostgreSQL's are aware.
        raw = sa.types.NullType()
        self._to_time: Callable[[Any], Any] | None = None
        if dialect.name != "postgresql":
            self._to_time = when.type.dialect_impl(dialect).result_processor(dialect, None)
        busy, self._encode = _member(t.c.seq, "busy", dialect.name)
        paused, self._encode_text = _member(t.c.topic, "paused", dialect.name)
        self._select = (
            sa.select(
                t.c.seq,
                t.c.event_id,
                t.c.topic,
                t.c.partition_key,
                t.c.payload,
                t.c.attempts,
                sa.type_coerce(sa.case((when <= now, sa.null()), else_=when), raw),
                sa.type_coerce(t.c.created_at, raw),
            )
            .where(t.c.seq > sa.bindparam("after", type_=sa.BigInteger()))
            .where(sa.not_(busy), sa.not_(paused))
            .order_by(t.c.seq)
            .limit(sa.bindparam("page", type_=sa.Integer()))
        )
        deleted, _ = _member(t.c.seq, "seqs", dialect.name)
        self._delete = sa.delete(t).where(deleted)
        self._retry = (
            sa.update(t)
            .where(t.c.seq == sa.bindparam("b_seq"))
            .values(
                attempts=t.c.attempts + 1,
                last_error=sa.bindparam("b_error", type_=t.c.last_error.type),
                next_attempt_at=sa.bindparam("b_next", type_=when.type),
            )
        )
        self._count = sa.select(sa.func.count()).select_from(t)
        self._oldest = sa.select(t.c.created_at).order_by(t.c.seq).limit(1)
        self._needs_snapshot = dialect.name == "postgresql"
        self._executor: ThreadPoolExecutor | None = None
        self._conns: dict[str, sa.Connection] = {}

    # --- the thread ---------------------------------------------------------------------------

    def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="outbox-relay-db")

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.submit(self._drop_connections)
            executor.shutdown(wait=False)

    def submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Future[_T]:
        """`fn(...)` on the store's thread, as a concurrent future (wrap it for asyncio)."""
        assert self._executor is not None, "the store is not open"
        return self._executor.submit(self._guarded, fn, *args, **kwargs)

    def _guarded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return fn(*args, **kwargs)
        except BaseException:
            self._drop_connections()  # a broken connection must not be reused
            raise

    def _drop_connections(self) -> None:
        conns, self._conns = self._conns, {}
        for name, conn in conns.items():
            try:
                if conn.dialect.name == "sqlite" and name != "writer":
                    # Its AUTOCOMMIT reset would undo the savepoint fix (hooks/_sqlite.py) on
                    # a connection of the application's pool: don't hand it back.
                    conn.invalidate()
                conn.close()
            except Exception:
                pass

    def _conn(self, name: str) -> sa.Connection:
        """ "auto": autocommit, single statements; "writer": transactions of several
        statements; "snapshot": multi-page picks (PostgreSQL)."""
        conn = self._conns.get(name)
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect()
            if name == "auto":
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            elif name == "snapshot":
                conn = conn.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
            self._conns[name] = conn
        return conn

    # --- work (called on the store's thread) --------------------------------------------------

    def round(
        self,
        delete: Sequence[int],
        retry: Sequence[dict[str, Any]],
        *,
        now: datetime | None,
        batch_size: int,
        scan_limit: int,
        paused: frozenset[str],
        busy: Sequence[OutboxRow] = (),
    ) -> Pick | None:
        """Records the last batch's results, then (unless `now` is None) picks the next one:
        one thread hop for both."""
        if delete and not retry:  # the usual round: one statement, no transaction to open
            self._conn("auto").execute(self._delete, {"seqs": self._encode(list(delete))})
        elif retry:  # failures: all in one transaction (one commit, one fsync on SQLite)
            conn = self._conn("writer")
            with conn.begin():
                if delete:
                    conn.execute(self._delete, {"seqs": self._encode(list(delete))})
                conn.execute(self._retry, list(retry))
        if now is None:
            return None
        return self.pick(
            now=now, batch_size=batch_size, scan_limit=scan_limit, paused=paused, busy=busy
        )

    def pick(
        self,
        *,
        now: datetime,
        batch_size: int,
        scan_limit: int,
        paused: frozenset[str],
        busy: Sequence[OutboxRow] = (),
    ) -> Pick:
        """Pages from the outbox head until the batch is full, the table ends or `scan_limit`
        rows were read, all in one snapshot. `busy` rows (a batch on the wire) are left out in
        SQL, and so are the later rows of their keys."""
        params = {
            "now": now,
            "page": max(batch_size, 200),
            "after": 0,
            "busy": self._encode([r.seq for r in busy]),
            "paused": self._encode_text(sorted(paused)),
        }
        keys = {(r.message.topic, r.message.key) for r in busy}
        args = (params, batch_size, scan_limit, keys)
        pick = self._scan(self._conn("auto"), *args, one_page=self._needs_snapshot)
        if pick is not None:
            return pick
        conn = self._conn("snapshot")  # more than a page: read them all from one snapshot
        with conn.begin():
            return self._scan(conn, *args, one_page=False)  # type: ignore[return-value]

    def _scan(
        self,
        conn: sa.Connection,
        params: dict[str, Any],
        batch_size: int,
        scan_limit: int,
        busy: set[Key],
        *,
        one_page: bool,
    ) -> Pick | None:
        """None when `one_page` and the pick needs another page."""
        page, to_time = params["page"], self._to_time
        pick = Pick()
        rows = pick.rows
        seen = set(busy)
        waiting_keys: set[Key] = set()  # keys passed over: not due yet
        scanned = 0
        after = 0
        while True:
            chunk = conn.execute(self._select, {**params, "after": after}).all()
            for seq, event_id, topic, key, payload, attempts, waiting, created in chunk:
                k = (topic, key)
                if k in seen:  # a key's later rows wait for its first
                    pick.more = pick.more or k not in waiting_keys  # once recorded
                    continue
                seen.add(k)
                if waiting is not None:
                    waiting_keys.add(k)
                    waiting = to_time(waiting) if to_time else waiting
                    if pick.next_due is None or waiting < pick.next_due:
                        pick.next_due = waiting
                    continue
                rows.append(
                    OutboxRow(seq, Message(event_id, topic, key, payload), attempts, created)
                )
                if len(rows) >= batch_size:
                    pick.more = True
                    return pick
            scanned += len(chunk)
            if len(chunk) < page or scanned >= scan_limit:
                pick.more = pick.more or len(chunk) == page
                return pick
            if one_page:
                return None
            after = chunk[-1][0]

    def created_at(self, row: OutboxRow) -> datetime:
        """When `row` was written (converted on demand: only a few rows per round need it)."""
        return self._to_time(row.created) if self._to_time else row.created

    def stats(self) -> tuple[int, datetime | None]:
        """(backlog, created time of the oldest row)."""
        conn = self._conn("auto")
        count = conn.execute(self._count).scalar_one()
        return (int(count), conn.execute(self._oldest).scalar()) if count else (0, None)
