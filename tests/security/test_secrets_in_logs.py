"""The auth secret and DAPR_API_TOKEN never appear in logs (issue 7, part 4).

The API runs at DEBUG; the test drives the paths most likely to leak (refused tokens, MCP,
events to a sidecar that wants the token and, for a while, refuses it with 401, a start-up
with invalid settings) and scans everything the processes wrote.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from bench.reliability import Stack, make_token, random_secret, scan_for_secrets
from bench.reliability._mcp_client import McpCallError, call_tool_sync
from bench.reliability._process import REPO_ROOT, _inherited_environment


def test_scanner_finds_a_planted_secret() -> None:
    secret = random_secret(48)
    log = f'{{"message": "ok"}}\n{{"message": "header {secret}"}}\n'
    assert [leak.line_number for leak in scan_for_secrets(log, {"S": secret})] == [2]
    assert scan_for_secrets(log.replace(secret, "x" * 48), {"S": secret}) == []


def _relay_running(stack: Stack) -> bool:
    health = httpx.get(f"{stack.api.base_url}/health").json()
    return bool(health.get("relay", {}).get("state", "disabled") != "disabled")


def test_no_secret_in_api_logs(secured_stack: Stack) -> None:
    stack = secured_stack
    user = "log-scan-user"
    with httpx.Client(base_url=stack.api.base_url, headers=stack.headers(user)) as client:
        # Refused tokens: the reason is logged, never the token or the secret.
        for bad in (make_token("w" * 48, user=user), "garbage", stack.secret):
            client.get(f"/api/{user}/tasks", headers={"Authorization": f"Bearer {bad}"})
        with pytest.raises(McpCallError) as refused:
            call_tool_sync(client, "list_tasks", {}, token=make_token("w" * 48, user=user))
        assert refused.value.status == 401
        call_tool_sync(client, "add_task", {"title": "via mcp"}, token=stack.token(user))
        # The sidecar refuses our token for a while: the relay logs a configuration error.
        stack.emulator.require_token("not-" + stack.dapr_token)
        for i in range(3):
            client.post(f"/api/{user}/tasks", json={"title": f"t{i}", "description": "d"})
        if _relay_running(stack):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                c.status == 401 for c in stack.emulator.calls
            ):
                time.sleep(0.05)
            assert any(c.status == 401 for c in stack.emulator.calls), "relay never tried"
        stack.emulator.require_token(stack.dapr_token)
        if _relay_running(stack):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(
                e.get("data", {}).get("user_id") == user for e in stack.emulator.events()
            ):
                time.sleep(0.05)
            calls = [c for c in stack.emulator.calls if "/publish/" in c.path and c.status == 204]
            assert calls and all(c.headers.get("dapr-api-token") == stack.dapr_token for c in calls)
    text = stack.log_text()
    assert len(text.splitlines()) > 20, "the API logged almost nothing: the scan proves nothing"
    assert scan_for_secrets(text, stack.secrets()) == []


def test_no_secret_in_startup_errors(tmp_path: object) -> None:
    """Invalid settings stop the start-up with a message naming the setting, not its value."""
    short_secret = random_secret(20)  # too short for HS256: refused
    dapr_token = random_secret(40)
    env = {
        **_inherited_environment(),
        "PYTHONPATH": f"{REPO_ROOT / 'api'}",
        "BETTER_AUTH_SECRET": short_secret,
        "DAPR_API_TOKEN": dapr_token,
        "DAPR_HTTP_PORT": "not-a-port",
        "DATABASE_URL": "sqlite:///./x.db",
    }
    # `pakaura token` reads the same settings as `serve` and fails the same way, without
    # importing the whole app first.
    done = subprocess.run(
        [sys.executable, "-m", "src.cli", "token", "someone"],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "BETTER_AUTH_SECRET" in output and "DAPR_HTTP_PORT" in output
    assert (
        scan_for_secrets(output, {"BETTER_AUTH_SECRET": short_secret, "DAPR_API_TOKEN": dapr_token})
        == []
    )
