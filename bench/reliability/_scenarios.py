"""Fault scenarios: load + faults + ORM scripts against a real stack, then the verifier.

Each scenario starts an emulated sidecar and API subprocess(es) on a scratch PostgreSQL
database, runs the load generator (and ORM script processes) while a fault schedule runs,
lifts every fault, waits until the outbox is drained, reads the final rows and verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.reliability._harness import Stack, api_stack
from bench.reliability._load import LoadConfig, LoadReport, MutationLog, run_load
from bench.reliability._logscan import scan_for_secrets
from bench.reliability._process import REPO_ROOT, ApiProcess
from bench.reliability._verifier import Mutation, ReceivedEvent, Verdict, verify

__all__ = [
    "SCENARIOS",
    "ScenarioResult",
    "postgres_is_up",
    "restart_postgres",
    "run_scenario",
]


@dataclass
class ScenarioResult:
    name: str
    config: dict[str, Any]
    load: dict[str, Any]
    faults: list[str]
    verdict: dict[str, Any]
    problems: list[str]
    surprises: list[str]
    drain_seconds: float
    ok: bool
    orm_mutations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)


class _Routing:
    """The API base URLs the load may use now (a killed replica is taken out first)."""

    def __init__(self, apis: list[ApiProcess]) -> None:
        self.apis = apis
        self.live = {api.base_url for api in apis}


class _FaultLog:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.entries: list[str] = []

    def note(self, text: str) -> None:
        self.entries.append(f"t+{time.monotonic() - self.started:5.1f}s {text}")


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"))
    return versions[-1]


def postgres_is_up() -> bool:
    done = subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", "5432", "-q"], check=False, timeout=10
    )
    return done.returncode == 0


def ensure_postgres_up(timeout: float = 60.0) -> None:
    """Starts the cluster if it is down and waits for it (also after a failed restart)."""
    if postgres_is_up():
        return
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "start"],
        check=False,
        timeout=120,
    )
    deadline = time.monotonic() + timeout
    while not postgres_is_up():
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL is not back up")
        time.sleep(0.2)


def restart_postgres() -> float:
    """Restarts the cluster; returns how long it was unavailable (seconds)."""
    started = time.monotonic()
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", _pg_version(), "main", "restart"],
            check=True,
            timeout=120,
            capture_output=True,
        )
    finally:
        ensure_postgres_up()
    return time.monotonic() - started


# --- fault schedules -------------------------------------------------------------------------

# (stack, routing, stop, log, duration) -> figures; returns when the load has stopped.
FaultSchedule = Callable[
    [Stack, _Routing, asyncio.Event, _FaultLog, float], Coroutine[Any, Any, dict[str, Any]]
]


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """True when the load ended."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def no_faults(
    stack: Stack, routing: _Routing, stop: asyncio.Event, log: _FaultLog, duration: float
) -> dict[str, Any]:
    await stop.wait()
    return {}


async def sidecar_faults(
    stack: Stack, routing: _Routing, stop: asyncio.Event, log: _FaultLog, duration: float
) -> dict[str, Any]:
    """Refusing, hanging, answering 500, failing some calls and some bulk entries, in turns."""
    dapr = stack.emulator
    period = 1.5
    counts: dict[str, int] = {}
    turns: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("refuse connections", dapr.refuse, dapr.resume),
        ("hang every request", lambda: dapr.hang(True), lambda: dapr.hang(False)),
        ("answer 500", lambda: dapr.respond_status(500), lambda: dapr.respond_status(None)),
        ("fail 50% of calls", lambda: dapr.fail_fraction(0.5), lambda: dapr.fail_fraction(0.0)),
        (
            "fail 30% of bulk entries",
            lambda: dapr.fail_entries(0.3),
            lambda: dapr.fail_entries(0.0),
        ),
    ]
    while not stop.is_set():
        for name, start, end in turns:
            start()
            log.note(f"sidecar: {name}")
            counts[name] = counts.get(name, 0) + 1
            stopped = await _sleep_or_stop(stop, period)
            end()
            if stopped:
                break
            if await _sleep_or_stop(stop, period / 2):  # healthy in between
                break
        else:
            continue
        break
    dapr.reset_faults()
    dapr.resume()
    log.note("sidecar: healthy")
    return {"sidecar_fault_turns": counts}


async def api_kills(
    stack: Stack, routing: _Routing, stop: asyncio.Event, log: _FaultLog, duration: float
) -> dict[str, Any]:
    """SIGKILL the API three times per run (at least every 10 s) and start it again at once:
    in-flight requests die with it."""
    interval = min(10.0, duration / 3.5)
    kills = 0
    while not await _sleep_or_stop(stop, interval):
        api = stack.api
        api.kill()
        kills += 1
        log.note(f"SIGKILL api (pid gone), kill #{kills}")
        await asyncio.to_thread(api.start)
        log.note("api restarted and answering")
    return {"sigkills": kills}


async def postgres_restart(
    stack: Stack, routing: _Routing, stop: asyncio.Event, log: _FaultLog, duration: float
) -> dict[str, Any]:
    """Restarts PostgreSQL once, 60% of the way through the run."""
    if await _sleep_or_stop(stop, duration * 0.6):
        return {}
    window = await asyncio.to_thread(_restart_logged, log)
    await stop.wait()
    return {"postgres_restarts": 1, "postgres_unavailable_seconds": round(window, 2)}


def _restart_logged(log: _FaultLog) -> float:
    log.note("PostgreSQL restart begins")
    window = restart_postgres()
    log.note(f"PostgreSQL is back ({window:.1f}s)")
    return window


async def leader_kill(
    stack: Stack, routing: _Routing, stop: asyncio.Event, log: _FaultLog, duration: float
) -> dict[str, Any]:
    """Two replicas: find the relay leader, take it out of the routing, SIGKILL it, bring it
    back later as a standby; twice per run (at least every 15 s)."""
    interval = min(15.0, duration / 2.5)
    kills = 0
    while not await _sleep_or_stop(stop, interval):
        leader = await asyncio.to_thread(_find_leader, stack.apis)
        if leader is None:
            log.note("no relay leader found")
            continue
        routing.live.discard(leader.base_url)
        await asyncio.sleep(0.2)  # requests already routed there finish
        leader.kill()
        kills += 1
        log.note(f"SIGKILL relay leader {leader.name}")
        if await _sleep_or_stop(stop, interval / 2):
            await asyncio.to_thread(leader.start)
            routing.live.add(leader.base_url)
            break
        await asyncio.to_thread(leader.start)
        routing.live.add(leader.base_url)
        log.note(f"{leader.name} restarted")
    return {"leader_kills": kills}


def _find_leader(apis: list[ApiProcess]) -> ApiProcess | None:
    for api in apis:
        if not api.alive():
            continue
        with contextlib.suppress(httpx.HTTPError, ValueError):
            relay = httpx.get(f"{api.base_url}/health", timeout=2).json().get("relay", {})
            if relay.get("leader") or relay.get("state") == "leader":
                return api
    return None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: tuple[FaultSchedule, ...]
    replicas: int = 1


async def _together(
    schedules: tuple[FaultSchedule, ...],
    stack: Stack,
    routing: _Routing,
    stop: asyncio.Event,
    log: _FaultLog,
    duration: float,
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for result in await asyncio.gather(
        *(schedule(stack, routing, stop, log, duration) for schedule in schedules)
    ):
        figures.update(result)
    return figures


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("baseline", "no faults", (no_faults,)),
        Scenario(
            "sidecar", "sidecar refusing, hanging, 500, partial failures in turns",
            (sidecar_faults,),
        ),
        Scenario("api-kill", "API process SIGKILLed and restarted, 3 times", (api_kills,)),
        Scenario("postgres-restart", "PostgreSQL restarted mid-run", (postgres_restart,)),
        Scenario(
            "leader-kill", "two replicas, the relay leader SIGKILLed twice", (leader_kill,),
            replicas=2,
        ),
        # The CI slices: several faults in one short run.
        Scenario(
            "sidecar+api-kill", "sidecar faults in turns while the API is SIGKILLed",
            (sidecar_faults, api_kills),
        ),
        Scenario(
            "leader-kill+postgres-restart",
            "two replicas, leader SIGKILLed, PostgreSQL restarted",
            (leader_kill, postgres_restart),
            replicas=2,
        ),
    ]
}  # fmt: skip


# --- the run ---------------------------------------------------------------------------------


async def _orm_scripts(
    stack: Stack, log: MutationLog, stop: asyncio.Event, batches: int, ops: int, seed: int
) -> int:
    """Runs `batches` ORM script processes one after the other while the load runs."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "PYTEST"))},
        **stack.env,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "api"), str(REPO_ROOT)]),
    }
    count = 0
    for batch in range(batches):
        if stop.is_set():
            break
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.reliability", "orm-worker",
            "--user", f"orm-{batch % 2}", "--ops", str(ops), "--seed", str(seed + batch),
            "--pause", "0.05",
            env=env, cwd=str(stack.workdir), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        for line in out.decode().splitlines():
            if line.strip():
                # Re-numbered here: each process counts from 1, and two processes may work on
                # the same user's tasks one after the other.
                log.add(dataclasses.replace(Mutation.from_json(line), seq=log.next_seq()))
                count += 1
        if proc.returncode != 0:
            raise RuntimeError(f"orm worker failed ({proc.returncode}): {err.decode()[-2000:]}")
    return count


def _outbox_backlog(database_url: str) -> int | None:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM event_outbox")).scalar_one())
    except sa.exc.SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def _drain(stack: Stack, timeout: float) -> float:
    """Waits until the outbox is empty and nothing arrived for a second; returns the wait."""
    started = time.monotonic()
    deadline = started + timeout
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(stack.emulator.received)
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
        if _outbox_backlog(stack.database_url) == 0 and time.monotonic() - quiet_since > 1.0:
            return time.monotonic() - started
        time.sleep(0.1)
    raise TimeoutError(
        f"outbox not drained after {timeout}s (backlog {_outbox_backlog(stack.database_url)})"
    )


def _final_tasks(database_url: str, prefixes: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    rows: dict[int, dict[str, Any]] = {}
    try:
        with engine.connect() as conn:
            result = conn.execute(
                sa.text("SELECT id, user_id, title, description, completed, due_date FROM task")
            )
            for row in result.mappings():
                if not str(row["user_id"]).startswith(prefixes):
                    continue
                due = row["due_date"]
                rows[int(row["id"])] = {
                    "title": row["title"],
                    "description": row["description"],
                    "completed": bool(row["completed"]),
                    "due_date": due.isoformat() if due is not None else None,
                }
    finally:
        engine.dispose()
    return rows


def _dump(
    directory: Path,
    log: MutationLog,
    received: list[ReceivedEvent],
    final: dict[int, dict[str, Any]],
    stack: Stack,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mutations.jsonl").write_text("".join(m.to_json() + "\n" for m in log.mutations))
    (directory / "events.jsonl").write_text(
        "".join(json.dumps({"topic": r.topic, "event": r.event}) + "\n" for r in received)
    )
    (directory / "final_tasks.json").write_text(json.dumps(final, indent=1))
    for api in stack.apis:
        (directory / f"{api.name}.log").write_text(api.log_text())


def run_scenario(
    name: str,
    workdir: Path,
    *,
    duration: float = 15.0,
    users: int = 4,
    seed: int = 0,
    orm_batches: int = 2,
    orm_ops: int = 30,
    mcp_share: float = 0.3,
    invalid_share: float = 0.1,
    drain_timeout: float = 120.0,
    database_url: str | None = None,
    dump_dir: Path | None = None,
) -> ScenarioResult:
    """Runs one scenario; with `dump_dir`, the mutation log, the received events and the
    API logs are written there for a post-mortem."""
    scenario = SCENARIOS[name]
    random.seed(seed)
    try:
        with api_stack(
            workdir, replicas=scenario.replicas, database_url=database_url, log_level="INFO"
        ) as stack:
            return asyncio.run(
                _run(
                    scenario, stack, duration=duration, users=users, seed=seed,
                    orm_batches=orm_batches, orm_ops=orm_ops, mcp_share=mcp_share,
                    invalid_share=invalid_share, drain_timeout=drain_timeout,
                    dump_dir=dump_dir,
                )
            )  # fmt: skip
    finally:
        if "postgres" in name:
            ensure_postgres_up()


async def _run(
    scenario: Scenario,
    stack: Stack,
    *,
    duration: float,
    users: int,
    seed: int,
    orm_batches: int,
    orm_ops: int,
    mcp_share: float,
    invalid_share: float,
    drain_timeout: float,
    dump_dir: Path | None = None,
) -> ScenarioResult:
    config = LoadConfig(
        users=users, duration=duration, seed=seed, mcp_share=mcp_share, invalid_share=invalid_share
    )
    routing = _Routing(stack.apis)
    log = MutationLog()
    faults = _FaultLog()
    stop = asyncio.Event()

    async def load() -> LoadReport:
        try:
            return await run_load(lambda: sorted(routing.live), stack.token, config, log)
        finally:
            stop.set()

    load_task = asyncio.create_task(load())
    fault_task = asyncio.create_task(
        _together(scenario.faults, stack, routing, stop, faults, duration)
    )
    orm_task = asyncio.create_task(_orm_scripts(stack, log, stop, orm_batches, orm_ops, seed))
    try:
        report = await load_task
        fault_figures = await fault_task
        orm_count = await orm_task
    finally:
        for task in (fault_task, orm_task):
            task.cancel()
        stack.emulator.reset_faults()
        stack.emulator.resume()
    # Every replica up again (a killed one may still be down at the end of a schedule).
    for api in stack.apis:
        if not api.alive():
            await asyncio.to_thread(api.start)
    drain_seconds = await asyncio.to_thread(_drain, stack, drain_timeout)
    final = _final_tasks(stack.database_url, (config.user_prefix, "orm-"))
    received = [ReceivedEvent(d.topic, d.event) for d in stack.emulator.received]
    verdict: Verdict = verify(log.mutations, received, final_tasks=final)
    if dump_dir is not None:
        _dump(dump_dir, log, received, final, stack)
    load_figures = {
        "operations": report.operations,
        "seconds": round(report.seconds, 1),
        "ops_per_second": round(report.operations / report.seconds, 1) if report.seconds else 0,
        "unknown_outcomes": report.unknown,
        "statuses": dict(sorted(report.statuses.items())),
        "users": users,
        "replicas": len(stack.apis),
    }
    surprises = list(report.surprises)
    # The logs of faulty runs (relay errors, crashes, database outages) are scanned too.
    leaks = scan_for_secrets(stack.log_text(), stack.secrets())
    surprises += [f"{leak.secret_name} in the API log, line {leak.line_number}" for leak in leaks]
    return ScenarioResult(
        name=scenario.name,
        config={"duration": duration, "users": users, "seed": seed, "orm_batches": orm_batches,
                "orm_ops": orm_ops, "mcp_share": mcp_share, "invalid_share": invalid_share},
        load=load_figures,
        faults=faults.entries,
        verdict=verdict.summary(),
        problems=verdict.problems(),
        surprises=surprises,
        drain_seconds=round(drain_seconds, 1),
        ok=verdict.ok and not surprises,
        orm_mutations=orm_count,
        extra=fault_figures,
    )  # fmt: skip
