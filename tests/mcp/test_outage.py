"""A database outage during an MCP call is a tool error the agent can retry (T-019)."""

from __future__ import annotations

import pytest
from src.config import get_settings
from src.db import reset_engine

from tests.mcp.conftest import connect, fails


@pytest.mark.anyio
async def test_an_unreachable_database_is_a_retryable_tool_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    get_settings.cache_clear()
    reset_engine()
    try:
        async with connect("alice") as client:
            message = await fails(client, "add_task", {"title": "lost?"})
    finally:
        reset_engine()
    assert "database unavailable" in message and "nothing was changed" in message
