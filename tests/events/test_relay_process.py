"""The API's relay as a child process at lower CPU priority (RELAY_MODE, issue 15, T-016).

The API runs here in this process (TestClient, lifespan running) or as `pakaura serve`; its
relay is a real child process delivering to the emulated sidecar over loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from src.config import Settings
from src.events.relay_process import child_environment

from tests.support.app import TEST_SECRET, Api, bearer, make_client
from tests.support.dapr_emulator import DaprEmulator
from tests.support.databases import wipe_postgres_schema
from tests.support.relay_helpers import wait_until

pytestmark = pytest.mark.slow

CHILD_START = 30.0  # seconds a child may take to import and lead on a busy CI machine


@pytest.fixture
def api(db_url: str, dapr: DaprEmulator) -> Iterator[Api]:
    with make_client(
        db_url,
        dapr_enabled="true",
        dapr_http_port=str(dapr.port),
        relay_mode="process",
        relay_priority="idle",
        relay_drain_timeout="2",
    ) as api:
        yield api


def relay_status(api: Api) -> dict[str, object]:
    body = api.client.get("/health").json()
    relay: dict[str, object] = body["relay"]
    return relay


def child_pid(api: Api) -> int:
    """The pid of the child relay once it leads (its report and its process both current)."""

    def leading() -> bool:
        status = relay_status(api)
        return status.get("state") == "leader" and status["process"]["pid"] is not None  # type: ignore[index]

    wait_until(leading, timeout=CHILD_START)
    pid: int = relay_status(api)["process"]["pid"]  # type: ignore[index]
    return pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it waits only for its parent to reap it.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_child_relay_delivers_reports_and_runs_at_lower_priority(
    api: Api, dapr: DaprEmulator
) -> None:
    pid = child_pid(api)
    assert pid != os.getpid()
    # RELAY_PRIORITY=idle: nice 19 and, on Linux, the SCHED_IDLE policy.
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE

    created = api.client.post("/api/alice/tasks", json={"title": "Milk"}, headers=bearer("alice"))
    assert created.status_code == 201
    task_id = created.json()["id"]
    topics = sorted(d.topic for d in dapr.wait_for(2, timeout=10))
    assert topics == ["task-events", "task-updates"]
    assert all(d.event["data"]["task_id"] == task_id for d in dapr.received)

    wait_until(lambda: relay_status(api).get("published") == 2, timeout=5)
    metrics = api.client.get("/metrics").text
    assert 'outbox_events_published_total{topic="task-events"} 1.0' in metrics
    assert "process_cpu_seconds_total" in metrics  # the API's own process metrics stay


def test_a_child_that_dies_is_started_again_and_delivers(api: Api, dapr: DaprEmulator) -> None:
    first = child_pid(api)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: relay_status(api)["process"]["restarts"] == 1, timeout=10)  # type: ignore[index]
    second = child_pid(api)
    assert second != first
    api.client.post("/api/alice/tasks", json={"title": "After"}, headers=bearer("alice"))
    assert len(dapr.wait_for(2, timeout=10)) == 2


def test_stopping_the_api_stops_the_child(db_url: str, dapr: DaprEmulator) -> None:
    with make_client(
        db_url, dapr_enabled="true", dapr_http_port=str(dapr.port), relay_mode="process"
    ) as api:
        pid = child_pid(api)
    wait_until(lambda: not alive(pid), timeout=5)


def test_auto_runs_the_relay_as_a_child_on_postgresql_and_kill_9_of_the_api_ends_it(
    pg_database_url: str, dapr: DaprEmulator, tmp_path: Path
) -> None:
    wipe_postgres_schema(pg_database_url)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": pg_database_url,
        "DAPR_ENABLED": "true",
        "DAPR_HTTP_PORT": str(dapr.port),
        "BETTER_AUTH_SECRET": TEST_SECRET,
    }
    env.pop("RELAY_MODE")  # the default, "auto"
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "src.cli", "serve", "--port", str(port)], env=env, stderr=log
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def relay() -> dict[str, object]:
            try:
                body = httpx.get(base + "/health", timeout=2).json()
            except httpx.HTTPError:
                return {}
            status: dict[str, object] = body["relay"]
            return status

        wait_until(lambda: relay().get("state") == "leader", timeout=CHILD_START)
        pid = relay()["process"]["pid"]  # type: ignore[index]
        assert isinstance(pid, int) and alive(pid)
        response = httpx.post(
            base + "/api/alice/tasks", json={"title": "x"}, headers=bearer("alice"), timeout=5
        )
        assert response.status_code == 201
        assert len(dapr.wait_for(2, timeout=10)) == 2
        serve.kill()
        serve.wait(10)
        wait_until(lambda: not alive(pid), timeout=10)
    finally:
        serve.kill()
        serve.wait(10)
        log.close()


def test_the_child_gets_the_parents_settings_whatever_their_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_BATCH_SIZE", "9")  # overridden below: the object wins
    monkeypatch.setenv("JWT_ISSUER", "https://stale.example")  # None below: must not leak
    parent = Settings(
        database_url="postgresql://u:p@db:5432/app",
        relay_batch_size=7,
        dapr_api_token=SecretStr("sidecar-token"),
        dapr_enabled=True,
        jwt_issuer=None,
    )
    env = child_environment(parent)
    assert env["RELAY_BATCH_SIZE"] == "7"
    assert env["DAPR_API_TOKEN"] == "sidecar-token"
    assert "JWT_ISSUER" not in env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JWT_ISSUER")
    assert Settings() == parent


def test_auto_means_a_child_on_postgresql_and_inline_on_sqlite() -> None:
    assert Settings(database_url="postgresql://db/app", relay_mode="auto").relay_in_child
    assert not Settings(database_url="sqlite:///x.db", relay_mode="auto").relay_in_child
    assert Settings(database_url="sqlite:///x.db", relay_mode="process").relay_in_child
    assert not Settings(database_url="postgresql://db/app", relay_mode="inline").relay_in_child


@pytest.mark.parametrize(
    ("priority", "nice", "policy"),
    [("idle", 19, "SCHED_IDLE"), ("low", 19, "SCHED_OTHER"), ("normal", 0, "SCHED_OTHER")],
)
def test_relay_priority_sets_the_childs_niceness_and_policy(
    priority: str, nice: int, policy: str
) -> None:
    code = (
        "import os; from src.events.relay_process import _lower_priority; "
        f"_lower_priority({priority!r}); "
        "print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))"
    )
    base = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) == max(base, nice)
    assert int(out[1]) == getattr(os, policy)
