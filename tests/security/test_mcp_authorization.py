"""MCP authorization as MCP clients expect it: RFC 9728 Protected Resource Metadata, and a
401 that says where to log in (`WWW-Authenticate: Bearer resource_metadata=...`), with the
same body and header on REST."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.support.app import Api, make_client, make_token
from tests.support.mcp_requests import INITIALIZE, MCP_HEADERS

AUTH_SERVER = "https://auth.example.test/api/auth"


@pytest.fixture
def with_auth_server(sqlite_url: str) -> Iterator[Api]:
    with make_client(sqlite_url, AUTH_SERVER_URL=AUTH_SERVER) as api:
        yield api


@pytest.fixture
def plain(sqlite_url: str) -> Iterator[Api]:
    with make_client(sqlite_url) as api:
        yield api


def _refusals(api: Api) -> list[tuple[str, dict[str, str]]]:
    expired = make_token("alice", expires_in=-timedelta(seconds=30))
    return [
        ("missing", {}),
        ("garbage", {"Authorization": "Bearer not-a-jwt"}),
        ("expired", {"Authorization": f"Bearer {expired}"}),
        ("basic", {"Authorization": "Basic YWxpY2U6cHc="}),
    ]


def test_the_metadata_names_the_authorization_server(with_auth_server: Api) -> None:
    for path, resource in [
        ("/.well-known/oauth-protected-resource", "http://testserver"),
        ("/.well-known/oauth-protected-resource/mcp", "http://testserver/mcp"),
    ]:
        response = with_auth_server.client.get(path)
        assert response.status_code == 200, path
        document = response.json()
        assert document["resource"] == resource
        assert document["authorization_servers"] == [AUTH_SERVER]
        assert document["bearer_methods_supported"] == ["header"]
    # Browser clients (MCP Inspector) read it cross-origin.
    preflight = with_auth_server.client.options(
        "/.well-known/oauth-protected-resource",
        headers={"Origin": "http://localhost:6274", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "http://localhost:6274")


def test_public_url_is_the_resource_identifier(sqlite_url: str) -> None:
    with make_client(
        sqlite_url, AUTH_SERVER_URL=AUTH_SERVER, PUBLIC_URL="https://api.example.test"
    ) as api:
        document = api.client.get("/.well-known/oauth-protected-resource").json()
        assert document["resource"] == "https://api.example.test"
        header = api.client.post("/mcp/", json=INITIALIZE, headers=MCP_HEADERS).headers
        expected = (
            'resource_metadata="https://api.example.test/.well-known/oauth-protected-resource"'
        )
        assert expected in header["www-authenticate"]


def test_a_401_points_mcp_and_rest_clients_to_the_metadata(with_auth_server: Api) -> None:
    metadata = 'resource_metadata="http://testserver/.well-known/oauth-protected-resource"'
    for name, headers in _refusals(with_auth_server):
        mcp = with_auth_server.client.post(
            "/mcp/", json=INITIALIZE, headers={**MCP_HEADERS, **headers}
        )
        rest = with_auth_server.client.get("/api/alice/tasks", headers=headers)
        assert mcp.status_code == rest.status_code == 401, name
        challenge = mcp.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert metadata in challenge, name
        assert challenge == rest.headers["www-authenticate"], name
        assert mcp.json() == rest.json(), name  # one body shape
        assert set(mcp.json()) == {"detail", "error", "error_description"}
        if name in ("missing", "basic"):
            assert "error=" not in challenge  # RFC 6750 3.1: no error code without a token
            assert "bearer token required" in mcp.json()["detail"]
        else:
            assert 'error="invalid_token"' in challenge


def test_without_an_authorization_server_the_401_says_a_bearer_token_is_required(
    plain: Api,
) -> None:
    assert plain.client.get("/.well-known/oauth-protected-resource").status_code == 404
    mcp = plain.client.post("/mcp/", json=INITIALIZE, headers=MCP_HEADERS)
    rest = plain.client.get("/api/alice/tasks")
    for response in (mcp, rest):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="pakaura"'
        assert response.json()["detail"] == (
            "bearer token required: send Authorization: Bearer <token>"
        )


def test_a_valid_token_still_reaches_mcp(with_auth_server: Api) -> None:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {make_token('alice')}"}
    response = with_auth_server.client.post("/mcp/", json=INITIALIZE, headers=headers)
    assert response.status_code == 200
    assert response.json()["result"]["serverInfo"]["name"] == "pakaura-tasks"
