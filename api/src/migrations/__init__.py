"""Alembic migrations; `pakaura db upgrade` applies them (see `src.migrate`)."""
