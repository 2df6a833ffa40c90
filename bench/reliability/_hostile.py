"""Hostile input: schemathesis over `/openapi.json`, and hand-made malformed requests.

`run_schemathesis` drives every operation of the running API with generated cases (valid and
invalid, through hypothesis) using a valid token, and checks each answer: never a 5xx, and a
body that matches the documented schema and content type. Failures are collected, not raised,
so one run reports every distinct problem with its reproduction.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["FuzzReport", "run_schemathesis"]


@dataclass
class FuzzReport:
    operations: list[str] = field(default_factory=list)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    # "METHOD path: check failed ... (curl reproduction)", first few per distinct message.
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> dict[str, Any]:
        return {
            "operations": len(self.operations),
            "cases": self.cases,
            "statuses": dict(sorted(self.statuses.items())),
            "server_errors": self.server_errors,
            "failures": len(self.failures),
            "seconds": round(self.seconds, 1),
        }


def _seed_tasks(base_url: str, user: str, token: str, count: int) -> None:
    """Tasks for the fuzzed user, so generated small ids often hit real rows."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as client:
        for i in range(count):
            body: dict[str, Any] = {"title": f"fuzz seed {i}"}
            if i % 3 == 0:
                body["due_date"] = "2031-06-01T09:00:00+02:00"
            client.post(f"/api/{user}/tasks", json=body).raise_for_status()


def run_schemathesis(
    base_url: str,
    *,
    token: str,
    user: str,
    total_cases: int,
    seed: int | None = None,
    seed_tasks: int = 20,
) -> FuzzReport:
    """Runs at least `total_cases` generated cases, spread over every operation and both
    generation modes (positive: valid by the schema; negative: invalid on purpose). The same
    `seed` gives the same cases against the same database state."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Err
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
    )

    started = time.monotonic()
    _seed_tasks(base_url, user, token, seed_tasks)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations: list[Any] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation schemathesis cannot read is a finding too
            raise RuntimeError(f"unusable operation in /openapi.json: {result.err()}")
        operations.append(result.ok())
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    report = FuzzReport(operations=[op.label for op in operations])
    auth = {"Authorization": f"Bearer {token}"}
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    seen: Counter[str] = Counter()

    def one_round(per_run: int, round_seed: int) -> None:
        for operation in operations:
            path_names = {p.name for p in operation.path_parameters}
            fixed = {"user_id": user} if "user_id" in path_names else None
            for mode in modes:
                _run_operation(operation, mode, fixed, per_run, round_seed)

    def _run_operation(
        operation: Any, mode: Any, fixed: dict[str, str] | None, per_run: int, round_seed: int
    ) -> None:
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed, headers=auth)

        @hypothesis_seed(round_seed)
        @settings(
            max_examples=per_run,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run_case(case: Any) -> None:
            response = case.call(base_url=base_url, headers=auth, timeout=30)
            report.cases += 1
            report.statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks, headers=auth)
            # schemathesis's FailureGroup is a BaseExceptionGroup, not an Exception.
            except (Exception, BaseExceptionGroup) as exc:  # record with its reproduction
                message = f"{operation.label} [{mode.value}]: {str(exc).strip()[:600]}"
                key = message.splitlines()[0]
                seen[key] += 1
                if seen[key] <= 2:
                    curl = case.as_curl_command(headers=auth)
                    report.failures.append(f"{message}\n    reproduce: {curl}")

        try:
            run_case()
        except Exception as exc:  # generation impossible (e.g. nothing to negate)
            if "unsatisfiable" not in f"{type(exc).__name__} {exc}".lower():
                report.failures.append(f"{operation.label} [{mode.value}]: {exc!r}"[:800])

    # Hypothesis stops early once an operation's input space is exhausted (a GET with two
    # enum parameters): further rounds with other seeds top the count up to the budget.
    base_seed = 0 if seed is None else seed
    for round_number in range(6):
        missing = total_cases - report.cases
        if missing <= 0:
            break
        per_run = max(1, math.ceil(missing / (len(operations) * len(modes))))
        one_round(per_run, base_seed + round_number)
    report.seconds = time.monotonic() - started
    return report
