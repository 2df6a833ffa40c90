"""Shared fixtures. `db_url` runs a test once on SQLite and once on real PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.databases import (
    postgres_required,
    scratch_postgres_database,
    wipe_postgres_schema,
)

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    try:
        with scratch_postgres_database() as url:
            yield url
    except sa.exc.OperationalError as exc:
        if postgres_required():
            pytest.fail(f"PostgreSQL is required here but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL: a fresh SQLite file, or the scratch PostgreSQL database wiped."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("pg_database_url")
    wipe_postgres_schema(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts from default settings in its own working directory."""
    for name in list(os.environ):
        if name.startswith(
            ("DAPR_", "TOPIC_", "RELAY_", "LOG_", "EVENTS_", "MCP_", "JWT_", "AUTH_")
        ) or name in {
            "DATABASE_URL",
            "BETTER_AUTH_SECRET",
            "APP_ENV",
            "PUBLIC_URL",
            "DEV_SECRET_FILE",
        }:
            monkeypatch.delenv(name, raising=False)
    # The relay runs in the test's own process (RELAY_MODE=inline) so tests can watch and fault
    # it; tests/events/test_relay_process.py covers the child process that "auto" means on
    # PostgreSQL.
    monkeypatch.setenv("RELAY_MODE", "inline")
    # The generated local secret lives under the per-user config directory: one per test.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.chdir(tmp_path)
    from src.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
