"""Tracing from the standard OTEL_* variables, in a fresh process each (the global tracer
provider can be set once per process) (issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.app import TEST_SECRET

SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
from src import tracing
from src.main import create_app

app = create_app()
with TestClient(app) as client:
    answer = client.get("/health", headers={
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
    assert answer.status_code == 200, answer.text
enabled = tracing.is_enabled()
if enabled:
    tracing.provider().force_flush()
sys.stderr.write(json.dumps({"enabled": enabled}) + "\\n")
"""


def _run(tmp_path: Path, **otel: str) -> tuple[bool, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DAPR_", "DATABASE_"))}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        BETTER_AUTH_SECRET=TEST_SECRET,
        LOG_FORMAT="json",
        LOG_LEVEL="WARNING",
        **otel,
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=Path(__file__).resolve().parents[2] / "api",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    last = [line for line in done.stderr.splitlines() if line.startswith('{"enabled"')][-1]
    return bool(json.loads(last)["enabled"]), done.stdout


@pytest.mark.slow
def test_otel_variables_turn_on_spans_with_the_request_s_trace(tmp_path: Path) -> None:
    enabled, stdout = _run(tmp_path, OTEL_TRACES_EXPORTER="console")
    assert enabled
    # The console exporter prints each span as JSON; the request span continues the header.
    assert '"name": "GET /health"' in stdout
    assert '"trace_id": "0x4bf92f3577b34da6a3ce929d0e0e4736"' in stdout
    assert '"service.name": "pakaura-api"' in stdout


@pytest.mark.slow
def test_the_sdk_can_be_disabled_and_nothing_is_on_by_default(tmp_path: Path) -> None:
    assert _run(tmp_path, OTEL_TRACES_EXPORTER="console", OTEL_SDK_DISABLED="true") == (
        False,
        "",
    )
    assert _run(tmp_path) == (False, "")


@pytest.mark.slow
def test_an_unreachable_collector_never_fails_a_request(tmp_path: Path) -> None:
    enabled, _ = _run(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_SERVICE_NAME="custom",
    )
    assert enabled
