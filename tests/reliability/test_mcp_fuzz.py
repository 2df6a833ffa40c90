"""MCP tool arguments fuzzed with hypothesis over the real HTTP transport (issue 7, part 3).

Every call must end in a JSON-RPC answer: a result, a tool error the agent can read, or a
protocol error for arguments that do not fit the tool's schema. Never an HTTP 5xx, a dropped
connection, or an internal exception text (SQL, a traceback) handed to the agent.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.reliability import Stack
from bench.reliability._mcp_client import ACCEPT, rpc_payload

USER = "mcp-fuzzer"
TOOLS: dict[str, list[str]] = {
    "add_task": ["title", "description", "due_date", "user_id"],
    "list_tasks": ["status", "user_id"],
    "update_task": ["task_id", "title", "description", "due_date", "user_id"],
    "complete_task": ["task_id", "user_id"],
    "uncomplete_task": ["task_id", "user_id"],
    "delete_task": ["task_id", "user_id"],
    "clear_completed": ["user_id"],
}
INTERNAL_ERROR_MARKERS = ("Traceback", "psycopg", "sqlalchemy", "[SQL:", "sqlite3")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # unbounded: ids beyond INTEGER and BIGINT
    st.sampled_from([0, -1, 1, 2, 2**31, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=50),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=190, max_size=1100),
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "\ud800",
            USER,
            "someone-else",
            "2026-12-01T09:00:00+01:00",
            "2026-12-01T09:00:00",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
            "pending",
            "completed",
            "'; DROP TABLE task; --",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(TOOLS)))
    keys = draw(st.lists(st.sampled_from([*TOOLS[name], "extra", "id"]), unique=True, max_size=5))
    return name, {key: draw(values) for key in keys}


def _post(
    client: httpx.Client, stack: Stack, name: str, arguments: dict[str, Any]
) -> httpx.Response:
    # ensure_ascii + allow_nan: lone surrogates and NaN go over the wire as a client may send
    # them (escaped / as the non-standard literal), which httpx's own encoder refuses to do.
    body = json.dumps(rpc_payload(name, arguments), ensure_ascii=True, allow_nan=True)
    return client.post(
        "/mcp/",
        content=body.encode(),
        headers={
            "Authorization": f"Bearer {stack.token(USER)}",
            "Accept": ACCEPT,
            "Content-Type": "application/json",
        },
    )


def test_fuzzed_mcp_arguments_get_answers_never_crashes(fuzz_stack: Stack) -> None:
    outcomes = {"result": 0, "tool_error": 0, "protocol_error": 0}
    problems: list[str] = []
    with httpx.Client(base_url=fuzz_stack.api.base_url, timeout=30) as client:
        for i in range(5):  # some real tasks, so small ids sometimes exist
            _post(client, fuzz_stack, "add_task", {"title": f"seed {i}"}).raise_for_status()

        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(call=tool_calls())
        def fuzz(call: tuple[str, dict[str, Any]]) -> None:
            name, arguments = call
            response = _post(client, fuzz_stack, name, arguments)
            where = f"{name}({arguments!r:.300})"
            try:
                message = response.json()
            except ValueError:
                message = {}
            # The transport refuses JSON it cannot parse (a lone surrogate escape) with HTTP 400
            # and a JSON-RPC parse error: a clean answer. Anything else must be a 200.
            if response.status_code == 400 and message.get("error", {}).get("code") == -32700:
                outcomes["protocol_error"] += 1
                return
            if response.status_code != 200 or not message:
                problems.append(f"{where}: HTTP {response.status_code} {response.text[:200]}")
                return
            if "error" in message:
                outcomes["protocol_error"] += 1
                return
            result = message["result"]
            if result.get("isError"):
                outcomes["tool_error"] += 1
                text = " ".join(c.get("text", "") for c in result.get("content", []))
                if any(marker in text for marker in INTERNAL_ERROR_MARKERS):
                    problems.append(f"{where}: internal error handed to the agent: {text[:300]}")
            else:
                outcomes["result"] += 1

        fuzz()
    assert problems == [], "\n".join(problems[:20])
    assert sum(outcomes.values()) >= 120
    # The fuzzing reached the tools' logic, not only the argument validation.
    assert outcomes["result"] > 0 and outcomes["tool_error"] > 0, outcomes
    assert httpx.get(f"{fuzz_stack.api.base_url}/health").status_code == 200
