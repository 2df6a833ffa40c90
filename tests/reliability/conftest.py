"""An API subprocess on its own scratch PostgreSQL database for the hostile-input tests.

Not `pg_database_url`: other tests wipe that database while this server would be using it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bench.reliability import Stack, api_stack
from tests.support.databases import postgres_required


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        with api_stack(tmp_path_factory.mktemp("fuzz"), log_level="WARNING") as stack:
            yield stack
    except sa.exc.OperationalError as exc:
        if postgres_required():
            pytest.fail(f"PostgreSQL is required here but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
