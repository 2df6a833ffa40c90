"""Bearer-token authentication of the MCP HTTP transport: the REST token, the REST rules.

The SDK's bearer middleware calls `JWTTokenVerifier.verify_token` on every HTTP request; a
missing or refused token gets 401 before any MCP message is read. Tools then learn the caller
from `token_subject()` (the JWT `sub`), never from their arguments.
"""

from __future__ import annotations

from loguru import logger
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken

from src.auth import AuthError, decode_token

__all__ = ["JWTTokenVerifier", "token_subject"]

# The principal's client id: the SDK binds an HTTP session to (client_id, issuer, subject),
# so a session opened by one user cannot be continued with another user's token.
_CLIENT_ID = "pakaura-bearer"


class JWTTokenVerifier:
    """`mcp.server.auth.provider.TokenVerifier` over `src.auth.decode_token` (HS256, exp, sub)."""

    def __init__(self, secret: str, *, leeway: int = 0) -> None:
        self._secret = secret
        self._leeway = leeway

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            user = decode_token(token, self._secret, leeway=self._leeway)
        except AuthError as exc:
            # The reason only (expired, bad signature, ...), never the token.
            logger.bind(reason=str(exc)).info("mcp bearer token refused")
            return None
        # expires_at stays unset: decode_token checked `exp` with the configured leeway and
        # the SDK would re-check it without. Each HTTP request is verified again anyway.
        return AccessToken(token=token, client_id=_CLIENT_ID, scopes=[], subject=user)


def token_subject() -> str | None:
    """The user of the HTTP request being served (the verified token's subject)."""
    access = get_access_token()
    return access.subject if access is not None else None
