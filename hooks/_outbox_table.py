"""The `event_outbox` table (contract §3), attached to the application's metadata."""

from __future__ import annotations

import sqlalchemy as sa

from hooks._sqltypes import UTCDateTime

__all__ = ["DEFAULT_OUTBOX_TABLE", "build_outbox_table"]

DEFAULT_OUTBOX_TABLE = "event_outbox"


def build_outbox_table(metadata: sa.MetaData, name: str = DEFAULT_OUTBOX_TABLE) -> sa.Table:
    """`seq` gives delivery order and is never reused (AUTOINCREMENT on SQLite too)."""
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition_key", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sqlite_autoincrement=True,
    )
