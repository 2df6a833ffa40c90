"""`pakaura relay` as real processes: fail-over after kill -9, crash between commit and publish.

Issue 8 ("Replicas", "Shutdown and start-up"). The relays run as `python -m src.cli relay`
against the test database and the emulated sidecar; this process writes tasks through the ORM
hooks (on PostgreSQL its commits NOTIFY the relay in the other process).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session
from src.db import create_tables, get_engine
from src.models import Task, outbox_table

from hooks._leader import describe_leader
from tests.support.app import app_environment
from tests.support.dapr_emulator import DaprEmulator
from tests.support.relay_helpers import wait_until

pytestmark = pytest.mark.slow


class Relays:
    """Starts `pakaura relay` processes with the test's settings; kills them all at the end."""

    def __init__(self, db_url: str, dapr_port: int, logs: Path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "DAPR_ENABLED": "true",
            "DAPR_HTTP_PORT": str(dapr_port),
            "RELAY_POLL_INTERVAL": "0.5",
            "RELAY_MAX_BACKOFF": "0.5",
            "RELAY_DRAIN_TIMEOUT": "1",
            "LOG_LEVEL": "INFO",
        }
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"relay-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.cli", "relay"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def setup(db_url: str, dapr: DaprEmulator, tmp_path: Path) -> Iterator[tuple[sa.Engine, Relays]]:
    with app_environment(db_url, dapr_enabled="true", dapr_http_port=str(dapr.port)):
        engine = get_engine()
        create_tables(engine)
        relays = Relays(db_url, dapr.port, tmp_path)
        try:
            yield engine, relays
        finally:
            relays.stop_all()


def leader_pid(engine: sa.Engine) -> int | None:
    holder = describe_leader(engine, outbox_table.name)
    found = re.search(r"pid (\d+)", holder or "")
    return int(found.group(1)) if found else None


def write_tasks(engine: sa.Engine, count: int, prefix: str) -> list[int]:
    ids = []
    for n in range(count):
        with Session(engine) as session:
            task = Task(user_id="alice", title=f"{prefix} {n}")
            session.add(task)
            session.commit()
            task.completed = True  # a second event per task: order per task matters
            session.commit()
            assert task.id is not None
            ids.append(task.id)
    return ids


def backlog(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar_one())


def first_arrivals(dapr: DaprEmulator) -> dict[int, list[str]]:
    """task-events types per task in order of first arrival (duplicates are allowed)."""
    seen: set[str] = set()
    out: dict[int, list[str]] = {}
    for d in dapr.received:
        if d.topic == "task-events" and d.event["id"] not in seen:
            seen.add(d.event["id"])
            out.setdefault(d.event["data"]["task_id"], []).append(d.event["type"])
    return out


def test_two_relay_processes_one_active_and_fail_over_after_kill_9(
    setup: tuple[sa.Engine, Relays], dapr: DaprEmulator
) -> None:
    engine, relays = setup
    procs = [relays.start(), relays.start()]
    try:
        wait_until(lambda: leader_pid(engine) in {p.pid for p in procs}, timeout=15)
    except AssertionError:
        pytest.fail(f"no relay became leader:\n{relays.output()}")
    first = leader_pid(engine)
    assert first is not None
    standby = next(p for p in procs if p.pid != first)

    before = write_tasks(engine, 10, "before")
    wait_until(lambda: backlog(engine) == 0, timeout=10)
    wait_until(lambda: "outbox relay is standby" in relays.output(), timeout=10)

    during = write_tasks(engine, 15, "during")  # a burst: the leader is busy with it when…
    os.kill(first, signal.SIGKILL)  # …it dies without any chance to clean up
    killed_at = time.monotonic()
    wait_until(lambda: leader_pid(engine) == standby.pid, timeout=10)
    takeover = time.monotonic() - killed_at
    assert takeover < 5.0, f"standby took {takeover:.1f} s to take over"

    after = write_tasks(engine, 5, "after")
    wait_until(lambda: backlog(engine) == 0, timeout=15)
    expected = {i: ["task.created", "task.completed"] for i in before + during + after}
    assert first_arrivals(dapr) == expected  # nothing lost, per-task order kept

    standby.send_signal(signal.SIGTERM)  # graceful: drains and exits 0
    assert standby.wait(10) == 0


def test_relay_killed_before_publishing_delivers_after_restart(
    setup: tuple[sa.Engine, Relays], dapr: DaprEmulator
) -> None:
    engine, relays = setup
    proc = relays.start()
    wait_until(lambda: leader_pid(engine) == proc.pid, timeout=15)
    dapr.hang(True)  # accepted, never answered: the events stay unacknowledged
    ids = write_tasks(engine, 5, "crash")
    time.sleep(0.5)  # the relay has the first batch in flight
    proc.kill()
    proc.wait(10)
    assert backlog(engine) == 20  # 4 events per task: committed, not published, not lost
    assert dapr.received == []

    dapr.hang(False)
    restarted = relays.start()
    wait_until(lambda: backlog(engine) == 0, timeout=15)
    assert first_arrivals(dapr) == {i: ["task.created", "task.completed"] for i in ids}
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(10) == 0
