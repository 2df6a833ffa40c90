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
from mcp.server.auth.routes import cors_middleware
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import ProtectedResourceMetadata
from starlette.requests import Request
from starlette.responses import JSONResponse

from src.auth import METADATA_PATH
from src.config import Settings
from src.mcp_server.auth import BearerGuard, JWTTokenVerifier, token_subject
from src.mcp_server.task_operations import UserProvider, register_task_tools

if TYPE_CHECKING:
    from fastapi import FastAPI  # not imported at run time: stdio starts faster without it

__all__ = ["MCP_PATH", "add_resource_metadata", "build_mcp_server", "mount_mcp", "run_stdio"]

MCP_PATH = "/mcp"

_INSTRUCTIONS = (
    "Manage the to-do tasks of the authenticated user: add_task, list_tasks, update_task, "
    "complete_task, uncomplete_task, delete_task, clear_completed. Task ids come from "
    "add_task and list_tasks. Due dates are ISO 8601 date-times with a time zone offset."
)


def build_mcp_server(settings: Settings, *, user_provider: UserProvider) -> MCPServer:
    """An MCP server with the task tools, acting as `user_provider()` for each call.

    Authentication is not its business: `mount_mcp` puts `BearerGuard` in front of its HTTP
    app. Build one per app or process: its HTTP session manager can run only once.
    """
    server: MCPServer = MCPServer(
        "pakaura-tasks",
        title="Pakaura tasks",
        instructions=_INSTRUCTIONS,
        version="0.1.0",
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
    # The SDK's own `token_verifier` route wrapper answers its own 401 body; BearerGuard
    # answers the REST one (one shape for both) with the RFC 9728 `resource_metadata`.
    verifier = JWTTokenVerifier(app.state.token_verifier)
    server = build_mcp_server(settings, user_provider=token_subject)
    http_app = server.streamable_http_app(
        streamable_http_path="/",
        stateless_http=True,
        json_response=True,
        transport_security=_transport_security(settings.mcp_allowed_hosts),
    )
    app.mount(MCP_PATH, BearerGuard(http_app, verifier, settings))

    def run_session_manager(_: Settings) -> AbstractAsyncContextManager[None]:
        return server.session_manager.run()

    app.state.lifespan_parts.append(run_session_manager)
    app.state.mcp_server = server
    add_resource_metadata(app, settings)
    return server


def add_resource_metadata(app: FastAPI, settings: Settings) -> None:
    """RFC 9728 Protected Resource Metadata, when `AUTH_SERVER_URL` names the auth server.

    Served at `/.well-known/oauth-protected-resource` (resource: the API, REST and MCP) and at
    the path-suffixed `/.well-known/oauth-protected-resource/mcp` (resource: the MCP endpoint)
    that MCP clients try when a 401 names no `resource_metadata`. The document is the SDK's
    model; built per request because without `PUBLIC_URL` the resource is the request's base.
    CORS-open like the SDK's own route: browser-based clients (MCP Inspector) read it.
    """
    if settings.auth_server_url is None:
        return

    def handler(suffix: str) -> object:
        def metadata(request: Request) -> JSONResponse:
            base = settings.public_url or str(request.base_url).rstrip("/")
            # From plain strings: the model keeps an empty path as is (no trailing "/"), and
            # clients compare `resource` with the URL they called.
            document = ProtectedResourceMetadata.model_validate(
                {
                    "resource": base + suffix,
                    "authorization_servers": [settings.auth_server_url],
                    "resource_name": "Pakaura task API",
                }
            )
            return JSONResponse(
                document.model_dump(mode="json", exclude_none=True),
                headers={"Cache-Control": "public, max-age=3600"},
            )

        return cors_middleware(metadata, ["GET", "OPTIONS"])

    for suffix in ("", MCP_PATH):
        app.add_route(
            METADATA_PATH + suffix,
            handler(suffix),  # type: ignore[arg-type]
            methods=["GET", "OPTIONS"],
            include_in_schema=False,
        )


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
