"""The API contract run: schemathesis against a real API process, nothing excluded.

    python -m bench.schemathesis_run [--backend sqlite|postgresql|both] [--max-examples 200]
                                     [--seed 42]

Two schemathesis invocations per backend, both `--checks all`, fixed seed:

1. phases examples, coverage, fuzzing, stateful, every operation; each case carries a token
   for the user of its own path (bench/schemathesis_hooks.py), so positive cases reach the
   task logic for any generated user id;
2. the stateful phase again with `user_id` fixed to the token's user, so the inferred links
   (create -> read/update/complete/delete) chain on one user's tasks.

Any failure, or fewer cases than asked, is a failed run. docs/reliability.md has the figures;
tests/api/test_openapi_contract.py runs a short slice in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.reliability import Stack, api_stack, make_token

__all__ = ["ContractRun", "run_contract"]

FIXED_USER = "fuzzer"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ContractRun:
    backend: str
    cases: int = 0
    failures: int = 0
    links_covered: str = ""
    outputs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0

    def summary(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "cases": self.cases,
            "failures": self.failures,
            "stateful_links": self.links_covered,
        }


def _schemathesis(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, str]:
    executable = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [str(executable), "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def _count(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


def run_contract(
    stack: Stack,
    *,
    backend: str,
    max_examples: int,
    seed: int,
    timeout: float = 3600,
) -> ContractRun:
    """Both invocations against `stack`'s first API; the outputs are kept for the report."""
    result = ContractRun(backend)
    schema_url = f"{stack.api.base_url}/openapi.json"
    common = [
        schema_url,
        "--checks",
        "all",
        "--seed",
        str(seed),
        "--max-examples",
        str(max_examples),
        "--workers",
        "1",
        "--no-color",
        "--wait-for-schema",
        "30",
        "--generation-database",
        "none",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "SCHEMATHESIS_HOOKS": "bench.schemathesis_hooks",
        "PAKAURA_FUZZ_SECRET": stack.secret,
    }
    with tempfile.TemporaryDirectory() as scratch:
        every_user = Path(scratch, "every-user")
        every_user.mkdir()
        every_user.joinpath("schemathesis.toml").write_text("")  # no config from parents
        phases = ["--phases", "examples,coverage,fuzzing,stateful"]
        code, output = _schemathesis([*common, *phases], cwd=every_user, env=env, timeout=timeout)
        result.outputs.append(output)
        result.failures += _failures(code, output)
        result.cases += _count(r"(\d+) generated", output)

        fixed = Path(scratch, "fixed-user")
        fixed.mkdir()
        fixed.joinpath("schemathesis.toml").write_text(
            f'[parameters]\n"path.user_id" = "{FIXED_USER}"\n'
        )
        env_fixed = {k: v for k, v in env.items() if k != "SCHEMATHESIS_HOOKS"}
        header = ["--header", f"Authorization: Bearer {make_token(stack.secret, user=FIXED_USER)}"]
        code, output = _schemathesis(
            [*common, "--phases", "stateful", *header], cwd=fixed, env=env_fixed, timeout=timeout
        )
        result.outputs.append(output)
        result.failures += _failures(code, output)
        result.cases += _count(r"(\d+) generated", output)
        links = re.search(r"API Links:\s+(\d+ covered / \d+ selected)", output)
        result.links_covered = links.group(1) if links else ""
    return result


def _failures(code: int, output: str) -> int:
    found = _count(r"(\d+) (?:unique )?failures?\b", output.split("SUMMARY")[-1])
    if code != 0 and found == 0:
        return 1  # an error (schema not loaded, crash): a failed run all the same
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.schemathesis_run")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, help="write each run's schemathesis output here")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    failed = False
    for backend in backends:
        with tempfile.TemporaryDirectory() as workdir:
            database = f"sqlite:///{workdir}/contract.db" if backend == "sqlite" else None
            with api_stack(
                Path(workdir),
                database_url=database,
                dapr_enabled=False,
                relay_enabled=False,
                log_level="WARNING",
            ) as stack:
                run = run_contract(
                    stack, backend=backend, max_examples=args.max_examples, seed=args.seed
                )
        print(json.dumps(run.summary()))
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(run.outputs):
                (args.output / f"{backend}-{i + 1}.txt").write_text(text)
        failed = failed or not run.ok
        if not run.ok:
            print(run.outputs[-1] if run.failures else "\n".join(run.outputs), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
