"""The MCP server over the task service (contract §6, T-019).

`mount_mcp(app, settings)` serves it at `/mcp/` on the API (bearer token as for REST);
`run_stdio(user, settings)` serves it on stdio for one user (`pakaura mcp --user USER`);
`build_mcp_server(settings, user_provider=...)` builds it for other embeddings and tests.
The tools only call `src.services`; events come from the ORM hooks.
"""

from src.mcp_server._server import MCP_PATH, build_mcp_server, mount_mcp, run_stdio
from src.mcp_server.auth import JWTTokenVerifier, token_subject
from src.mcp_server.task_operations import UserProvider

__all__ = [
    "MCP_PATH",
    "JWTTokenVerifier",
    "UserProvider",
    "build_mcp_server",
    "mount_mcp",
    "run_stdio",
    "token_subject",
]
