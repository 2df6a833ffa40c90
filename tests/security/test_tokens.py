"""Hostile bearer tokens on every REST route and on MCP HTTP (issue 7, part 4).

The routes come from the running server's /openapi.json, so a route added later is covered
without editing this file.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import httpx
import jwt
import pytest

from bench.reliability import Stack, make_token

VICTIM, INTRUDER = "victim-user", "intruder-user"

# HS512 with a 48-byte key is one of the hostile tokens; PyJWT warns about the key length.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _hostile_tokens(stack: Stack) -> dict[str, str]:
    """Every token here must be refused with 401 on a route of VICTIM."""
    valid = stack.token(VICTIM)
    header, payload, _signature = valid.split(".")
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg none, signature kept": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.{_signature}",
        "wrong secret": make_token("w" * 48, user=VICTIM),
        "expired": make_token(stack.secret, user=VICTIM, ttl=timedelta(seconds=-30)),
        "without sub": make_token(stack.secret, user=None),
        "empty sub": make_token(stack.secret, user=""),
        "numeric sub": make_token(stack.secret, {"sub": 12345}, user=None),
        "without exp": _without_exp(stack),
        "HS512 with the right secret": make_token(stack.secret, user=VICTIM, algorithm="HS512"),
        "not yet valid": make_token(
            stack.secret,
            {"nbf": 4102444800},
            user=VICTIM,  # 2100-01-01
        ),
        "tampered payload": f"{header}.{_b64({'sub': VICTIM, 'exp': 4102444800})}.{_signature}",
        "garbage": "not-a-jwt",
    }


def _without_exp(stack: Stack) -> str:
    return jwt.encode({"sub": VICTIM}, stack.secret, algorithm="HS256")


def _rest_operations(stack: Stack, task_id: int) -> list[tuple[str, str, dict[str, object] | None]]:
    spec = httpx.get(f"{stack.api.base_url}/openapi.json").json()
    operations: list[tuple[str, str, dict[str, object] | None]] = []
    for path, methods in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        concrete = path.replace("{user_id}", VICTIM).replace("{task_id}", str(task_id))
        for method in methods:
            body: dict[str, object] | None = (
                {"title": "intruder was here"} if method in ("post", "put", "patch") else None
            )
            operations.append((method.upper(), concrete, body))
    assert len(operations) >= 9, operations  # contract §5: 9 method/path pairs at least
    return operations


@pytest.fixture(scope="module")
def victim_task(secured_stack: Stack) -> dict[str, object]:
    with httpx.Client(base_url=secured_stack.api.base_url) as client:
        created = client.post(
            f"/api/{VICTIM}/tasks",
            json={"title": "victim's secret plan", "due_date": "2031-01-01T09:00:00+00:00"},
            headers=secured_stack.headers(VICTIM),
        )
        assert created.status_code == 201, created.text
        done = client.post(
            f"/api/{VICTIM}/tasks",
            json={"title": "victim's finished chore"},
            headers=secured_stack.headers(VICTIM),
        ).json()
        client.patch(
            f"/api/{VICTIM}/tasks/{done['id']}/complete", headers=secured_stack.headers(VICTIM)
        ).raise_for_status()
        task: dict[str, object] = created.json()
        return task


def _victim_state(stack: Stack) -> list[dict[str, object]]:
    response = httpx.get(f"{stack.api.base_url}/api/{VICTIM}/tasks", headers=stack.headers(VICTIM))
    response.raise_for_status()
    tasks: list[dict[str, object]] = response.json()
    return tasks


def test_every_rest_route_refuses_every_hostile_token(
    secured_stack: Stack, victim_task: dict[str, object]
) -> None:
    before = _victim_state(secured_stack)
    tokens = _hostile_tokens(secured_stack)
    failures = []
    with httpx.Client(base_url=secured_stack.api.base_url) as client:
        for method, path, body in _rest_operations(secured_stack, int(victim_task["id"])):  # type: ignore[call-overload]
            attempts: dict[str, dict[str, str]] = {
                f"token {name}": {"Authorization": f"Bearer {token}"}
                for name, token in tokens.items()
            }
            attempts["no Authorization header"] = {}
            attempts["Basic scheme"] = {"Authorization": "Basic dmljdGltOnB3"}
            attempts["token without scheme"] = {"Authorization": secured_stack.token(VICTIM)}
            for name, headers in attempts.items():
                response = client.request(method, path, json=body, headers=headers)
                if response.status_code != 401:
                    failures.append(f"{method} {path} with {name}: {response.status_code}")
                elif "www-authenticate" not in response.headers:
                    failures.append(f"{method} {path} with {name}: 401 without WWW-Authenticate")
            # A valid token of another user is authenticated but not authorised.
            other = client.request(method, path, json=body, headers=secured_stack.headers(INTRUDER))
            if other.status_code != 403:
                failures.append(f"{method} {path} with another user's token: {other.status_code}")
    assert failures == []
    assert _victim_state(secured_stack) == before


def _mcp_post(stack: Stack, headers: dict[str, str], payload: dict[str, object]) -> httpx.Response:
    return httpx.post(
        f"{stack.api.base_url}/mcp/",
        json=payload,
        headers={"Accept": "application/json, text/event-stream", **headers},
    )


LIST_CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "list_tasks", "arguments": {}},
}


def test_mcp_http_refuses_every_hostile_token(
    secured_stack: Stack, victim_task: dict[str, object]
) -> None:
    tokens = _hostile_tokens(secured_stack)
    failures = []
    for name, token in tokens.items():
        response = _mcp_post(secured_stack, {"Authorization": f"Bearer {token}"}, LIST_CALL)
        if response.status_code != 401:
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
    for name, headers in {
        "no Authorization header": {},
        "Basic scheme": {"Authorization": "Basic dmljdGltOnB3"},
    }.items():
        response = _mcp_post(secured_stack, headers, LIST_CALL)
        if response.status_code != 401:
            failures.append(f"{name}: {response.status_code}")
    assert failures == []
    # The same request with the victim's valid token works: the refusals above were the token.
    ok = _mcp_post(secured_stack, secured_stack.headers(VICTIM), LIST_CALL)
    assert ok.status_code == 200, ok.text
    titles = [t["title"] for t in ok.json()["result"]["structuredContent"]["tasks"]]
    assert "victim's secret plan" in titles
