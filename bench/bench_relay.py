"""Outbox relay benchmarks (issue 8): drain rate, commit-to-sidecar latency, memory.

    python -m bench.bench_relay drain   [--db sqlite|postgresql] [--events 50000] [--mode auto]
    python -m bench.bench_relay latency [--db ...] [--rate 200] [--seconds 10] [--writer thread]
    python -m bench.bench_relay memory  [--db ...] [--events 100000] [--seconds 30]
    python -m bench.bench_relay api     [--db ...] [--rate 50] [--seconds 10] [--repeat 3]

`--mode`: auto (bulk publish), never (single publish), null (no HTTP: the relay's own cost).
The emulated sidecar (tests/support/dapr_emulator.py) runs in a process of its own
(bench/_sidecar.py), so its CPU is not counted against the relay. The relay is the app's:
`src.events.relay_service` (OutboxRelay + DaprTransport + the commit wake-up). Results are in
docs/benchmarks.md, "Outbox relay (issue 8)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from loguru import logger

from bench.publish_throughput import _free_port, _messages, _wait_listening

# --- environment ---------------------------------------------------------------------------


@contextmanager
def database(kind: str) -> Iterator[str]:
    """An empty database: a SQLite file in a temporary directory, or a scratch PostgreSQL DB."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
    else:
        from tests.support.databases import scratch_postgres_database

        with scratch_postgres_database() as url:
            yield url


@dataclass
class Sidecar:
    port: int
    dump: Path
    proc: subprocess.Popen[bytes] | None = None

    def cpu(self) -> float:
        """CPU seconds the emulator's process has used (Linux; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (AttributeError, OSError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> list[list[Any]]:
        """Stops the emulator; returns [topic, type, id, task_id, received_at] per event."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:  # seen once after a "hung" round: don't abort
                self.proc.kill()
                self.proc.wait(30)
            self.proc = None
        if not self.dump.exists():
            return []
        return [json.loads(line) for line in self.dump.read_text().splitlines() if line]


@contextmanager
def sidecar(tmp: Path) -> Iterator[Sidecar]:
    port = _free_port()
    car = Sidecar(port, tmp / f"sidecar-{port}.jsonl")
    car.proc = subprocess.Popen(
        [sys.executable, "-m", "bench._sidecar", "--port", str(port), "--dump", str(car.dump)],
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port)
        yield car
    finally:
        car.stop()


def app_env(db_url: str, dapr_port: int, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db_url,
        "DAPR_ENABLED": "true",
        "DAPR_HTTP_PORT": str(dapr_port),
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def use_app(env: dict[str, str]) -> Any:
    """Points this process's settings, engine and hooks at `env`; returns the settings."""
    os.environ.update(env)
    from src.config import get_settings
    from src.db import create_tables, get_engine, reset_engine

    get_settings.cache_clear()
    reset_engine()
    create_tables(get_engine())
    logger.remove()
    logger.add(sys.stderr, level="ERROR")  # failed rounds are expected in some runs
    return get_settings()


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def backlog(engine: sa.Engine) -> int:
    from src.models import outbox_table

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar_one())


def fill_outbox(engine: sa.Engine, events: int, settings: Any) -> None:
    """`events` realistic rows (task.created + task.sync per task), as the writer stores them."""
    from src.models import outbox_table

    now = datetime.now(UTC)
    messages = _messages(events, settings)
    for start in range(0, len(messages), 5000):
        rows = [
            {
                "event_id": m.id,
                "topic": m.topic,
                "partition_key": m.key,
                "payload": m.body,
                "created_at": now,
                "next_attempt_at": now,
            }
            for m in messages[start : start + 5000]
        ]
        with engine.begin() as conn:
            conn.execute(sa.insert(outbox_table), rows)


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98], "max": values[-1], "n": len(values)}


# --- drain rate ------------------------------------------------------------------------------


class NullTransport:
    """Accepts everything at once: the relay's own cost (database, loop), no HTTP."""

    async def send(self, messages: Any, /) -> list[Any]:
        from hooks import Outcome, SendResult

        return [SendResult(Outcome.OK)] * len(messages)

    async def aclose(self) -> None:
        return None


def drain(db: str, events: int, mode: str) -> dict[str, Any]:
    from src.db import get_engine
    from src.events.relay_service import build_relay

    with database(db) as url, tempfile.TemporaryDirectory() as tmp, sidecar(Path(tmp)) as car:
        bulk = "auto" if mode == "null" else mode
        settings = use_app(app_env(url, car.port, DAPR_BULK_PUBLISH=bulk))
        engine = get_engine()
        fill_outbox(engine, events, settings)
        relay, transport = build_relay(settings, engine=engine)
        if mode == "null":
            transport = NullTransport()
            relay._transport = transport

        async def run() -> tuple[float, float, float]:
            wall, cpu, car_cpu = time.perf_counter(), time.process_time(), car.cpu()
            await relay.start()
            while relay.status().published < events:
                await asyncio.sleep(0.005)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            car_cpu = car.cpu() - car_cpu
            await relay.stop()
            await transport.aclose()
            return wall, cpu, car_cpu

        wall, cpu, car_cpu = asyncio.run(run())
        left = backlog(engine)
        received = car.stop()
    return {
        "db": db,
        "mode": mode,
        "events": events,
        "seconds": round(wall, 2),
        "events_per_s": round(events / wall),
        "relay_cpu_us_per_event": round(cpu / events * 1e6, 1),
        # The emulated sidecar's own process, on the same cores (not a part of the relay's).
        "sidecar_cpu_us_per_event": round(car_cpu / events * 1e6, 1) if mode != "null" else None,
        "left_in_outbox": left,
        "received": len(received) if mode != "null" else None,
    }


# --- commit-to-sidecar latency -------------------------------------------------------------------


def write_paced(rate: float, seconds: float) -> list[tuple[int, float]]:
    """Creates one task every 1/rate s through the ORM; returns (task id, commit time)."""
    from sqlmodel import Session
    from src.db import get_engine
    from src.models import Task

    engine = get_engine()
    out: list[tuple[int, float]] = []
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with Session(engine) as session:
            task = Task(user_id=f"user-{n % 20}", title=f"task {n}")
            session.add(task)
            session.commit()
            committed = time.time()
            assert task.id is not None
            out.append((task.id, committed))
    return out


def latency(db: str, rate: float, seconds: float, writer: str) -> dict[str, Any]:
    from src.db import get_engine
    from src.events.relay_service import start_relay

    with database(db) as url, tempfile.TemporaryDirectory() as tmp, sidecar(Path(tmp)) as car:
        env = app_env(url, car.port)
        settings = use_app(env)
        engine = get_engine()

        async def run() -> list[tuple[int, float]]:
            handle = await start_relay(settings)
            while handle.status()["state"] != "leader":
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            if writer == "thread":
                commits = await asyncio.to_thread(write_paced, rate, seconds)
            else:  # another process: only LISTEN/NOTIFY (or the poll) wakes this relay
                out = Path(tmp) / "commits.json"
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.bench_relay",
                    "_writer",
                    "--rate",
                    str(rate),
                    "--seconds",
                    str(seconds),
                    "--out",
                    str(out),
                    env={**os.environ, **env},
                )
                await proc.wait()
                commits = [(int(i), float(t)) for i, t in json.loads(out.read_text())]
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(backlog, engine) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await handle.stop()
            return commits

        commits = asyncio.run(run())
        received = car.stop()
    committed_at = dict(commits)
    lags = [
        (at - committed_at[task_id]) * 1000
        for _topic, kind, _id, task_id, at in received
        if kind == "task.created" and task_id in committed_at
    ]
    return {
        "db": db,
        "writer": writer,
        "rate": rate,
        "mutations": len(commits),
        "delivered": len(lags),
        "latency_ms": {k: round(v, 2) for k, v in percentiles(lags).items()},
    }


# --- memory with the sidecar down -----------------------------------------------------------------


def memory(db: str, events: int, seconds: float) -> dict[str, Any]:
    from src.db import get_engine

    relay_rss_mb = rss_mb
    from src.events.relay_service import start_relay

    with database(db) as url, tempfile.TemporaryDirectory() as tmp, sidecar(Path(tmp)) as car:
        env = app_env(url, car.port, RELAY_MAX_BACKOFF="1")
        settings = use_app(env)
        engine = get_engine()
        samples: list[tuple[float, float, int]] = []

        async def run() -> None:
            handle = await start_relay(settings)
            while handle.status()["state"] != "leader":
                await asyncio.sleep(0.01)
            car.stop()  # the sidecar dies; the relay keeps trying
            await asyncio.sleep(1.0)
            # On PostgreSQL the relay is the API's child process (RELAY_MODE=auto): its memory.
            relay_pid = (handle.status().get("process") or {}).get("pid") or "self"

            def rss_mb() -> float:
                return relay_rss_mb(relay_pid)

            base = rss_mb()
            samples.append((0.0, base, 0))
            # The backlog is written by another process, so only the relay's memory counts.
            writer = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bench_relay",
                "_fill",
                "--events",
                str(events),
                env={**os.environ, **env},
            )
            started = time.monotonic()
            while writer.returncode is None or time.monotonic() - started < seconds:
                await asyncio.sleep(1.0)
                count = await asyncio.to_thread(backlog, engine)
                samples.append((round(time.monotonic() - started, 1), rss_mb(), count))
            status = handle.status()
            samples.append((-1.0, rss_mb(), int(status["failed"])))
            await handle.stop()

        asyncio.run(run())
    base = samples[0][1]
    during = samples[1:-1]
    filled = next((rss for _, rss, count in during if count >= events), during[-1][1])
    return {
        "db": db,
        "events": events,
        "waited_s": seconds,
        "rss_start_mb": round(base, 1),
        "rss_max_mb": round(max(s[1] for s in during), 1),
        "rss_end_mb": round(during[-1][1], 1),
        "growth_mb": round(max(s[1] for s in during) - base, 1),
        # once the whole backlog waits: flat from here on means no accumulation
        "rss_when_filled_mb": round(filled, 1),
        "growth_after_filled_mb": round(during[-1][1] - filled, 1),
        "backlog_end": during[-1][2],
        "failed_attempts": samples[-1][2],
    }


# --- API request latency: this design vs the seed design vs events off -------------------------

API_SCENARIOS = [
    ("off", "healthy"),
    ("outbox", "healthy"),
    ("outbox", "down"),
    ("outbox", "hung"),
    ("seed", "healthy"),
    ("seed", "down"),
    ("seed", "hung"),
]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def _load(base: str, token: str, rate: float, seconds: float) -> list[float]:
    """Open loop at `rate` requests/s: create a task, then complete it; latency in ms."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    lags: list[float] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as c:

        async def one(n: int) -> None:
            started = time.perf_counter()
            if n % 2 == 0:
                r = await c.post("/api/alice/tasks", json={"title": f"task {n}"})
                created.append(r.json()["id"])
            else:
                task_id = created.pop(0) if created else 1
                r = await c.patch(f"/api/alice/tasks/{task_id}/complete")
            r.raise_for_status()
            lags.append((time.perf_counter() - started) * 1000)

        created: list[int] = []
        for n in range(20):  # warm-up, not measured
            await one(n)
        lags.clear()
        tasks = []
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return lags


def api(
    db: str, rate: float, seconds: float, only: str | None = None, repeat: int = 1
) -> list[dict[str, Any]]:
    """Each scenario `repeat` times, rounds alternating their order (drift hits all alike).

    One JSON line per scenario and round, then (with repeat > 1) a summary line per scenario:
    the median over rounds of each percentile and the p50 ratio against events off.
    """
    scenarios = [s for s in API_SCENARIOS if not only or f"{s[0]}:{s[1]}" in only.split(",")]
    results: list[dict[str, Any]] = []
    for round_no in range(repeat):
        order = scenarios if round_no % 2 == 0 else scenarios[::-1]
        for mode, state in order:
            result = _api_scenario(db, rate, seconds, mode, state)
            result["round"] = round_no + 1
            results.append(result)
            print(json.dumps(result), flush=True)
    if repeat > 1:
        medians: dict[tuple[str, str], dict[str, float]] = {}
        for mode, state in scenarios:
            runs = [
                r["latency_ms"] for r in results if (r["design"], r["sidecar"]) == (mode, state)
            ]
            medians[(mode, state)] = {
                k: round(statistics.median(run[k] for run in runs), 2)
                for k in ("p50", "p95", "p99", "max")
            }
        off = medians.get(("off", "healthy"))
        for (mode, state), summary in medians.items():
            line: dict[str, Any] = {"design": mode, "sidecar": state, "median_of_rounds": summary}
            if off:
                line["p50_vs_off"] = round(summary["p50"] / off["p50"], 3)
            print(json.dumps(line), flush=True)
    return results


def _api_scenario(db: str, rate: float, seconds: float, mode: str, state: str) -> dict[str, Any]:
    import signal

    from src.auth import issue_token

    secret = "bench-only-secret-0123456789abcdef-0123456789abcdef"
    token = issue_token("alice", secret)
    # One scenario: a fresh database, sidecar and API process.
    with database(db) as url, tempfile.TemporaryDirectory() as tmp, sidecar(Path(tmp)) as car:
        port = _free_port()
        env = {
            **os.environ,
            **app_env(url, car.port),
            "DAPR_ENABLED": "true" if mode == "outbox" else "false",
            "BETTER_AUTH_SECRET": secret,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "bench._api_server", "--mode", mode, "--port", str(port)],
            env={**env, "LOG_LEVEL": "ERROR"},  # the seed design logs every failure
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/health")
            time.sleep(1.0)  # the relay is leader by now
            if state == "down":
                car.stop()
            elif state == "hung" and car.proc is not None:
                car.proc.send_signal(signal.SIGUSR1)
            lags = asyncio.run(_load(base, token, rate, seconds))
        finally:
            server.terminate()
            server.wait(30)
    return {
        "design": mode,
        "sidecar": state,
        "rate": rate,
        "latency_ms": {k: round(v, 2) for k, v in percentiles(lags).items()},
    }


# --- helpers run as subprocesses --------------------------------------------------------------


def _writer_main(rate: float, seconds: float, out: str) -> None:
    from src.config import get_settings

    use_app({k: os.environ[k] for k in ("DATABASE_URL", "DAPR_ENABLED", "DAPR_HTTP_PORT")})
    assert get_settings().dapr_enabled
    Path(out).write_text(json.dumps(write_paced(rate, seconds)))


def _fill_main(events: int) -> None:
    from src.db import get_engine

    settings = use_app({k: os.environ[k] for k in ("DATABASE_URL", "DAPR_ENABLED")})
    fill_outbox(get_engine(), events, settings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("drain")
    d.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    d.add_argument("--events", type=int, default=50_000)
    # null: no HTTP at all, the relay's own cost
    d.add_argument("--mode", choices=["auto", "always", "never", "null"], default="auto")
    lat = sub.add_parser("latency")
    lat.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    lat.add_argument("--rate", type=float, default=200)
    lat.add_argument("--seconds", type=float, default=10)
    lat.add_argument("--writer", choices=["thread", "process"], default="thread")
    mem = sub.add_parser("memory")
    mem.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    mem.add_argument("--events", type=int, default=100_000)
    mem.add_argument("--seconds", type=float, default=30)
    a = sub.add_parser("api")
    a.add_argument("--db", choices=["sqlite", "postgresql"], default="postgresql")
    a.add_argument("--rate", type=float, default=50)
    a.add_argument("--seconds", type=float, default=10)
    a.add_argument("--only", help="comma-separated design:sidecar, e.g. seed:hung")
    a.add_argument("--repeat", type=int, default=1, help="rounds (order alternates); medians")
    w = sub.add_parser("_writer")
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--out", required=True)
    f = sub.add_parser("_fill")
    f.add_argument("--events", type=int, required=True)
    args = parser.parse_args()

    if args.command == "_writer":
        _writer_main(args.rate, args.seconds, args.out)
        return 0
    if args.command == "_fill":
        _fill_main(args.events)
        return 0
    if args.command == "drain":
        result = drain(args.db, args.events, args.mode)
    elif args.command == "latency":
        result = latency(args.db, args.rate, args.seconds, args.writer)
    elif args.command == "api":
        api(args.db, args.rate, args.seconds, args.only, args.repeat)
        return 0
    else:
        result = memory(args.db, args.events, args.seconds)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
