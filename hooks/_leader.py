"""Which process relays: exactly one per database (issue 8, "Replicas").

- PostgreSQL: a session advisory lock, taken on a dedicated connection held for as long as the
  process leads. The server drops the lock when that session ends, also when the process is
  killed (`kill -9` closes its socket), so a standby's next attempt (about every second) wins.
- SQLite: an exclusive `flock` on a lock file next to the database file, released by the
  kernel when the holder dies; only one process per file relays.
- Anything else (an in-memory SQLite database, other dialects): the process always leads.

`describe_leader()` tells who leads right now, for `pakaura outbox status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from loguru import logger

__all__ = [
    "AlwaysLeader",
    "FileLockLeadership",
    "Leadership",
    "PostgresLeadership",
    "advisory_key",
    "describe_leader",
    "leadership_for",
    "process_identity",
]

try:  # POSIX only; elsewhere a SQLite database gets `AlwaysLeader`.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class Leadership(Protocol):
    """Leader election as the relay needs it; no method raises."""

    async def acquire(self) -> bool:
        """Tries once, without waiting; True when this process now leads (or already did)."""
        ...

    async def confirm(self) -> bool:
        """True while still leading; False once leadership is lost (call `acquire` again)."""
        ...

    async def release(self) -> None: ...


def process_identity() -> str:
    """Who leads, as shown by `pakaura outbox status`: host and process id."""
    return f"pakaura-relay {socket.gethostname()} pid {os.getpid()}"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (e.g. the outbox table's name)."""
    digest = hashlib.blake2b(f"hooks.relay:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AlwaysLeader:
    """For a database only this process can see (in-memory SQLite) or without a lock primitive."""

    async def acquire(self) -> bool:
        return True

    async def confirm(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class FileLockLeadership:
    """An exclusive `flock` on `path`; the file holds the leader's identity while locked."""

    def __init__(self, path: Path, *, identity: str | None = None) -> None:
        self.path = path
        self.identity = identity or process_identity()
        self._fd: int | None = None

    async def acquire(self) -> bool:
        if self._fd is not None:
            return True
        if fcntl is None:  # pragma: no cover - Windows
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
        except OSError:  # held by another process (BlockingIOError) or unsupported
            os.close(fd)
            return False
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, self.identity.encode(), 0)
        self._fd = fd
        return True

    async def confirm(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None or fcntl is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        with contextlib.suppress(OSError):
            os.close(fd)


class PostgresLeadership:
    """`pg_try_advisory_lock(key)` on a dedicated autocommit psycopg connection.

    `confirm()` round-trips on that connection: a live session still holds its lock, a broken
    one has lost it (the server released it), so the relay stops sending at once.
    """

    def __init__(
        self,
        conninfo: str,
        key: int,
        *,
        identity: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._conninfo = conninfo
        self.key = key
        self.identity = identity or process_identity()
        self._timeout = timeout
        self._conn: Any = None
        self._held = False

    async def _connect(self) -> Any:
        import psycopg

        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                application_name=self.identity[:63],
                connect_timeout=max(1, int(self._timeout)),
                # Notice a dead server or network quickly instead of after hours.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
            ),
            self._timeout,
        )

    async def acquire(self) -> bool:
        if self._held and await self.confirm():
            return True
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await self._connect()
            cur = await asyncio.wait_for(
                self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)),
                self._timeout,
            )
            row = await cur.fetchone()
            self._held = bool(row and row[0])
            return self._held
        except Exception as exc:  # a failed attempt is just "not leader"
            logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                "relay could not reach PostgreSQL for its leader lock"
            )
            await self._close()
            return False

    async def confirm(self) -> bool:
        if not self._held or self._conn is None or self._conn.closed:
            self._held = False
            return False
        try:
            await asyncio.wait_for(self._conn.execute("SELECT 1"), self._timeout)
            return True
        except Exception as exc:
            logger.bind(error=f"{type(exc).__name__}: {exc}").warning(
                "relay lost its leader session; it stops sending"
            )
            await self._close()
            return False

    async def release(self) -> None:
        if self._held and self._conn is not None and not self._conn.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,)),
                    self._timeout,
                )
        await self._close()

    async def _close(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def psycopg_conninfo(url: sa.URL) -> str:
    """A libpq URI from a SQLAlchemy URL (`postgresql+psycopg://…` → `postgresql://…`)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_lock_path(url: sa.URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve().with_name(Path(database).name + ".relay-lock")


def leadership_for(url: sa.URL, name: str, *, identity: str | None = None) -> Leadership:
    """The leadership that fits the database at `url`; `name` tells relays of one DB apart."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresLeadership(psycopg_conninfo(url), advisory_key(name), identity=identity)
    if backend == "sqlite":
        path = _sqlite_lock_path(url)
        if path is not None and fcntl is not None:
            return FileLockLeadership(path, identity=identity)
    return AlwaysLeader()


_PG_HOLDER = sa.text(
    "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = :hi AND l.objid = :lo "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def describe_leader(engine: sa.Engine, name: str) -> str | None:
    """Who relays for `name` on this database now; None when nobody does (or unknowable)."""
    url = engine.url
    backend = url.get_backend_name()
    if backend == "postgresql":
        key = advisory_key(name)
        with engine.connect() as conn:
            row = conn.execute(
                _PG_HOLDER, {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}
            ).first()
        return None if row is None else f"{row[0]} (database backend {row[1]})"
    if backend == "sqlite":
        path = _sqlite_lock_path(url)
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
    return None
