"""Test databases: a SQLite file per test and one scratch PostgreSQL database per run.

PostgreSQL comes from `PAKAURA_TEST_PG_ADMIN_URL` (default: the local server, trust auth). When
it cannot be reached the PostgreSQL legs are skipped locally and fail in CI (`CI=true`) or
with `PAKAURA_REQUIRE_POSTGRES=1`: a green run must not hide a missing database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

ADMIN_URL = os.environ.get(
    "PAKAURA_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def postgres_required() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("PAKAURA_REQUIRE_POSTGRES") == "1"
    )


def wipe_postgres_schema(url: str | sa.URL) -> None:
    """Empties a PostgreSQL database: drops and recreates its `public` schema."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@contextmanager
def scratch_postgres_database() -> Iterator[str]:
    """Creates a uniquely named database, yields its URL, drops it afterwards."""
    name = f"pakaura_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    # No pool: a connection kept from CREATE to DROP dies if the server restarts in between
    # (the reliability tests restart it), and the DROP would fail the whole session.
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.make_url(ADMIN_URL).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
