"""Fixtures for the REST tests: one app per module and backend, emptied before every test.

Building the app and its schema once per module keeps the suite fast; `api` gives each test
an empty database, the module's settings back in the environment and the module's engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from src.db import get_engine, reset_engine
from src.models import Task

from tests.support.app import Api, app_env, apply_env, make_client
from tests.support.databases import scratch_postgres_database, wipe_postgres_schema
from tests.support.factories import TaskFactory, factory_session

MakeTasks = Callable[..., list[Task]]


@pytest.fixture(scope="session")
def api_pg_url(pg_database_url: str) -> Iterator[str]:
    """A scratch database of its own: `db_url` wipes `pg_database_url` under running tests."""
    with scratch_postgres_database() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("api") / "api.db"
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("api_pg_url")
    wipe_postgres_schema(url)
    return url


@pytest.fixture(scope="module")
def api_module(api_db_url: str) -> Iterator[Api]:
    with make_client(api_db_url) as api:
        yield api


@pytest.fixture
def api(api_module: Api, monkeypatch: pytest.MonkeyPatch) -> Api:
    """The module's app with an empty database."""
    apply_env(monkeypatch, app_env(api_module.db_url))
    if get_engine().url != sa.make_url(api_module.db_url):  # another test swapped the engine
        reset_engine()
    api_module.wipe()
    return api_module


@pytest.fixture
def make_tasks(api: Api) -> MakeTasks:
    """`make_tasks(n, **fields)` stores n tasks through the factories and returns them."""

    def make(n: int = 1, **fields: Any) -> list[Task]:
        with factory_session(api.engine):
            tasks: list[Task] = TaskFactory.create_batch(n, **fields)
        return tasks

    return make
