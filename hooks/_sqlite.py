"""SQLite transactions that savepoints (and several processes) can rely on.

With the driver's legacy transaction control (the default of `sqlite3` and `aiosqlite`) a
SAVEPOINT emitted before the driver's implicit BEGIN is a transaction of its own: a savepoint
released and then rolled back with its parent keeps its rows, events (outbox rows) included.
The fix documented by SQLAlchemy: turn the driver's BEGIN off (`isolation_level = None`) and
emit BEGIN ourselves in the engine's `begin` event.

It is registered on the `Pool`/`Engine` classes, so it holds for every SQLite engine in the
process, also for engines the application did not build (tests, scripts, Alembic), sync or
async. We emit `BEGIN IMMEDIATE`: a transaction takes the write lock up front, so two
processes on one file (API, relay, MCP stdio) wait for each other (busy timeout: the driver's
`timeout`, 5 s by default) instead of failing a lock upgrade with "database is locked".

Left alone: connections in driver-level AUTOCOMMIT (`isolation_level="AUTOCOMMIT"`), and on
Python 3.12+ connections opened with `autocommit=True/False` (the driver's modern transaction
control already handles savepoints).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from hooks._types import HooksError

__all__ = ["BEGIN_STATEMENTS", "install_sqlite_transaction_fix"]

BEGIN_STATEMENTS = ("BEGIN", "BEGIN DEFERRED", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")
# Marks pool entries whose driver BEGIN we turned off (so only those get our BEGIN).
_MANAGED = "hooks.sqlite_begin"
_LEGACY = getattr(sqlite3, "LEGACY_TRANSACTION_CONTROL", -1)

_lock = threading.Lock()
_installed = False
_begin_sql = "BEGIN IMMEDIATE"


def install_sqlite_transaction_fix(begin: str = "BEGIN IMMEDIATE") -> None:
    """Installs the fix for every SQLite engine in the process (idempotent).

    `begin` is the statement that opens each transaction; calling again changes it.
    """
    global _installed, _begin_sql
    normalized = " ".join(begin.upper().split())
    if normalized not in BEGIN_STATEMENTS:
        raise HooksError(f"begin must be one of {', '.join(BEGIN_STATEMENTS)}, got {begin!r}")
    with _lock:
        _begin_sql = normalized
        if _installed:
            return
        event.listen(Pool, "connect", _on_connect)
        event.listen(Engine, "begin", _on_begin)
        _installed = True


def _driver_connection(dbapi_connection: Any) -> Any:
    """The `sqlite3.Connection` behind a pool connection (aiosqlite wraps it twice)."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        return dbapi_connection
    if type(dbapi_connection).__name__ != "AsyncAdapt_aiosqlite_connection":
        return None
    inner = getattr(getattr(dbapi_connection, "_connection", None), "_conn", None)
    return inner if isinstance(inner, sqlite3.Connection) else None


def _legacy_control(raw: sqlite3.Connection) -> bool:
    try:
        return bool(getattr(raw, "autocommit", _LEGACY) == _LEGACY)
    except sqlite3.Error:  # read from another thread (aiosqlite): assume the default
        return True


def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    raw = _driver_connection(dbapi_connection)
    if raw is None:
        return  # not SQLite
    if not _legacy_control(raw):
        return  # Python 3.12+ modern transaction control chosen by the caller
    if dbapi_connection.isolation_level is None:
        return  # driver-level AUTOCOMMIT chosen by the caller
    # For aiosqlite this goes through SQLAlchemy's adapter, on the driver's own thread.
    dbapi_connection.isolation_level = None
    record.info[_MANAGED] = True


def _on_begin(conn: Connection) -> None:
    if conn.dialect.name != "sqlite":
        return
    if not conn.connection.info.get(_MANAGED):
        return
    level = conn.get_execution_options().get("isolation_level")
    if level is None:
        level = getattr(conn.dialect, "_on_connect_isolation_level", None)
    if level == "AUTOCOMMIT":
        return
    conn.exec_driver_sql(_begin_sql)
