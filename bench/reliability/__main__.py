"""`python -m bench.reliability …`: the full runs behind docs/reliability.md.

    run SCENARIO|all [--duration S] [--users N] [--seed N] [--out FILE]
        load + faults + ORM scripts, then the verifier (exit 1 on any loss, phantom, order
        violation or unexpected answer). Scenarios: baseline, sidecar, api-kill,
        postgres-restart (restarts the local cluster: not while other tests use it),
        leader-kill.
    fuzz [--cases N] [--seed N]
        schemathesis against /openapi.json of a running API with a valid token.
    orm-worker --user U --ops N [--seed N] [--pause S]
        (internal) ORM scripts as a process, mutations as JSON lines on stdout.

Needs the local PostgreSQL server (a scratch database is created and dropped per run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from bench.reliability._scenarios import SCENARIOS, run_scenario

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario {unknown[0]!r}: one of {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    results = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"reliability-{name}-") as workdir:
            result = run_scenario(
                name,
                Path(workdir),
                duration=args.duration,
                users=args.users,
                seed=args.seed,
                orm_batches=args.orm_batches,
                orm_ops=args.orm_ops,
                dump_dir=Path(args.dump) / name if args.dump else None,
            )
        results.append(result)
        print(result.to_json(), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(
        f"all {len(results)} scenario(s) passed: 0 lost, 0 phantom, 0 out of order", file=sys.stderr
    )
    return 0


def _fuzz(args: argparse.Namespace) -> int:
    from bench.reliability._harness import api_stack
    from bench.reliability._hostile import run_schemathesis

    with (
        tempfile.TemporaryDirectory(prefix="reliability-fuzz-") as workdir,
        api_stack(Path(workdir), log_level="WARNING") as stack,
    ):
        report = run_schemathesis(
            stack.api.base_url,
            token=stack.token("fuzzer"),
            user="fuzzer",
            total_cases=args.cases,
            seed=args.seed,
        )
    print(json.dumps(report.summary(), indent=2))
    for failure in report.failures:
        print(failure, file=sys.stderr)
    return 1 if report.failures or report.server_errors else 0


def _orm_worker(args: argparse.Namespace) -> int:
    from bench.reliability._orm_worker import run_orm_worker

    run_orm_worker(args.user, args.ops, args.seed, args.pause)
    return 0


SCENARIO_NAMES = (
    "baseline",
    "sidecar",
    "api-kill",
    "postgres-restart",
    "leader-kill",
    "sidecar+api-kill",
    "leader-kill+postgres-restart",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reliability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="a fault scenario under load, then the verifier")
    run.add_argument("scenario", help=f"one of {', '.join(SCENARIO_NAMES)}, or all")
    run.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    run.add_argument("--users", type=int, default=6)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--orm-batches", type=int, default=4, help="ORM script processes per run")
    run.add_argument("--orm-ops", type=int, default=60, help="scripts per ORM process")
    run.add_argument("--out", help="write the results as JSON here")
    run.add_argument("--dump", help="directory for mutation logs, events and API logs")
    run.set_defaults(handler=_run)

    fuzz = commands.add_parser("fuzz", help="schemathesis against a running API")
    fuzz.add_argument("--cases", type=int, default=1000)
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.set_defaults(handler=_fuzz)

    worker = commands.add_parser("orm-worker", help="(internal) ORM scripts as a process")
    worker.add_argument("--user", required=True)
    worker.add_argument("--ops", type=int, default=30)
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--pause", type=float, default=0.0)
    worker.set_defaults(handler=_orm_worker)

    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
