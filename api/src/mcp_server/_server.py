"""Building the MCP server and attaching it to its two transports (T-019).

- Streamable HTTP, mounted at `/mcp/` on the API: bearer token required (the REST token),
  stateless so that any replica behind a Kubernetes Service can answer any request, and
  Host/Origin checks from `MCP_ALLOWED_HOSTS`.
- stdio (`pakaura mcp --user USER`): one fixed user; stdout carries only the protocol, the
  logs go to stderr.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from loguru import logger
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl

from src.config import Settings
from src.mcp_server.auth import JWTTokenVerifier, token_subject
from src.mcp_server.task_operations import UserProvider, register_task_tools

if TYPE_CHECKING:
    from fastapi import FastAPI  # not imported at run time: stdio starts faster without it

__all__ = ["MCP_PATH", "build_mcp_server", "mount_mcp", "run_stdio"]

MCP_PATH = "/mcp"

_INSTRUCTIONS = (
    "Manage the to-do tasks of the authenticated user: add_task, list_tasks, update_task, "
    "complete_task, uncomplete_task, delete_task, clear_completed. Task ids come from "
    "add_task and list_tasks. Due dates are ISO 8601 date-times with a time zone offset."
)

# AuthSettings requires an issuer URL, but the SDK only publishes it with a
# `resource_server_url` (OAuth protected-resource metadata), which we do not set: tokens are
# issued out of band (Better Auth, `pakaura token`), there is no OAuth flow to discover.
_TOKEN_ISSUER = "https://auth.pakaura.invalid"


def build_mcp_server(
    settings: Settings,
    *,
    user_provider: UserProvider,
    token_verifier: JWTTokenVerifier | None = None,
) -> MCPServer:
    """An MCP server with the task tools, acting as `user_provider()` for each call.

    With `token_verifier` its HTTP app requires a bearer token that the verifier accepts.
    Build one per app or process: its HTTP session manager can run only once.
    """
    auth = (
        AuthSettings(issuer_url=AnyHttpUrl(_TOKEN_ISSUER), resource_server_url=None)
        if token_verifier is not None
        else None
    )
    server: MCPServer = MCPServer(
        "pakaura-tasks",
        title="Pakaura tasks",
        instructions=_INSTRUCTIONS,
        version="0.1.0",
        token_verifier=token_verifier,
        auth=auth,
        log_level="DEBUG" if settings.log_level in ("TRACE", "DEBUG") else "INFO",
    )
    register_task_tools(server, user_provider=user_provider)
    return server


def _transport_security(allowed_hosts: list[str]) -> TransportSecuritySettings:
    """Host (and browser Origin) allow-list against DNS rebinding; `*` switches it off."""
    if "*" in allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    origins = [f"{scheme}://{host}" for host in allowed_hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(allowed_hosts),
        allowed_origins=origins,
    )


def mount_mcp(app: FastAPI, settings: Settings) -> MCPServer:
    """Mounts the MCP streamable HTTP transport at `/mcp/` and runs it from the app lifespan.

    `/mcp` answers 307 to `/mcp/`. The mounted sub-app's own lifespan never runs, so its
    session manager is entered through `app.state.lifespan_parts` (see `create_app`).
    """
    verifier = JWTTokenVerifier(app.state.auth_secret, leeway=settings.jwt_leeway_seconds)
    server = build_mcp_server(settings, user_provider=token_subject, token_verifier=verifier)
    http_app = server.streamable_http_app(
        streamable_http_path="/",
        stateless_http=True,
        json_response=True,
        transport_security=_transport_security(settings.mcp_allowed_hosts),
    )
    app.mount(MCP_PATH, http_app)

    def run_session_manager(_: Settings) -> AbstractAsyncContextManager[None]:
        return server.session_manager.run()

    app.state.lifespan_parts.append(run_session_manager)
    app.state.mcp_server = server
    return server


def run_stdio(user: str, settings: Settings) -> None:
    """Serves MCP on stdin/stdout acting as `user` until stdin closes."""
    from src.db import create_tables, get_engine
    from src.logging_setup import configure_logging

    configure_logging(settings)  # stderr: stdout belongs to the protocol
    if settings.database_create_tables:
        create_tables(get_engine())
    server = build_mcp_server(settings, user_provider=lambda: user)

    @asynccontextmanager
    async def announced() -> AsyncIterator[None]:
        logger.bind(user_id=user).info("mcp stdio server started")
        yield
        logger.bind(user_id=user).info("mcp stdio server stopped")

    async def serve() -> None:
        async with announced():
            await server.run_stdio_async()

    anyio.run(serve)
