"""A minimal MCP client for the API's streamable HTTP transport (stateless, JSON answers).

Raw JSON-RPC over httpx: the load generator needs to set `X-Request-ID` per call and to see
transport failures as they are, which the SDK's client session hides behind its own tasks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["McpCallError", "McpResult", "call_tool", "call_tool_sync", "rpc_payload"]

_ids = itertools.count(1)
ACCEPT = "application/json, text/event-stream"


class McpCallError(RuntimeError):
    """The HTTP exchange failed or the answer is not a JSON-RPC response (not a tool error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class McpResult:
    """A tool call's answer: `is_error` is a tool error (the agent sees its text)."""

    is_error: bool
    structured: dict[str, Any] | None
    text: str
    http_status: int


def rpc_payload(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": next(_ids),
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def _parse(response: httpx.Response) -> McpResult:
    if response.status_code != 200:
        raise McpCallError(
            f"MCP HTTP {response.status_code}: {response.text[:300]}", response.status_code
        )
    try:
        message = response.json()
    except ValueError as exc:
        raise McpCallError(f"MCP answer is not JSON: {response.text[:300]}", 200) from exc
    if "error" in message:
        # A JSON-RPC error (unknown tool, malformed params): the protocol said no, no crash.
        error = message["error"]
        return McpResult(True, None, str(error.get("message", error)), 200)
    result = message.get("result")
    if not isinstance(result, dict):
        raise McpCallError(f"no result in MCP answer: {message!r:.300}", 200)
    text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
    return McpResult(bool(result.get("isError")), result.get("structuredContent"), text, 200)


async def call_tool(
    client: httpx.AsyncClient,
    name: str,
    arguments: dict[str, Any],
    *,
    token: str,
    request_id: str | None = None,
) -> McpResult:
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    response = await client.post("/mcp/", json=rpc_payload(name, arguments), headers=headers)
    return _parse(response)


def call_tool_sync(
    client: httpx.Client,
    name: str,
    arguments: dict[str, Any],
    *,
    token: str,
    request_id: str | None = None,
) -> McpResult:
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    response = client.post("/mcp/", json=rpc_payload(name, arguments), headers=headers)
    return _parse(response)
