"""Runs the Alembic migrations programmatically (no alembic.ini to find)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from src import models  # noqa: F401 - registers the tables compared against

__all__ = ["alembic_config", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            if _built_by_create_all(connection):
                # The quick start (`DATABASE_CREATE_TABLES`) already built today's schema:
                # record it as migrated instead of failing on "table task already exists".
                command.stamp(config, "head")
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def _built_by_create_all(connection: sa.Connection) -> bool:
    """The model tables exist, no migration was ever recorded, and they match the models."""
    context = MigrationContext.configure(connection)
    if context.get_current_revision() is not None:
        return False
    if not set(SQLModel.metadata.tables) & set(sa.inspect(connection).get_table_names()):
        return False
    return not compare_metadata(context, SQLModel.metadata)
