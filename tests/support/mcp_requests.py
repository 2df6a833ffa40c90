"""The JSON-RPC `initialize` request and headers that MCP-over-HTTP tests send."""

from __future__ import annotations

from typing import Any

__all__ = ["INITIALIZE", "MCP_HEADERS"]

INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
# Streamable HTTP answers JSON or an event stream: a client must accept both.
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
