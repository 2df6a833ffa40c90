"""A test-only tracked model on its own MetaData, a rule that reports what the hooks saw, and
session drivers that run one scenario with a sync `Session` or an `AsyncSession`.

    ensure_tracked()
    sink.use(OutboxSink(outbox))   # or sink.use(MemorySink())
    with open_ops(url, "async") as ops:
        ops.add(Note(owner="a", body="x")); ops.commit()
    read_outbox(engine) -> [("insert", 1, ...), ...]
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import hooks
from hooks import Message, RowChange, UTCDateTime, utc_now

__all__ = [
    "Folder",
    "Note",
    "Ops",
    "Plain",
    "SinkSwitch",
    "async_url",
    "create_schema",
    "ensure_tracked",
    "metadata",
    "note_rule",
    "open_ops",
    "outbox",
    "outbox_bodies",
    "read_outbox",
    "sink",
    "summary",
]

metadata = sa.MetaData()


class Base(DeclarativeBase):
    metadata = metadata


class Folder(Base):
    """Untracked parent of notes: the unit of work's cascades reach `Note` through it."""

    __tablename__ = "hook_folder"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), default="f")
    # selectin: an AsyncSession cannot load the collection lazily.
    notes: Mapped[list[Note]] = relationship(cascade="all, delete-orphan", lazy="selectin")


class Note(Base):
    """Tracked. `touched_at` is bumped by every UPDATE and ignored by the hooks."""

    __tablename__ = "hook_note"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(50))
    body: Mapped[str] = mapped_column(sa.String(200))
    done: Mapped[bool] = mapped_column(default=False)
    due: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now)
    folder_id: Mapped[int | None] = mapped_column(sa.ForeignKey("hook_folder.id"), default=None)


class Plain(Base):
    """The same shape, not tracked."""

    __tablename__ = "hook_plain"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(sa.String(50))
    body: Mapped[str] = mapped_column(sa.String(200))
    done: Mapped[bool] = mapped_column(default=False)


outbox = hooks.build_outbox_table(metadata, "hook_outbox")


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def note_rule(change: RowChange) -> list[Message]:
    """One message per change: what the hooks captured, as JSON. A no-op never gets here."""
    body = {
        "kind": change.kind,
        "table": change.table,
        "identity": list(change.identity),
        "changed": sorted(change.changed),
        "old": {k: _json(v) for k, v in change.old.items()},
        "new": {k: _json(v) for k, v in change.new.items()},
    }
    key = str(change.identity[0])
    return [
        Message(id=str(uuid.uuid4()), topic=f"note.{change.kind}", key=key, body=json.dumps(body))
    ]


class SinkSwitch:
    """The tracker's sink factory: whichever sink the current test chose."""

    def __init__(self) -> None:
        self.current: hooks.Sink | None = None

    def use(self, target: hooks.Sink) -> hooks.Sink:
        self.current = target
        return target

    def __call__(self, session: Session) -> hooks.Sink:
        if self.current is None:
            raise AssertionError("test did not choose a sink (sink.use(...))")
        return self.current


sink = SinkSwitch()


def ensure_tracked() -> hooks.Tracker:
    return hooks.track(Note, note_rule, sink_factory=sink, ignore=("touched_at",))


def summary(message_body: str) -> tuple[Any, ...]:
    """(kind, id, changed fields) of one captured change."""
    body = json.loads(message_body)
    return (body["kind"], body["identity"][0], tuple(body["changed"]))


def read_outbox(engine: sa.Engine, table: sa.Table = outbox) -> list[tuple[Any, ...]]:
    """Every outbox row in `seq` order, summarised (kind, id, changed)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.payload).order_by(table.c.seq)).scalars().all()
    return [summary(body) for body in rows]


def outbox_bodies(engine: sa.Engine, table: sa.Table = outbox) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.payload).order_by(table.c.seq)).scalars().all()
    return [json.loads(body) for body in rows]


def async_url(url: str) -> str:
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        return sa_url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    return sa_url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


# -- one scenario, sync or async -------------------------------------------------------------

Mode = Literal["sync", "async"]


class Ops:
    """The session operations a scenario uses, the same for sync and async sessions."""

    def __init__(
        self, session: Session | AsyncSession, run: Callable[[Awaitable[Any]], Any] | None
    ) -> None:
        self.session = session
        self._run = run

    @property
    def is_async(self) -> bool:
        return self._run is not None

    @property
    def sync_session(self) -> Session:
        session = self.session
        return session.sync_session if isinstance(session, AsyncSession) else session

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        result = getattr(self.session, name)(*args, **kw)
        if self._run is not None and asyncio.iscoroutine(result):
            return self._run(result)
        return result

    def add(self, *objects: Any) -> None:
        self.session.add_all(objects)

    def delete(self, obj: Any) -> None:
        self._call("delete", obj)

    def flush(self) -> None:
        self._call("flush")

    def commit(self) -> None:
        self._call("commit")

    def rollback(self) -> None:
        self._call("rollback")

    def close(self) -> None:
        self._call("close")

    def refresh(self, obj: Any) -> None:
        self._call("refresh", obj)

    def get(self, cls: type, ident: Any) -> Any:
        return self._call("get", cls, ident)

    def merge(self, obj: Any) -> Any:
        return self._call("merge", obj)

    def execute(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        return self._call("execute", statement, params, **kw)

    def run_sync(self, fn: Callable[[Session], Any]) -> Any:
        """`fn(session)` on the sync session (`AsyncSession.run_sync` for async)."""
        if isinstance(self.session, AsyncSession):
            return self._call("run_sync", fn)
        return fn(self.session)

    def scalars(self, statement: Any) -> list[Any]:
        return list(self.execute(statement).scalars().all())

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """`with session.begin_nested():` - released on success, rolled back on error."""
        nested: Any = self.session.begin_nested()
        if self._run is not None:
            nested = self._run(nested.start())  # AsyncSessionTransaction: awaited to begin
        try:
            yield
        except BaseException:
            self._call_on(nested, "rollback")  # also after a failed flush deactivated it
            raise
        else:
            self._call_on(nested, "commit")

    def _call_on(self, target: Any, name: str) -> Any:
        result = getattr(target, name)()
        if self._run is not None and asyncio.iscoroutine(result):
            return self._run(result)
        return result


@contextmanager
def open_ops(
    url: str, mode: Mode, *, expire_on_commit: bool = True, session_cls: type[Session] = Session
) -> Iterator[Ops]:
    """An `Ops` on a fresh engine for `url` (async drivers for `mode="async"`)."""
    if mode == "sync":
        engine = sa.create_engine(url)
        session = session_cls(engine, expire_on_commit=expire_on_commit)
        try:
            yield Ops(session, None)
        finally:
            session.close()
            engine.dispose()
        return
    loop = asyncio.new_event_loop()
    run: Callable[[Awaitable[Any]], Any] = loop.run_until_complete
    async_engine = create_async_engine(async_url(url))
    async_session = AsyncSession(async_engine, expire_on_commit=expire_on_commit)
    try:
        yield Ops(async_session, run)
    finally:
        run(async_session.close())
        run(async_engine.dispose())
        loop.close()


def create_schema(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    metadata.create_all(engine)
    return engine
