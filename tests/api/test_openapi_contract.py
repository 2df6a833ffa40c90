"""The OpenAPI document tells the truth: schemathesis, `--checks all`, every phase
(examples, coverage, fuzzing, stateful), fixed seed, against the real API on SQLite and
PostgreSQL, finds nothing. A short slice of `python -m bench.schemathesis_run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bench.reliability import api_stack
from bench.schemathesis_run import run_contract
from tests.support.databases import postgres_required

pytestmark = pytest.mark.slow

CI_EXAMPLES = 5  # per operation and phase: a few hundred cases in all
SEED = 42


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_schemathesis_finds_no_failure(tmp_path: Path, backend: str) -> None:
    database = f"sqlite:///{tmp_path / 'contract.db'}" if backend == "sqlite" else None
    try:
        with api_stack(
            tmp_path,
            database_url=database,
            dapr_enabled=False,
            relay_enabled=False,
            log_level="WARNING",
        ) as stack:
            run = run_contract(stack, backend=backend, max_examples=CI_EXAMPLES, seed=SEED)
    except sa.exc.OperationalError as exc:
        if postgres_required():
            pytest.fail(f"PostgreSQL is required here but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    report = "\n".join(run.outputs)
    assert run.failures == 0, report
    assert run.cases >= 250, report
    assert "Stateful" in report and "Coverage" in report and "Fuzzing" in report
