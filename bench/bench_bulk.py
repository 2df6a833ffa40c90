"""ORM bulk UPDATE / DELETE at scale (issue 16, T-014/T-017): hook work per event.

    python -m bench.bench_bulk [--rows 20000] [--rounds 3] [--only sqlite|postgresql]
                               [--pg-url URL] [--profile]

Each round fills two tables with `--rows` tasks (the real `Task`, tracked, with
`DAPR_ENABLED=true`; and `PlainTask` from bench_hooks: the same columns, untracked), outside
the timings, then times, each in its own transaction with commit:

- an ORM bulk UPDATE of every row: `update(Model).where(user_id == ...).values(title=title
  + "!", completed=True)` (a real change per row: `task.completed` + `task.sync` +
  `reminder.cancelled` for the half with a due date);
- an ORM bulk DELETE of every row (`task.deleted` + `task.sync`; the tasks are completed by
  then, so no reminder: 2 events per row).

Hooks on and off take turns (order flipped every round). Reported: medians over rounds,
per-event hook cost = (time with hooks - time without) / events written to the outbox, in
elapsed time and in this thread's CPU time (steadier on a busy machine; it leaves out the
database server's own work).
`--profile` runs one hooked UPDATE and DELETE under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import platform
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from loguru import logger
from sqlmodel import Session, SQLModel

from bench.bench_hooks import _models, _postgres

OPS = ("update", "delete")


def _fill(engine: sa.Engine, model: type[Any], rows: int) -> None:
    """`rows` tasks through Core (no hooks, no outbox rows), half with a due date."""
    table: sa.Table = model.__table__
    now = datetime.now(UTC)
    due = now + timedelta(days=7)
    values = [
        {
            "user_id": "bench",
            "title": f"Task {n}",
            "description": None,
            "completed": False,
            "due_date": due if n % 2 else None,
            "created_at": now,
            "updated_at": now,
        }
        for n in range(rows)
    ]
    with engine.begin() as conn:
        conn.execute(table.delete())
        for start in range(0, rows, 5000):
            conn.execute(table.insert(), values[start : start + 5000])


def _statement(model: type[Any], op: str) -> Any:
    if op == "update":
        return (
            sa.update(model)
            .where(model.user_id == "bench")
            .values(title=model.title + "!", completed=True)
        )
    return sa.delete(model).where(model.user_id == "bench")


def _timed(engine: sa.Engine, model: type[Any], op: str) -> tuple[float, float]:
    """(elapsed, this thread's CPU) seconds of the statement and its commit."""
    with Session(engine) as session:
        statement = _statement(model, op)
        start, cpu = time.perf_counter(), time.thread_time()
        session.execute(statement)
        session.commit()
        return time.perf_counter() - start, time.thread_time() - cpu


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def run(url: str, *, rows: int, rounds: int) -> dict[str, Any]:
    models = _models()
    tables = [models.on.__table__, models.off.__table__, models.outbox]
    engine = sa.create_engine(url)
    SQLModel.metadata.drop_all(engine, tables=tables)
    SQLModel.metadata.create_all(engine, tables=tables)
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    events: dict[str, list[int]] = {op: [] for op in OPS}
    try:
        _fill(engine, models.on, 100)  # warm-up: statement caches, connection
        for op in OPS:
            _timed(engine, models.on, op)
        for n in range(rounds):
            variants = [("on", models.on), ("off", models.off)]
            if n % 2:
                variants.reverse()
            for _, model in variants:
                _fill(engine, model, rows)
            with engine.begin() as conn:
                conn.execute(models.outbox.delete())
            for op in OPS:
                for name, model in variants:
                    gc.collect()
                    samples.setdefault((name, op), []).append(_timed(engine, model, op))
                    if name == "on":
                        events[op].append(_count(engine, models.outbox))
                        with engine.begin() as conn:
                            conn.execute(models.outbox.delete())
    finally:
        engine.dispose()
    return {"samples": samples, "events": events}


def profile(url: str, *, rows: int, top: int = 25) -> None:
    models = _models()
    engine = sa.create_engine(url)
    tables = [models.on.__table__, models.outbox]
    SQLModel.metadata.drop_all(engine, tables=tables)
    SQLModel.metadata.create_all(engine, tables=tables)
    try:
        for op in OPS:
            if op == "update":
                _fill(engine, models.on, rows)
            profiler = cProfile.Profile()
            profiler.enable()
            _timed(engine, models.on, op)
            profiler.disable()
            print(f"-- {op} of {rows} rows, hooks on")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(top)
    finally:
        engine.dispose()


def report(name: str, rows: int, result: dict[str, Any]) -> list[str]:
    samples, events = result["samples"], result["events"]
    lines = []
    for op in OPS:
        on = statistics.median(wall for wall, _ in samples[("on", op)])
        off = statistics.median(wall for wall, _ in samples[("off", op)])
        cpu_on = statistics.median(cpu for _, cpu in samples[("on", op)])
        cpu_off = statistics.median(cpu for _, cpu in samples[("off", op)])
        count = statistics.median(events[op])
        per_event = (on - off) / count * 1e6 if count else float("nan")
        cpu_per_event = (cpu_on - cpu_off) / count * 1e6 if count else float("nan")
        lines.append(
            f"| {name} | {op} | {rows:,} | {off * 1e3:,.0f} | {on * 1e3:,.0f} | {count:,.0f} "
            f"| **{per_event:.1f}** | {cpu_per_event:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=None, help="PostgreSQL URL (default: a scratch DB)")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--dir", default=None, help="directory for the SQLite file")
    parser.add_argument("--profile", action="store_true", help="cProfile one hooked run")
    args = parser.parse_args(argv)

    logger.remove()
    os.environ["DAPR_ENABLED"] = "true"
    os.environ.setdefault("RELAY_ENABLED", "false")
    from src.config import get_settings

    get_settings.cache_clear()

    lines = [
        "| database | statement | rows | hooks off (ms) | hooks on (ms) | events "
        "| hook µs per event | hook CPU µs per event |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    measure: Callable[[str], Any]
    if args.profile:
        measure = lambda url: profile(url, rows=args.rows)  # noqa: E731
    else:
        measure = lambda url: run(url, rows=args.rows, rounds=args.rounds)  # noqa: E731

    if args.only in (None, "sqlite"):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            result = measure(f"sqlite:///{Path(tmp) / 'bench.db'}")
            if result is not None:
                lines += report("SQLite file", args.rows, result)
    if args.only in (None, "postgresql"):
        with _postgres(args.pg_url) as url:
            result = measure(url)
            if result is not None:
                lines += report("PostgreSQL", args.rows, result)
    if args.profile:
        return 0
    print(
        f"{args.rounds} rounds, medians; Python {platform.python_version()}, "
        f"SQLAlchemy {sa.__version__}, {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
