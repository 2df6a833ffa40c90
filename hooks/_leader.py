"""Which process relays: exactly one per database, and who it is (T-016; docs/relay.md,
"One relay per database"): a PostgreSQL session advisory lock on a connection of the
application's engine, an exclusive `flock` next to a SQLite file, else always this process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import select
import socket
import time
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from loguru import logger

__all__ = ["AlwaysLeader", "Leadership", "describe_leader", "leadership_for"]

try:  # POSIX only; elsewhere a SQLite database gets `AlwaysLeader`.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class Leadership(Protocol):
    """Leader election as the relay needs it; no method raises. `acquire` tries once without
    waiting; `confirm` is False once leadership is lost; `announce` adds a note ("waiting for
    the sidecar at …") to the identity that `describe_leader` reads."""

    async def acquire(self) -> bool: ...
    async def confirm(self) -> bool: ...
    async def announce(self, note: str) -> None: ...
    async def release(self) -> None: ...


def _identity() -> str:
    return f"pakaura-relay {socket.gethostname()} pid {os.getpid()}"


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (the outbox table's name)."""
    digest = hashlib.blake2b(f"hooks.relay:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AlwaysLeader:
    async def acquire(self) -> bool:
        return True

    async def confirm(self) -> bool:
        return True

    async def announce(self, note: str) -> None:
        return None

    async def release(self) -> None:
        return None


class _FileLock:
    """An exclusive `flock` on `path`; the file holds the leader's identity while locked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.identity = _identity()
        self._fd: int | None = None

    async def acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            logger.bind(path=str(self.path), error=str(exc)).error(
                "relay cannot open its lock file; this process will not relay"
            )
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another process
            os.close(fd)
            return False
        self._fd = fd
        await self.announce("")
        return True

    async def confirm(self) -> bool:
        return self._fd is not None

    async def announce(self, note: str) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, _with_note(self.identity, note).encode(), 0)

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)


class _AdvisoryLock:
    """`pg_try_advisory_lock(key)` on a connection of `engine`, kept while leading. `confirm()`
    round-trips on it at most once a second, and looks at its socket in between."""

    def __init__(self, engine: sa.Engine, key: int) -> None:
        self.engine = engine
        self.key = key
        self.identity = _identity()
        self._conn: sa.Connection | None = None
        self._held = False
        # application_name holds 63 bytes: the note rides on the confirm query as a comment
        # (pg_stat_activity.query shows a session's last statement).
        self._confirm_sql = "SELECT 1"
        self._checked_until = 0.0

    def _socket_quiet(self) -> bool:
        """No bytes waiting on the lock session's socket. A server that ends the session
        (fail-over, `pg_terminate_backend`) sends an error and closes it: readable at once."""
        try:
            raw: Any = self._conn.connection.driver_connection  # type: ignore[union-attr]
            readable, _, _ = select.select([raw.fileno()], [], [], 0)
        except Exception:
            return False
        return not readable

    async def _run(self, sql: str, **params: object) -> object:
        """One statement on the lock connection, in a thread, bounded by the time-out."""

        def run() -> object:
            if self._conn is None:
                self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            return self._conn.execute(sa.text(sql), params).scalar()

        return await asyncio.wait_for(asyncio.to_thread(run), 5.0)

    async def acquire(self) -> bool:
        if self._held and await self.confirm():
            return True
        try:
            self._held = bool(await self._run("SELECT pg_try_advisory_lock(:k)", k=self.key))
            if self._held:
                await self.announce("")
            return self._held
        except Exception as exc:  # a failed attempt is just "not leader"
            logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                "relay could not reach PostgreSQL for its leader lock"
            )
            await self._close()
            return False

    async def confirm(self) -> bool:
        if not self._held or self._conn is None:
            self._held = False
            return False
        if time.monotonic() < self._checked_until and self._socket_quiet():
            return True  # a round trip less per round: a killed session shows on its socket
        try:
            await self._run(self._confirm_sql)
            self._checked_until = time.monotonic() + 1.0
            return True
        except Exception as exc:
            logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                "relay lost its leader session; it stops sending"
            )
            await self._close()
            return False

    async def announce(self, note: str) -> None:
        note = note.replace("*/", "").replace(":", "\\:")  # text(): a literal colon
        self._confirm_sql = f"SELECT 1 /* {note} */" if note else "SELECT 1"
        with contextlib.suppress(Exception):
            await self._run(
                "SELECT set_config('application_name', :n, false)", n=self.identity[:63]
            )
            await self._run(self._confirm_sql)

    async def release(self) -> None:
        if self._held:
            with contextlib.suppress(Exception):
                await self._run("SELECT pg_advisory_unlock(:k)", k=self.key)
        await self._close()

    async def _close(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            # Invalidated, not returned: the session (and any lock it still has) must end.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_discard, conn)


def _discard(conn: sa.Connection) -> None:
    conn.invalidate()
    conn.close()


def _with_note(identity: str, note: str) -> str:
    return f"{identity} ({note})" if note else identity


def _sqlite_lock_path(url: sa.URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + ".relay-lock")


def leadership_for(engine: sa.Engine, name: str) -> Leadership:
    """The leadership that fits `engine`'s database; `name` tells relays of one database apart."""
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        return _AdvisoryLock(engine, _advisory_key(name))
    path = _sqlite_lock_path(engine.url) if backend == "sqlite" else None
    return _FileLock(path) if path is not None and fcntl is not None else AlwaysLeader()


_PG_HOLDER = sa.text(
    "SELECT a.application_name, a.pid, a.query "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = :hi AND l.objid = :lo "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def describe_leader(engine: sa.Engine, name: str) -> str | None:
    """Who relays for `name` on this database now; None when nobody does (or unknowable)."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "postgresql":
        key = _advisory_key(name)
        with engine.connect() as conn:
            row = conn.execute(
                _PG_HOLDER, {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}
            ).first()
        if row is None:
            return None
        note = re.search(r"/\* (.*) \*/", row[2] or "")
        return _with_note(f"{row[0]} (database backend {row[1]})", note.group(1) if note else "")
    path = _sqlite_lock_path(url) if backend == "sqlite" else None
    if path is None or fcntl is None or not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # held: read who holds it
            return os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
