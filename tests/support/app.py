"""Building the real app against a test database, and tokens to call it with.

    with make_client(db_url) as api:
        api.client.post("/api/alice/tasks", json={...}, headers=api.auth("alice"))

`make_client` sets the environment (DATABASE_URL, a test BETTER_AUTH_SECRET, extra settings),
rebuilds settings and engine, runs `create_app()` and enters the TestClient so the lifespan
runs; on exit everything is put back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from src.config import get_settings
from src.db import get_engine, reset_engine
from src.main import create_app
from src.models import Task, outbox_table

__all__ = [
    "TASK_ROUTES",
    "TEST_SECRET",
    "Api",
    "app_environment",
    "bearer",
    "make_client",
    "make_token",
]

# Long enough for HS256 (>= 32 bytes); only ever used by tests.
TEST_SECRET = "pakaura-tests-only-secret-0123456789abcdef-0123456789abcdef-0123456789"


def make_token(
    user: str | None,
    *,
    secret: str = TEST_SECRET,
    algorithm: str = "HS256",
    expires_in: timedelta | None = timedelta(hours=1),
    **claims: Any,
) -> str:
    """A JWT built with PyJWT directly (not with the code under test).

    `user=None` leaves out `sub`, `expires_in=None` leaves out `exp`.
    """
    now = datetime.now(UTC)
    payload: dict[str, Any] = {"iat": now, **claims}
    if user is not None:
        payload["sub"] = user
    if expires_in is not None:
        payload["exp"] = now + expires_in
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(user: str, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, **kwargs)}"}


@dataclass
class Api:
    client: TestClient
    app: FastAPI
    db_url: str

    def auth(self, user: str) -> dict[str, str]:
        return bearer(user)

    @property
    def engine(self) -> sa.Engine:
        return get_engine()

    def rows(self) -> list[dict[str, Any]]:
        """Every task row, oldest first, as stored."""
        table = Task.__table__  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            result = conn.execute(sa.select(table).order_by(table.c.id))
            return [dict(row._mapping) for row in result]

    def count(self, table: sa.Table | None = None) -> int:
        target = Task.__table__ if table is None else table  # type: ignore[attr-defined]
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(target)).scalar_one())

    def state(self) -> tuple[list[dict[str, Any]], int]:
        """What a failed request must leave untouched: the tasks and the outbox backlog."""
        return self.rows(), self.count(outbox_table)

    def take_events(self) -> list[dict[str, Any]]:
        """The events waiting in the outbox, oldest first, removed as they are read."""
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(outbox_table.c.payload).order_by(outbox_table.c.seq))
            events = [json.loads(payload) for (payload,) in rows]
            conn.execute(outbox_table.delete())
        return events

    def wipe(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(outbox_table.delete())
            conn.execute(Task.__table__.delete())  # type: ignore[attr-defined]


def app_env(db_url: str, secret: str | None = TEST_SECRET, **env: str) -> dict[str, str]:
    values = {"DATABASE_URL": db_url, **{k.upper(): v for k, v in env.items()}}
    if secret is not None:
        values["BETTER_AUTH_SECRET"] = secret
    return values


def apply_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()


@contextmanager
def app_environment(db_url: str, *, secret: str | None = TEST_SECRET, **env: str) -> Iterator[None]:
    """The environment (and fresh settings and engine) an app built inside will use."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        apply_env(monkeypatch, app_env(db_url, secret, **env))
        reset_engine()
        try:
            yield
        finally:
            reset_engine()
            get_settings.cache_clear()


@contextmanager
def make_client(
    db_url: str,
    *,
    secret: str | None = TEST_SECRET,
    raise_server_exceptions: bool = True,
    **env: str,
) -> Iterator[Api]:
    """The app built from the environment `db_url` + `env`, lifespan running."""
    with app_environment(db_url, secret=secret, **env):
        # No secret: the quick start's generated local secret, as on a loopback `serve`.
        app = create_app(local_secret=secret is None)
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            yield Api(client=client, app=app, db_url=db_url)


# Every task route as (method, path template, body); `{task_id}` is filled in by the test.
TASK_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/{user}/tasks", None),
    ("POST", "/api/{user}/tasks", {"title": "New task"}),
    ("DELETE", "/api/{user}/tasks/completed", None),
    ("GET", "/api/{user}/tasks/{task_id}", None),
    ("PUT", "/api/{user}/tasks/{task_id}", {"title": "Changed"}),
    ("PATCH", "/api/{user}/tasks/{task_id}", {"description": "Changed"}),
    ("DELETE", "/api/{user}/tasks/{task_id}", None),
    ("PATCH", "/api/{user}/tasks/{task_id}/complete", None),
    ("PATCH", "/api/{user}/tasks/{task_id}/uncomplete", None),
]
