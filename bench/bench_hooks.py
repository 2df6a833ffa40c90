"""ORM hooks overhead (issue 4): time per single-task insert / update / delete with commit,
hooks on versus hooks off, in the same run, on a SQLite file and on PostgreSQL.

    python -m bench.bench_hooks [--ops 400] [--rounds 6] [--only sqlite|postgresql]
                                [--pg-url URL] [--sqlite-url URL] [--clock wall|cpu]

"Hooks on" is the real `Task` model with its real hooks and `DAPR_ENABLED=true`: capture,
Task derivation (2-3 CloudEvents per change) and the outbox INSERT (+ `pg_notify` on
PostgreSQL) in the same transaction. "Hooks off" is `PlainTask`: the same columns and SQLModel
base, untracked (the session-level listeners still run and exit early, as they do for every
untracked write in the app). Each operation is its own transaction: `add` + `commit`,
attribute change + `commit`, `delete` + `commit`, on one session with
`expire_on_commit=False` (the app reloads the task per request, so no reload is measured).
The variants take turns operation by operation, so drift (fsync times, a busy machine)
hits both alike; the outbox is emptied between rounds (the relay would), outside the timings.
`--clock cpu` measures this thread's CPU time instead of elapsed time: the hooks' own cost
without the disk's noise. Three more variants take their turns too, to split the cost:

- "capture only" (`CaptureTask`): the same hooks and Task rules, messages dropped instead of
  written: the hooks' Python work without the outbox statement;
- "outbox only" (`OutboxOnlyTask`): untracked, but every write also hands the messages the
  Task rules make for such a row (derived once, up front) to the real `OutboxSink`: the outbox
  writer without capture or derivation;
- "+ `SELECT 1`" (`OneStatementTask`): untracked, every write also runs `SELECT 1` straight
  on the flush's DBAPI connection: the cost of any one extra statement in the transaction,
  the floor of every design that writes its events with a statement of their own.

Results go to stdout as a Markdown table (paste into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.orm import registry
from sqlmodel import Field, Session, SQLModel

OPS = ("insert", "update", "delete")


class _DiscardSink:
    """Takes a flush's messages and does nothing with them (the "capture" variant)."""

    def write(self, session: Any, connection: Any, messages: Any, /) -> None:
        return None


@dataclass(frozen=True)
class Models:
    on: type[Any]
    off: type[Any]
    capture: type[Any]
    outbox_only: type[Any]
    one_statement: type[Any]
    outbox: sa.Table

    def variants(self) -> list[tuple[str, type[Any]]]:
        return [
            ("off", self.off),
            ("capture", self.capture),
            ("outbox", self.outbox_only),
            ("statement", self.one_statement),
            ("on", self.on),
        ]

    def tables(self) -> list[sa.Table]:
        models = (self.on, self.off, self.capture, self.outbox_only, self.one_statement)
        return [*(model.__table__ for model in models), self.outbox]


@functools.cache
def _models() -> Models:
    from src.events.derivation import derive_task_events
    from src.events.wiring import IGNORED_COLUMNS, install_task_hooks, outbox_wakeup, task_rule
    from src.models import Task, TaskBase, outbox_table
    from src.tracing import new_traceparent

    from hooks import OutboxSink, RowChange, UTCDateTime, track, utc_now

    install_task_hooks(Task)  # what importing the model does once the lead's wiring is in

    class _BenchBase(SQLModel, registry=registry()):
        """The benchmark's own tables stay out of the app's metadata (migrations, create_all)."""

    class _TaskColumns(TaskBase, _BenchBase):
        """The columns `Task` adds to `TaskBase`, for the benchmark's copies of it."""

        __table_args__ = {"sqlite_autoincrement": True}  # as Task's ids: never reused

        id: int | None = Field(default=None, primary_key=True)
        user_id: str = Field(index=True, max_length=255)
        completed: bool = Field(default=False)
        created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
        updated_at: datetime = Field(
            default_factory=utc_now, sa_type=UTCDateTime, sa_column_kwargs={"onupdate": utc_now}
        )

    class PlainTask(_TaskColumns, table=True):
        """The Task columns, untracked."""

        __tablename__ = "bench_plain_task"

    class CaptureTask(_TaskColumns, table=True):
        """The Task columns with the Task hooks and rules, but no outbox: messages dropped."""

        __tablename__ = "bench_capture_task"

    class OutboxOnlyTask(_TaskColumns, table=True):
        """Untracked; each write also writes ready-made messages through the real outbox."""

        __tablename__ = "bench_outbox_only_task"

    class OneStatementTask(_TaskColumns, table=True):
        """Untracked; each write also runs `SELECT 1` on the flush's connection."""

        __tablename__ = "bench_one_statement_task"

    discard = _DiscardSink()
    track(CaptureTask, task_rule, sink_factory=lambda session: discard, ignore=IGNORED_COLUMNS)

    # What the Task rules make for the benchmark's rows (with and without a due date), derived
    # once: the "outbox only" variant writes them without capturing or deriving anything.
    from src.config import get_settings

    now = utc_now()
    rows = {
        due: {
            "id": 1,
            "user_id": "bench",
            "title": "Task 1",
            "description": None,
            "completed": False,
            "due_date": now + timedelta(days=7) if due else None,
            "created_at": now,
            "updated_at": now,
        }
        for due in (False, True)
    }
    ready: dict[tuple[str, bool], list[Any]] = {}
    for due, row in rows.items():
        edited = {**row, "title": "Task 1 (edited)"}
        for change in (
            RowChange("insert", "t", (1,), {}, row),
            RowChange("update", "t", (1,), row, edited, frozenset({"title"})),
            RowChange("delete", "t", (1,), row, {}),
        ):
            # With a trace context, as every real event has one (issue 19).
            ready[(change.kind, due)] = derive_task_events(
                change, get_settings(), time=now, traceparent=new_traceparent()
            )
    sink = OutboxSink(outbox_table, wakeup=outbox_wakeup)  # what the Task wiring builds

    def write_ready(kind: str) -> Callable[..., None]:
        def listener(mapper: Any, connection: sa.Connection, target: Any) -> None:
            session = sa.orm.object_session(target)
            assert session is not None  # mapper events fire inside a flush
            sink.write(session, connection, ready[(kind, target.due_date is not None)])

        return listener

    def select_one(mapper: Any, connection: sa.Connection, target: Any) -> None:
        # Straight on the DBAPI cursor: the statement's own cost, without SQLAlchemy's.
        cursor = connection.connection.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()

    for kind in ("insert", "update", "delete"):
        sa.event.listen(OutboxOnlyTask, f"after_{kind}", write_ready(kind))
        sa.event.listen(OneStatementTask, f"after_{kind}", select_one)
    return Models(Task, PlainTask, CaptureTask, OutboxOnlyTask, OneStatementTask, outbox_table)


@dataclass
class Timings:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, variant: str, op: str, seconds: float) -> None:
        self.samples.setdefault((variant, op), []).append(seconds)

    def median_us(self, variant: str, op: str) -> float:
        return statistics.median(self.samples[(variant, op)]) * 1e6

    def p90_us(self, variant: str, op: str) -> float:
        values = sorted(self.samples[(variant, op)])
        return values[int(len(values) * 0.9)] * 1e6


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def _round(
    session: Session,
    variants: list[tuple[str, type[Any]]],
    ops: int,
    timings: Timings,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """`ops` inserts, then updates, then deletes per variant, each with its own commit.

    The variants take turns operation by operation (their order flipping every time), so a
    slow patch of the disk or a busy neighbour hits both alike.
    """
    due = datetime.now(UTC) + timedelta(days=7)
    tasks: dict[str, list[Any]] = {name: [] for name, _ in variants}

    def pairs(n: int) -> list[tuple[str, type[Any]]]:
        return variants if n % 2 == 0 else variants[::-1]

    for n in range(ops):
        for name, model in pairs(n):
            task = model(user_id="bench", title=f"Task {n}", due_date=due if n % 2 else None)
            start = clock()
            session.add(task)
            session.commit()
            timings.add(name, "insert", clock() - start)
            tasks[name].append(task)
    for n in range(ops):
        for name, _ in pairs(n):
            task = tasks[name][n]
            start = clock()
            task.title = f"Task {n} (edited)"
            session.commit()
            timings.add(name, "update", clock() - start)
    for n in range(ops):
        for name, _ in pairs(n):
            task = tasks[name][n]
            start = clock()
            session.delete(task)
            session.commit()
            timings.add(name, "delete", clock() - start)


def run(url: str, *, ops: int, rounds: int, warmup: int, clock: str = "wall") -> Timings:
    models = _models()
    tables = models.tables()
    outbox = models.outbox
    engine = sa.create_engine(url)
    SQLModel.metadata.drop_all(engine, tables=tables)
    SQLModel.metadata.create_all(engine, tables=tables)
    variants = models.variants()
    timings = Timings()
    try:
        with Session(engine, expire_on_commit=False) as session:
            _round(session, variants, warmup, Timings())  # caches, statement cache, connection
            for _ in range(rounds):
                gc.collect()
                gc.disable()
                try:
                    _round(session, variants, ops, timings, CLOCKS[clock])
                finally:
                    gc.enable()
                with engine.begin() as conn:  # what the relay does, outside the timings
                    conn.execute(outbox.delete())
    finally:
        engine.dispose()
    return timings


def report(name: str, timings: Timings) -> list[str]:
    lines = []
    for op in OPS:
        off, on = timings.median_us("off", op), timings.median_us("on", op)
        parts = " | ".join(
            f"{timings.median_us(variant, op) / off:.2f}x"
            for variant in ("capture", "outbox", "statement")
        )
        # Issue 16's goals: hooks on against the floor of any design that writes its events
        # with a statement of its own (+ SELECT 1; SQLite: the outbox INSERT alone), and the
        # hooks' own work per change (capture only - off).
        floor = timings.median_us("statement", op)
        outbox_floor = timings.median_us("outbox", op)
        capture = timings.median_us("capture", op) - off
        lines.append(
            f"| {name} | {op} | {off:,.0f} | {on:,.0f} | **{on / off:.2f}x** | {parts} | "
            f"**{on / floor:.2f}x** | **{on / outbox_floor:.2f}x** | {capture:,.0f} | "
            f"{timings.p90_us('off', op):,.0f} / {timings.p90_us('on', op):,.0f} |"
        )
    return lines


@contextmanager
def _postgres(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from tests.support.databases import scratch_postgres_database

    with scratch_postgres_database() as scratch:
        yield scratch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=400, help="operations per kind per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--pg-url", default=None, help="PostgreSQL URL (default: a scratch DB)")
    parser.add_argument(
        "--only", choices=["sqlite", "postgresql"], default=None, help="one database only"
    )
    parser.add_argument("--dir", default=None, help="directory for the SQLite file")
    parser.add_argument(
        "--sqlite-url",
        default=None,
        help="SQLite URL instead of a temporary file; sqlite:// (in memory) leaves the disk out "
        "and shows the hooks' own work",
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time (I/O included); cpu: this thread's CPU time only",
    )
    args = parser.parse_args(argv)

    logger.remove()  # no log output inside the timings
    os.environ["DAPR_ENABLED"] = "true"
    os.environ.setdefault("RELAY_ENABLED", "false")
    from src.config import get_settings

    get_settings.cache_clear()

    lines = [
        "| database | operation | hooks off (µs) | hooks on (µs) | on / off "
        "| capture only / off | outbox only / off | + `SELECT 1` / off "
        "| on / (+ `SELECT 1`) | on / outbox only | capture - off (µs) | p90 off / on (µs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def measure(url: str) -> Timings:
        return run(url, ops=args.ops, rounds=args.rounds, warmup=args.warmup, clock=args.clock)

    if args.only in (None, "sqlite") and args.sqlite_url:
        lines += report("SQLite (given URL)", measure(args.sqlite_url))
    elif args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            lines += report("SQLite file", measure(f"sqlite:///{Path(tmp) / 'bench.db'}"))
    if args.only in (None, "postgresql"):
        with _postgres(args.pg_url) as url:
            lines += report("PostgreSQL", measure(url))
    print(
        f"{args.clock} clock, {args.rounds} rounds x {args.ops} ops per variant; "
        f"Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
