"""Alembic migrations build the same schema as the models, on SQLite and PostgreSQL (issue 2)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel
from src.db import create_tables
from src.migrate import alembic_config, upgrade
from src.models import Task

from tests.support.factories import TaskFactory, factory_session

APP_TABLES = {"task", "event_outbox"}


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def head_revision(db_url: str) -> str:
    heads = ScriptDirectory.from_config(alembic_config(db_url)).get_heads()
    assert len(heads) == 1, f"migrations must have one head, not {heads}"
    return heads[0]


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, SQLModel.metadata))


def test_upgrade_builds_exactly_the_models_schema(db_url: str, engine: sa.Engine) -> None:
    upgrade(db_url)
    assert set(sa.inspect(engine).get_table_names()) >= APP_TABLES
    assert current_revision(engine) == head_revision(db_url)
    assert differences(engine) == []


def test_create_all_builds_the_same_schema_as_the_migrations(
    db_url: str, engine: sa.Engine
) -> None:
    create_tables(engine)
    assert differences(engine) == []
    created = describe(engine)
    engine.dispose()
    _wipe(engine)
    upgrade(db_url)
    assert describe(engine) == created


def test_upgrade_is_idempotent_and_keeps_data(db_url: str, engine: sa.Engine) -> None:
    upgrade(db_url)
    with factory_session(engine):
        TaskFactory(title="kept")
    upgrade(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(Task.title)).scalars().all() == ["kept"]  # type: ignore[call-overload]


def test_upgrade_adopts_tables_the_quick_start_created(db_url: str, engine: sa.Engine) -> None:
    # `pakaura serve` creates missing tables; `pakaura db upgrade` later must not fail on them.
    create_tables(engine)
    with factory_session(engine):
        TaskFactory(title="made before migrations")
    upgrade(db_url)
    assert current_revision(engine) == head_revision(db_url)
    assert differences(engine) == []
    with engine.connect() as conn:
        titles = conn.execute(sa.select(Task.title)).scalars().all()  # type: ignore[call-overload]
    assert titles == ["made before migrations"]


def test_downgrade_to_base_removes_the_tables(db_url: str, engine: sa.Engine) -> None:
    upgrade(db_url)
    with engine.begin() as conn:
        config = alembic_config(db_url)
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert not APP_TABLES & set(sa.inspect(engine).get_table_names())


def test_task_ids_are_never_reused_on_a_migrated_database(db_url: str, engine: sa.Engine) -> None:
    upgrade(db_url)
    with factory_session(engine) as session:
        _first, second = TaskFactory.create_batch(2)
        session.delete(second)
    with factory_session(engine):
        (third,) = TaskFactory.create_batch(1)
    assert third.id is not None and second.id is not None
    assert third.id > second.id


# --- Schema description for the comparison ------------------------------------------------


def _wipe(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table.name}"'))
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))


def describe(engine: sa.Engine) -> dict[str, Any]:
    """Columns, keys, indexes and (SQLite) the AUTOINCREMENT flag of every model table."""
    inspector = sa.inspect(engine)
    schema: dict[str, Any] = {}
    for table in sorted(SQLModel.metadata.tables):
        columns = {
            c["name"]: (
                str(c["type"].compile(engine.dialect)),
                c["nullable"],
                re.sub(r"\s+", " ", str(c.get("default"))),
            )
            for c in inspector.get_columns(table)
        }
        indexes = sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        )
        entry: dict[str, Any] = {
            "columns": columns,
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": indexes,
            "unique": sorted(
                tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)
            ),
        }
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                ddl = conn.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": table}
                ).scalar_one()
            entry["autoincrement"] = "AUTOINCREMENT" in ddl.upper()
        schema[table] = entry
    return schema
