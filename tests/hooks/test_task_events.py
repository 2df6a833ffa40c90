"""The Task model with its hooks: events come from committed changes, through REST, MCP,
services and plain sessions, with nobody calling a publisher (T-014, T-017, T-019)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlmodel import Session, SQLModel, select
from src.config import get_settings
from src.events.wiring import install_task_hooks, outbox_wakeup, reset_outbox_wakeup
from src.models import Task, TaskCreate, outbox_table
from src.request_context import correlation_id

from tests.support.cloudevents_conformance import assert_conforms
from tests.support.tracked import async_url

REPO = Path(__file__).resolve().parents[2]
FUTURE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


@pytest.fixture
def dapr_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_ENABLED", "true")
    get_settings.cache_clear()


@pytest.fixture
def task_engine(db_url: str, dapr_on: None) -> Iterator[sa.Engine]:
    install_task_hooks(Task)  # what importing src.models does (checked below)
    engine = sa.create_engine(db_url)
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


def outbox(engine: sa.Engine) -> list[dict[str, Any]]:
    """The outbox in order; each payload parsed, checked against CloudEvents and §2."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox_table).order_by(outbox_table.c.seq)).mappings()
        out = []
        for row in rows:
            event = assert_conforms(row["payload"])
            assert row["event_id"] == event["id"]
            assert row["partition_key"] == event["subject"] == event["partitionkey"]
            out.append({**event, "_topic": row["topic"]})
    return out


def types(engine: sa.Engine) -> list[tuple[str, str]]:
    return [(event["type"], event["subject"]) for event in outbox(engine)]


def clear(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(outbox_table.delete())


def test_importing_the_model_installs_the_hooks() -> None:
    """In a fresh interpreter: importing src.models alone must track Task."""
    code = "import hooks, src.models as m; assert hooks.is_tracked(m.Task), 'Task not tracked'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (
        "src.models must call install_task_hooks(Task) at import:\n" + result.stderr[-2000:]
    )


# -- plain sessions ------------------------------------------------------------------------------


def test_task_lifecycle_through_a_session(task_engine: sa.Engine) -> None:
    with Session(task_engine) as session:
        task = Task(user_id="alice", title="Report", due_date=FUTURE)
        session.add(task)
        session.commit()
        tid = str(task.id)
        task.title = "Report v2"
        session.commit()
        task.title = "Report v2"  # same value
        session.commit()
        task.completed = True
        session.commit()
        task.completed = False
        session.commit()
        session.delete(task)
        session.commit()
    assert types(task_engine) == [
        ("task.created", tid),
        ("task.sync", tid),
        ("reminder.scheduled", tid),
        ("task.updated", tid),
        ("task.sync", tid),
        ("task.completed", tid),
        ("task.sync", tid),
        ("reminder.cancelled", tid),
        ("task.uncompleted", tid),
        ("task.sync", tid),
        ("reminder.scheduled", tid),
        ("task.deleted", tid),
        ("task.sync", tid),
        ("reminder.cancelled", tid),
    ]
    events = outbox(task_engine)
    topics = {event["type"]: event["_topic"] for event in events}
    assert topics == {
        "task.created": "task-events",
        "task.updated": "task-events",
        "task.completed": "task-events",
        "task.uncompleted": "task-events",
        "task.deleted": "task-events",
        "task.sync": "task-updates",
        "reminder.scheduled": "reminders",
        "reminder.cancelled": "reminders",
    }
    updated = events[3]["data"]
    assert updated["changes"] == {"title": {"old": "Report", "new": "Report v2"}}  # no updated_at
    assert updated["task"]["updated_at"] > events[0]["data"]["task"]["updated_at"]


def test_the_two_breaks_the_outside_probe_found(task_engine: sa.Engine) -> None:
    """Issue 16: INSERT ... FROM SELECT wrote tasks without events; flag_modified without a
    change emitted task.updated + task.sync with `old: null`."""
    with Session(task_engine, expire_on_commit=False) as session:
        task = Task(user_id="alice", title="Report")
        session.add(task)
        session.commit()
        clear(task_engine)
        copy = sa.select(Task.user_id, Task.title + " (copy)").where(Task.id == task.id)
        session.execute(sa.insert(Task).from_select(["user_id", "title"], copy))
        session.commit()
        (copied,) = session.scalars(select(Task).where(Task.id != task.id)).all()
        session.commit()  # SQLite: end the read transaction (it holds the write lock)
        assert types(task_engine) == [
            ("task.created", str(copied.id)),
            ("task.sync", str(copied.id)),
        ]
        assert outbox(task_engine)[0]["data"]["task"]["title"] == "Report (copy)"
        clear(task_engine)
        sa.orm.attributes.flag_modified(task, "title")
        session.commit()
        assert types(task_engine) == []
        task.title = "Report v2"
        sa.orm.attributes.flag_modified(task, "title")
        session.commit()
    (updated, _) = outbox(task_engine)
    assert updated["data"]["changes"] == {"title": {"old": "Report", "new": "Report v2"}}


def test_async_session_on_async_drivers(task_engine: sa.Engine, db_url: str) -> None:
    async def scenario() -> str:
        engine = create_async_engine(async_url(db_url))
        async with AsyncSession(engine, expire_on_commit=False) as session:
            task = Task(user_id="bob", title="Async")
            session.add(task)
            await session.commit()
            task.completed = True
            await session.commit()
            await session.execute(sa.delete(Task).where(Task.id == task.id))
            await session.commit()
        await engine.dispose()
        return str(task.id)

    tid = asyncio.run(scenario())
    assert types(task_engine) == [
        ("task.created", tid),
        ("task.sync", tid),
        ("task.completed", tid),
        ("task.sync", tid),
        ("task.deleted", tid),
        ("task.sync", tid),
    ]


def test_correlation_id_comes_from_the_context(task_engine: sa.Engine) -> None:
    token = correlation_id.set("req-42")
    try:
        with Session(task_engine) as session:
            session.add(Task(user_id="alice", title="Traced"))
            session.commit()
    finally:
        correlation_id.reset(token)
    with Session(task_engine) as session:
        session.add(Task(user_id="alice", title="Untraced"))
        session.commit()
    events = outbox(task_engine)
    assert {e.get("correlationid") for e in events[:2]} == {"req-42"}
    assert all("correlationid" not in e for e in events[2:])


def test_commit_wakes_the_relay_signal(task_engine: sa.Engine) -> None:
    signal = reset_outbox_wakeup()
    assert outbox_wakeup() is signal
    loop = asyncio.new_event_loop()
    try:
        signal.attach(loop)
        with Session(task_engine) as session:
            session.add(Task(user_id="alice", title="Wake"))
            session.flush()
            assert not loop.run_until_complete(signal.wait(0.01))  # not before the commit
            session.commit()
        assert loop.run_until_complete(signal.wait(1.0))
    finally:
        signal.detach()
        loop.close()


def test_dapr_disabled_logs_after_commit_and_leaves_the_outbox_empty(
    task_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAPR_ENABLED", "false")
    get_settings.cache_clear()
    records: list[dict[str, Any]] = []
    sink_id = logger.add(lambda m: records.append(m.record), level="DEBUG", format="{message}")
    try:
        with Session(task_engine) as session:
            session.add(Task(user_id="carol", title="Rolled back"))
            session.flush()
            session.rollback()
            assert [r for r in records if "not published" in r["message"]] == []
            task = Task(user_id="carol", title="Kept")
            session.add(task)
            session.flush()
            assert [r for r in records if "not published" in r["message"]] == []
            session.commit()
            tid = str(task.id)
    finally:
        logger.remove(sink_id)
    logged = [r for r in records if "not published" in r["message"]]
    assert [(r["level"].name, r["extra"]["event_type"]) for r in logged] == [
        ("DEBUG", "task.created"),
        ("DEBUG", "task.sync"),
    ]
    assert {r["extra"]["task_id"] for r in logged} == {tid}
    assert {r["extra"]["user_id"] for r in logged} == {"carol"}
    assert {r["extra"]["topic"] for r in logged} == {"task-events", "task-updates"}
    with task_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar_one() == 0


# -- REST, services and MCP: no publisher anywhere --------------------------------------------


def test_rest_mutations_and_clear_completed(db_url: str) -> None:
    from tests.support.app import make_client

    with make_client(db_url, dapr_enabled="true", relay_enabled="false") as api:
        install_task_hooks(Task)
        h = api.auth("alice")
        client = api.client
        due = FUTURE.isoformat()
        created = client.post(
            "/api/alice/tasks",
            json={"title": "One", "due_date": due},
            headers={**h, "X-Request-ID": "rest-1"},
        )
        assert created.status_code == 201
        tid = created.json()["id"]
        other = client.post("/api/alice/tasks", json={"title": "Two"}, headers=h).json()["id"]
        assert client.put(f"/api/alice/tasks/{tid}", json={"title": "Uno"}, headers=h).is_success
        assert client.patch(f"/api/alice/tasks/{tid}/complete", headers=h).is_success
        assert client.patch(f"/api/alice/tasks/{tid}/complete", headers=h).is_success  # idempotent
        assert client.patch(f"/api/alice/tasks/{tid}/uncomplete", headers=h).is_success
        assert client.delete(f"/api/alice/tasks/{other}", headers=h).status_code == 204
        assert (
            client.put(f"/api/alice/tasks/{tid}", json={"title": ""}, headers=h).status_code == 422
        )
        assert client.get("/api/alice/tasks/999999", headers=h).status_code == 404
        three = client.post("/api/alice/tasks", json={"title": "Three"}, headers=h).json()["id"]
        for done in (tid, three):
            assert client.patch(f"/api/alice/tasks/{done}/complete", headers=h).is_success
        cleared = client.delete("/api/alice/tasks/completed", headers=h)
        assert cleared.json() == {"deleted": 2}
        events = outbox(api.engine)
    t, o, r = str(tid), str(other), str(three)
    assert [(e["type"], e["subject"]) for e in events] == [
        ("task.created", t),
        ("task.sync", t),
        ("reminder.scheduled", t),
        ("task.created", o),
        ("task.sync", o),
        ("task.updated", t),
        ("task.sync", t),
        ("task.completed", t),
        ("task.sync", t),
        ("reminder.cancelled", t),
        ("task.uncompleted", t),
        ("task.sync", t),
        ("reminder.scheduled", t),
        ("task.deleted", o),
        ("task.sync", o),
        ("task.created", r),
        ("task.sync", r),
        ("task.completed", t),
        ("task.sync", t),
        ("reminder.cancelled", t),
        ("task.completed", r),
        ("task.sync", r),
        ("task.deleted", t),  # clear-completed: one deleted + sync per row
        ("task.sync", t),
        ("task.deleted", r),
        ("task.sync", r),
    ]
    assert {e.get("correlationid") for e in events[:3]} == {"rest-1"}
    assert all(e.get("correlationid") for e in events)  # generated when the header is absent
    assert events[-4]["data"]["task"]["title"] == "Uno"


def test_service_clear_completed_emits_per_row(task_engine: sa.Engine) -> None:
    from src import services

    with Session(task_engine) as session:
        ids = [
            services.create_task(session, "dave", TaskCreate(title=f"T{n}")).id for n in range(3)
        ]
        for tid in ids[:2]:
            assert tid is not None
            services.complete_task(session, "dave", tid)
    # (A session that has read holds SQLite's write lock until it ends: BEGIN IMMEDIATE.)
    clear(task_engine)
    with Session(task_engine) as session:
        assert services.clear_completed(session, "dave") == 2
        remaining = session.exec(select(Task)).all()
    assert [t.id for t in remaining] == [ids[2]]
    assert types(task_engine) == [
        ("task.deleted", str(ids[0])),
        ("task.sync", str(ids[0])),
        ("task.deleted", str(ids[1])),
        ("task.sync", str(ids[1])),
    ]


def test_mcp_tools_emit_the_same_events(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp import Client
    from src.db import create_tables, get_engine, reset_engine
    from src.mcp_server import build_mcp_server

    install_task_hooks(Task)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DAPR_ENABLED", "true")
    get_settings.cache_clear()
    reset_engine()
    engine = get_engine()
    try:
        create_tables(engine)

        async def scenario() -> int:
            server = build_mcp_server(get_settings(), user_provider=lambda: "erin")
            async with Client(server, raise_exceptions=True) as client:
                added = await client.call_tool("add_task", {"title": "Via MCP"})
                assert added.structured_content is not None
                tid = int(added.structured_content["task_id"])
                await client.call_tool("complete_task", {"task_id": tid})
                await client.call_tool("clear_completed", {})
            return tid

        tid = str(asyncio.run(scenario()))
        assert types(engine) == [
            ("task.created", tid),
            ("task.sync", tid),
            ("task.completed", tid),
            ("task.sync", tid),
            ("task.deleted", tid),
            ("task.sync", tid),
        ]
    finally:
        reset_engine()


_PUBLISH_CALL = re.compile(
    r"\bpublish\w*\s*\(|get_event_publisher|EventPublisher|\.publish_\w+|dapr|httpx",
    re.IGNORECASE,
)


@pytest.mark.parametrize("package", ["routes", "services", "mcp_server"])
def test_no_publisher_call_in_routes_services_or_mcp(package: str) -> None:
    files = sorted((REPO / "api" / "src" / package).rglob("*.py"))
    assert files, f"no sources under api/src/{package}"
    offending = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PUBLISH_CALL.search(code) and not code.strip().startswith(('"', "'")):
                offending.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offending == [], "publishing outside the ORM hooks:\n" + "\n".join(offending)


def test_the_grep_would_catch_a_publish_call() -> None:
    samples = [
        "publisher.publish_task_event(task)",
        "await get_event_publisher().publish(evt)",
        "EventPublisher(settings)",
        "httpx.post(url)",
    ]
    assert all(_PUBLISH_CALL.search(sample) for sample in samples)
    assert not _PUBLISH_CALL.search("session.commit()")
