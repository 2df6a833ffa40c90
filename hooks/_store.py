"""The relay's side of the outbox table: pick the next batch, record what was sent, count.

T-016. Runs on one thread (`OutboxStore.submit`) with kept connections, in autocommit: a pick
that fits in one page is one statement (its own snapshot), recording is one DELETE, so a round
costs two round trips. Every pick reads from ONE consistent snapshot: a pick that needs more
than one page is read again inside a `REPEATABLE READ READ ONLY` transaction on PostgreSQL, so
a row that commits between two page reads is seen by none of them. (Under READ COMMITTED a row
of key K committed between two pages with a sequence number below the first page's end was
missed while a later row of K was picked from the next page: per-key order broke once the
backlog outgrew a page.) SQLite has a single writer: rows commit in sequence order, so its
pages need no snapshot, and its reads take no lock.
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
    created_at: datetime


@dataclass(slots=True)
class Pick:
    """A batch: per (topic, key) the key's first row, when it is due."""

    rows: list[OutboxRow] = field(default_factory=list)
    # More may be sendable once this batch is recorded: the read stopped at the batch size or
    # scan limit, or a key's next row waits behind its row in this batch.
    more: bool = False
    # Earliest time a row passed over (not due yet) falls due; None when none was.
    next_due: datetime | None = None


class _SeqList:
    """`seq IN (...)` with one bound parameter however long the list: an array on PostgreSQL,
    a JSON text on SQLite (an expanding IN is compiled anew for every length)."""

    def __init__(self, column: sa.ColumnElement[int], dialect: str) -> None:
        self.encode: Callable[[list[int]], Any] = list
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            array = sa.cast(
                sa.func.string_to_array(sa.bindparam("seqs", type_=sa.Text()), ","),
                ARRAY(sa.BigInteger()),
            )
            self.member: sa.ColumnElement[bool] = column == sa.any_(array)
            self.encode = lambda seqs: ",".join(map(str, seqs))
        elif dialect == "sqlite":
            values = sa.func.json_each(sa.bindparam("seqs", type_=sa.Text())).table_valued("value")
            self.member = column.in_(sa.select(values.c.value))
            self.encode = json.dumps
        else:
            self.member = column.in_(sa.bindparam("seqs", expanding=True))


class OutboxStore:
    """All SQL the relay runs on `table` of `engine`, on one thread (see module docstring)."""

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.table = t = table
        self._now = sa.bindparam("now", type_=t.c.next_attempt_at.type)
        # next_attempt_at only for rows not due yet: converting a time per row is costly.
        waiting_until = sa.type_coerce(
            sa.case((t.c.next_attempt_at <= self._now, sa.null()), else_=t.c.next_attempt_at),
            t.c.next_attempt_at.type,
        )
        self._select = sa.select(
            t.c.seq,
            t.c.event_id,
            t.c.topic,
            t.c.partition_key,
            t.c.payload,
            t.c.attempts,
            waiting_until,
            t.c.created_at,
        ).order_by(t.c.seq)
        self._retry = (
            sa.update(t)
            .where(t.c.seq == sa.bindparam("b_seq"))
            .values(
                attempts=t.c.attempts + 1,
                last_error=sa.bindparam("b_error", type_=t.c.last_error.type),
                next_attempt_at=sa.bindparam("b_next", type_=t.c.next_attempt_at.type),
            )
        )
        self._pages = self._paged(self._select)
        self._count = sa.select(sa.func.count()).select_from(t)
        self._oldest = sa.select(t.c.created_at).order_by(t.c.seq).limit(1)
        dialect = engine.dialect.name
        self._seqs = _SeqList(t.c.seq, dialect)
        self._delete = sa.delete(t).where(self._seqs.member)
        self._needs_snapshot = dialect == "postgresql"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sa.Connection | None = None  # autocommit: single statements
        self._writer_conn: sa.Connection | None = None  # transactions of several statements
        self._snapshot_conn: sa.Connection | None = None  # multi-page picks (PostgreSQL)

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
        for name in ("_conn", "_writer_conn", "_snapshot_conn"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is None:
                continue
            try:
                if conn.dialect.name == "sqlite" and name != "_writer_conn":
                    # Its AUTOCOMMIT reset would undo the savepoint fix (hooks/_sqlite.py) on
                    # a connection of the application's pool: don't hand it back.
                    conn.invalidate()
                conn.close()
            except Exception:
                pass

    def _autocommit(self) -> sa.Connection:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn = conn
        return conn

    def _writer(self) -> sa.Connection:
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer_conn = self.engine.connect()
        return conn

    def _snapshot(self) -> sa.Connection:
        conn = self._snapshot_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self.engine.connect().execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            self._snapshot_conn = conn
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
        busy: frozenset[Key] = frozenset(),
    ) -> Pick | None:
        """Records the last batch's results, then (unless `now` is None) picks the next one:
        one thread hop for both."""
        if delete and not retry:  # the usual round: one statement, no transaction to open
            self._autocommit().execute(self._delete, {"seqs": self._seqs.encode(list(delete))})
        elif retry:  # failures: all in one transaction (one commit, one fsync on SQLite)
            conn = self._writer()
            with conn.begin():
                if delete:
                    conn.execute(self._delete, {"seqs": self._seqs.encode(list(delete))})
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
        busy: frozenset[Key] = frozenset(),
    ) -> Pick:
        """Pages from the outbox head until the batch is full, the table ends or `scan_limit`
        rows were read (bounded time and memory for any backlog), all in one snapshot. Keys in
        `busy` (a batch on the wire) are left out, with all their rows."""
        first_page, next_page = self._pages
        if paused:
            first_page, next_page = self._paged(
                self._select.where(self.table.c.topic.not_in(sorted(paused)))
            )
        page = max(batch_size, 200)
        params = {"now": now, "page": page}
        first = self._autocommit().execute(first_page, params).all()
        if len(first) < page or not self._needs_snapshot:
            return self._scan(
                self._autocommit(), next_page, first, params, batch_size, scan_limit, busy
            )
        conn = self._snapshot()  # more than a page: read them all from one snapshot
        with conn.begin():
            first = conn.execute(first_page, params).all()
            return self._scan(conn, next_page, first, params, batch_size, scan_limit, busy)

    def _paged(self, select: sa.Select[Any]) -> tuple[sa.Select[Any], sa.Select[Any]]:
        """(first page, the page after :after) of `select`, built once: SQLAlchemy keeps a
        statement object's cache key, which costs more to make than the rest of the call."""
        page = sa.bindparam("page", type_=sa.Integer())
        after = sa.bindparam("after", type_=sa.BigInteger())
        return select.limit(page), select.where(self.table.c.seq > after).limit(page)

    def _scan(
        self,
        conn: sa.Connection,
        next_page: sa.Select[Any],
        chunk: Sequence[Any],
        params: dict[str, Any],
        batch_size: int,
        scan_limit: int,
        busy: frozenset[Key],
    ) -> Pick:
        page = params["page"]
        pick = Pick()
        seen: set[Key] = set(busy)
        picked: set[Key] = set()
        scanned = 0
        while True:
            for seq, event_id, topic, key, payload, attempts, waiting, created in chunk:
                if (topic, key) in seen:  # a key's later rows wait for its first
                    pick.more = pick.more or (topic, key) in picked or (topic, key) in busy
                    continue
                seen.add((topic, key))
                if waiting is not None:
                    if pick.next_due is None or waiting < pick.next_due:
                        pick.next_due = waiting
                    continue
                pick.rows.append(
                    OutboxRow(seq, Message(event_id, topic, key, payload), attempts, created)
                )
                picked.add((topic, key))
                if len(pick.rows) >= batch_size:
                    pick.more = True
                    return pick
            scanned += len(chunk)
            if len(chunk) < page or scanned >= scan_limit:
                pick.more = pick.more or len(chunk) == page
                return pick
            chunk = conn.execute(next_page, {**params, "after": chunk[-1][0]}).all()

    def stats(self) -> tuple[int, datetime | None]:
        """(backlog, created time of the oldest row)."""
        conn = self._autocommit()
        count = conn.execute(self._count).scalar_one()
        return (int(count), conn.execute(self._oldest).scalar()) if count else (0, None)
