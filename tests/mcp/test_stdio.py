"""`pakaura mcp --user USER`: the stdio transport in a real child process (T-019).

SQLite only: spawning costs seconds, and the database path is the one the in-memory tests
run on both databases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.mcp.conftest import fails, ok, task_rows

COMMAND = [sys.executable, "-m", "src.cli", "mcp", "--user", "alice"]
# Chatty on purpose: none of this may reach stdout.
NOISY = {"LOG_LEVEL": "DEBUG", "LOG_SQL": "true", "LOG_FORMAT": "console"}


def _env(db_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, **NOISY}


@pytest.mark.anyio
async def test_sdk_client_over_stdio_acts_as_the_given_user(
    mcp_sqlite_db: str, tmp_path: Path
) -> None:
    params = StdioServerParameters(command=COMMAND[0], args=COMMAND[1:], env=_env(mcp_sqlite_db))
    stray: list[Exception] = []

    async def on_message(message: object) -> None:
        if isinstance(message, Exception):  # a stdout line that is not JSON-RPC
            stray.append(message)

    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(
            stdio_client(params, errlog=errlog), message_handler=on_message
        ) as client:
            first = await ok(client, "add_task", {"title": "from stdio"})
            second = await ok(client, "add_task", {"title": "second"})
            await ok(client, "update_task", {"task_id": first["task_id"], "description": "x"})
            await ok(client, "complete_task", {"task_id": second["task_id"]})
            assert "not the authenticated user" in await fails(
                client, "list_tasks", {"user_id": "bob"}
            )
            assert "title: must not be empty" in await fails(client, "add_task", {"title": ""})
            assert await ok(client, "clear_completed") == {"deleted": 1}
            [task] = (await ok(client, "list_tasks"))["tasks"]
    assert (task["user_id"], task["title"], task["description"]) == ("alice", "from stdio", "x")
    assert [(r["user_id"], r["title"]) for r in task_rows()] == [("alice", "from stdio")]
    assert stray == []
    logs = (tmp_path / "stderr.log").read_text()
    assert "mcp stdio server started" in logs and "mcp task created" in logs


def _request(request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def test_stdout_carries_nothing_but_protocol(mcp_sqlite_db: str, tmp_path: Path) -> None:
    """Raw pipes, start to exit: every stdout line is a JSON-RPC message."""
    initialize = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"},
    }
    conversation: list[dict[str, Any]] = [
        _request(1, "initialize", initialize),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        _request(2, "tools/call", {"name": "add_task", "arguments": {"title": "raw"}}),
        _request(3, "tools/call", {"name": "add_task", "arguments": {"title": ""}}),
        _request(4, "tools/call", {"name": "list_tasks", "arguments": {}}),
    ]
    stderr_path = tmp_path / "stderr.log"
    lines: list[bytes] = []
    responses: dict[int, dict[str, Any]] = {}
    with stderr_path.open("wb") as stderr:  # a file: a full stderr pipe would block the child
        child = subprocess.Popen(
            COMMAND,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_env(mcp_sqlite_db),
        )
        assert child.stdin and child.stdout
        for message in conversation:
            child.stdin.write(json.dumps(message).encode() + b"\n")
            child.stdin.flush()
            while "id" in message and message["id"] not in responses:
                line = child.stdout.readline()
                assert line, f"stdout closed early; stderr: {stderr_path.read_text()[-2000:]}"
                lines.append(line)
                parsed = json.loads(line)  # any non-JSON output fails here
                if "id" in parsed:
                    responses[parsed["id"]] = parsed
        child.stdin.close()  # the client goes away: the server must exit cleanly
        lines.extend(child.stdout.readlines())
        assert child.wait(timeout=30) == 0
    assert all(json.loads(line)["jsonrpc"] == "2.0" for line in lines)
    assert responses[2]["result"]["structuredContent"]["status"] == "created"
    assert responses[3]["result"]["isError"] is True
    assert [t["title"] for t in responses[4]["result"]["structuredContent"]["tasks"]] == ["raw"]
    logs = stderr_path.read_text()
    assert "mcp stdio server started" in logs and "mcp stdio server stopped" in logs
