"""Engines and sessions. Importing this module imports the models, so the hooks are on."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from src import models  # noqa: F401 - registers the tables and installs the Task hooks
from src.config import SettingsError, get_settings, normalize_database_url

__all__ = ["create_tables", "get_engine", "make_engine", "reset_engine", "session_scope"]


def make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> sa.Engine:
    """An engine for `url`; SQLite gets the hooks' savepoint-safe transaction handling.

    `postgres://` and `postgresql://` are read as `postgresql+psycopg://` (the installed
    driver), as for `DATABASE_URL`; other databases and drivers are refused in one line.
    """
    try:
        sa_url = sa.make_url(normalize_database_url(url))
    except ValueError as exc:
        raise SettingsError(f"invalid setting DATABASE_URL: {exc}") from None
    if sa_url.get_backend_name() == "sqlite":
        # Several threads (the API's worker pool, the relay) share one file.
        return sa.create_engine(
            sa_url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
    return sa.create_engine(
        sa_url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,  # survives a database restart without failing the first request
    )


@lru_cache(maxsize=1)
def get_engine() -> sa.Engine:
    settings = get_settings()
    return make_engine(settings.database_url, pool_size=settings.database_pool_size)


def reset_engine() -> None:
    """Disposes the cached engine (tests, settings changes)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()


def create_tables(engine: sa.Engine) -> None:
    SQLModel.metadata.create_all(engine)


def session_scope() -> Iterator[Session]:
    """FastAPI dependency: one session per request, closed afterwards."""
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session
