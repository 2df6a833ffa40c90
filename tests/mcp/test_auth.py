"""The MCP token verifier: the REST token rules (HS256, exp with leeway, sub) (T-019)."""

from __future__ import annotations

import io

import pytest
from loguru import logger
from src.mcp_server import JWTTokenVerifier

from tests.mcp.conftest import SECRET, token

pytestmark = pytest.mark.anyio


async def test_a_valid_token_yields_its_subject() -> None:
    access = await JWTTokenVerifier(SECRET).verify_token(token("alice"))
    assert access is not None
    assert access.subject == "alice"


@pytest.mark.parametrize(
    "bad",
    [
        token("alice", expires_in=-5),
        token("alice", secret="some-other-secret-some-other-secret-0123"),
        token(None),
        "not.a.jwt",
    ],
    ids=["expired", "wrong-secret", "no-subject", "garbage"],
)
async def test_refused_tokens_are_logged_without_the_token(bad: str) -> None:
    sink = io.StringIO()
    handler = logger.add(sink, level="INFO", serialize=True)
    try:
        assert await JWTTokenVerifier(SECRET).verify_token(bad) is None
    finally:
        logger.remove(handler)
    assert "mcp bearer token refused" in sink.getvalue()
    assert bad not in sink.getvalue()


async def test_the_configured_leeway_applies_to_expiry() -> None:
    late = token("alice", expires_in=-5)
    assert await JWTTokenVerifier(SECRET, leeway=0).verify_token(late) is None
    accepted = await JWTTokenVerifier(SECRET, leeway=60).verify_token(late)
    assert accepted is not None and accepted.subject == "alice"
