"""MCP test fixtures: a configured database, in-memory clients, the app served by uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
import uvicorn
from mcp import Client
from mcp_types import CallToolResult, TextContent
from src.config import get_settings
from src.db import create_tables, get_engine, reset_engine
from src.mcp_server import build_mcp_server
from src.models import Task

SECRET = "mcp-tests-only-secret-0123456789abcdefghij"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _use_database(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BETTER_AUTH_SECRET", SECRET)
    get_settings.cache_clear()
    reset_engine()
    create_tables(get_engine())
    yield url
    reset_engine()  # PostgreSQL: no connection may survive into the next test's schema reset


@pytest.fixture
def mcp_db(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`db_url` (SQLite file / scratch PostgreSQL) as the settings' database, tables created."""
    yield from _use_database(db_url, monkeypatch)


@pytest.fixture
def mcp_sqlite_db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """As `mcp_db`, SQLite only: for costly transport tests that do not depend on the DB."""
    yield from _use_database(sqlite_url, monkeypatch)


def token(user: str | None, *, secret: str = SECRET, expires_in: int = 3600) -> str:
    """A JWT built with PyJWT directly, not with the code under test."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"iat": now, "exp": now + timedelta(seconds=expires_in)}
    if user is not None:
        claims["sub"] = user
    return jwt.encode(claims, secret, algorithm="HS256")


def task_rows() -> list[dict[str, Any]]:
    """Every stored task, by id: what a failed call must leave untouched."""
    table = Task.__table__  # type: ignore[attr-defined]
    with get_engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def connect(user: str) -> AbstractAsyncContextManager[Client]:
    """An SDK client talking in memory to a server acting as `user` (as stdio would)."""
    server = build_mcp_server(get_settings(), user_provider=lambda: user)
    return Client(server, raise_exceptions=True)


async def ok(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """Calls a tool that must succeed; returns its structured content."""
    result = await client.call_tool(tool, arguments or {})
    assert not result.is_error, error_text(result)
    assert result.structured_content is not None
    return result.structured_content


async def fails(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> str:
    """Calls a tool that must fail with a tool error; returns the error text."""
    result = await client.call_tool(tool, arguments or {})
    assert result.is_error, f"{tool} should have failed: {result.structured_content}"
    return error_text(result)


def error_text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


@dataclass
class LiveApp:
    base_url: str

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp/"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve() -> Iterator[LiveApp]:
    from src.main import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(get_settings()), host="127.0.0.1", port=port, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield LiveApp(f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def live_app(mcp_db: str) -> Iterator[LiveApp]:
    """`create_app()` served by uvicorn on a free local port, lifespan included."""
    yield from _serve()


@pytest.fixture
def live_sqlite_app(mcp_sqlite_db: str) -> Iterator[LiveApp]:
    """As `live_app`, SQLite only: for transport checks that do not depend on the DB."""
    yield from _serve()


@asynccontextmanager
async def http_client(url: str, bearer: str | None, **client_kwargs: Any) -> AsyncIterator[Client]:
    """The SDK client over streamable HTTP, sending `Authorization: Bearer <bearer>`."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=20) as http,
        Client(streamable_http_client(url, http_client=http), **client_kwargs) as client,
    ):
        yield client
