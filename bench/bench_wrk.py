"""Closed-loop API benchmark with `wrk`: what events cost a task API under load (issue 15).

    python -m bench.bench_wrk [--db postgresql|sqlite] [--seconds 5] [--rounds 3] [--sequential]
                              [--only off,on,hung,down,relay-off,seed,inline,low,normal,trace-on]

`wrk` (Debian package `wrk`) runs in its own process and POSTs one task per request to
`pakaura`'s API (`bench._api_server`). Every variant's API runs at once, each on a fresh
database with its own emulated sidecar process (`bench._sidecar`), and wrk takes them in turn:
per variant and round, p50 latency with one connection (`-c1`) and requests/s with eight
(`-c8`). Rounds rotate the order; the summary is the median over rounds and the ratio against
events off (`DAPR_ENABLED=false`) from the same run.

`--sequential`: one API at a time instead, started afresh for each run (as one would try it by
hand; less noise from the other variants' idle servers).

Variants: `off` events off; `on` defaults (on PostgreSQL the relay is a child process at
`RELAY_PRIORITY=idle`), sidecar healthy; `inline`, `low`, `normal` the other relay placements;
`hung` sidecar accepts and never answers; `down` no sidecar; `relay-off` outbox rows only
(`RELAY_ENABLED=false`); `seed` the seed design (two publishes inside each request, no outbox);
`trace-on` is `on` with OpenTelemetry spans made and dropped (issue 19).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.bench_relay import _wait_http, database, sidecar
from bench.publish_throughput import _free_port

VARIANTS: dict[str, tuple[str, str, dict[str, str]]] = {
    # name: (server mode, sidecar state, extra environment)
    "off": ("off", "healthy", {}),
    "on": ("outbox", "healthy", {}),
    "hung": ("outbox", "hung", {}),
    "down": ("outbox", "down", {}),
    "relay-off": ("outbox", "healthy", {"RELAY_ENABLED": "false"}),
    # The relay in the API's own event loop (the default before issue 15's child process).
    "inline": ("outbox", "healthy", {"RELAY_MODE": "inline"}),
    # The child relay at the other priorities (RELAY_PRIORITY; `on` is `idle`).
    "low": ("outbox", "healthy", {"RELAY_PRIORITY": "low"}),
    "normal": ("outbox", "healthy", {"RELAY_PRIORITY": "normal"}),
    "seed": ("seed", "healthy", {}),
    # Issue 19: `on` with OpenTelemetry on (FastAPI + SQLAlchemy instrumentations, outbox and
    # delivery spans), spans made and dropped in-process: the SDK's cost without an export.
    "trace-on": ("outbox", "healthy", {"OTEL_TRACES_EXPORTER": "none"}),
}

_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.body = '{{"title": "Buy milk", "description": "two litres"}}'
"""

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _parse_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk time {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict[str, float]:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if p50 is None or p99 is None or rps is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    if errors is not None:
        raise RuntimeError(f"{errors.group(1)} requests failed:\n{out}")
    return {"p50": _parse_ms(p50.group(1)), "p99": _parse_ms(p99.group(1)), "rps": float(rps[1])}


@contextmanager
def served(
    db: str, name: str, token: str, secret: str, tmp: Path
) -> Iterator[tuple[str, Path, str]]:
    """The API of variant `name` on a fresh database with its own sidecar process: yields the
    POST url, the wrk script and the database URL."""
    mode, state, extra = VARIANTS[name]
    with database(db) as url, sidecar(tmp) as car:
        script = tmp / f"post-{name}.lua"
        script.write_text(_LUA.format(token=token))
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "DAPR_ENABLED": "true" if mode == "outbox" else "false",
            "DAPR_HTTP_PORT": str(car.port),
            "BETTER_AUTH_SECRET": secret,
            "LOG_LEVEL": "ERROR",
            **extra,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "bench._api_server", "--mode", mode, "--port", str(port)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/health")
            time.sleep(1.0)  # the relay leads by now
            if state == "down":
                car.stop()
            elif state == "hung" and car.proc is not None:
                car.proc.send_signal(signal.SIGUSR1)
            yield f"{base}/api/alice/tasks", script, url
        finally:
            server.terminate()
            server.wait(30)


def backlog(db_url: str) -> int:
    """Rows waiting in the outbox (0 when the variant writes none)."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("event_outbox"):
                return 0
            return int(conn.execute(sa.text("SELECT count(*) FROM event_outbox")).scalar_one())
    finally:
        engine.dispose()


def caught_up(db_url: str, name: str, timeout: float = 60.0) -> None:
    """Fails the run unless the outbox of variant `name` empties within `timeout` seconds."""
    started = time.monotonic()
    while (left := backlog(db_url)) > 0:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{name}: {left} events still waiting after {timeout:.0f} s")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="rotating rounds (default 5)")
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="one API at a time, started afresh per run (default: all at once, in turn)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    from src.auth import issue_token

    secret = "bench-only-secret-0123456789abcdef-0123456789abcdef"
    token = issue_token("alice", secret)
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in VARIANTS:
            parser.error(f"unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    results: list[dict[str, Any]] = []

    def measure(name: str, round_no: int, url: str, script: Path, db_url: str) -> None:
        single = run_wrk(url, script, 1, args.seconds)
        many = run_wrk(url, script, 8, args.seconds)
        result = {
            "variant": name,
            "round": round_no + 1,
            "p50_ms": round(single["p50"], 3),
            "p99_ms": round(single["p99"], 3),
            "rps_c1": round(single["rps"], 1),
            "rps_c8": round(many["rps"], 1),
            "backlog_after_c8": backlog(db_url),  # events the relay has not delivered yet
        }
        results.append(result)
        print(json.dumps(result), flush=True)
        mode, state, extra = VARIANTS[name]
        if mode == "outbox" and state == "healthy" and extra.get("RELAY_ENABLED") != "false":
            caught_up(db_url, name)  # a healthy sidecar gets every event

    def rotation(round_no: int) -> list[str]:
        shift = round_no % len(names)
        return names[shift:] + names[:shift]

    with tempfile.TemporaryDirectory() as tmp:
        if args.sequential:
            # One API at a time, started afresh for each run, as one would try it by hand.
            for round_no in range(args.rounds):
                for name in rotation(round_no):
                    folder = Path(tmp) / f"{name}-{round_no}"
                    folder.mkdir()
                    with served(args.db, name, token, secret, folder) as (url, script, db_url):
                        run_wrk(url, script, 1, 2)  # warm-up: caches, pools
                        measure(name, round_no, url, script, db_url)
        else:
            # Every variant's server runs at once (fresh database and sidecar each) and wrk
            # takes them in turn, round after round, order rotating.
            with contextlib.ExitStack() as stack:
                targets = {}
                for name in names:
                    folder = Path(tmp) / name
                    folder.mkdir()
                    targets[name] = stack.enter_context(
                        served(args.db, name, token, secret, folder)
                    )
                for url, script, _ in targets.values():  # warm-up: caches, pools
                    run_wrk(url, script, 1, 2)
                for round_no in range(args.rounds):
                    for name in rotation(round_no):
                        measure(name, round_no, *targets[name])
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        runs = [r for r in results if r["variant"] == name]
        medians[name] = {
            k: round(statistics.median(r[k] for r in runs), 3)
            for k in ("p50_ms", "p99_ms", "rps_c1", "rps_c8", "backlog_after_c8")
        }
    off = medians.get("off")
    print(f"\n| variant ({args.db}) | p50 ms | p50 vs off | req/s c8 | vs off | waiting after c8 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, m in medians.items():
        ratio = f"{m['p50_ms'] / off['p50_ms']:.2f}x" if off else "-"
        tput = f"{m['rps_c8'] / off['rps_c8']:.2f}" if off else "-"
        waiting = f"{m['backlog_after_c8']:.0f}"
        print(f"| {name} | {m['p50_ms']:.2f} | {ratio} | {m['rps_c8']:.0f} | {tput} | {waiting} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
