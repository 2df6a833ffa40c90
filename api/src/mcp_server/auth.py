"""Bearer-token authentication of the MCP HTTP transport: the REST token, the REST rules.

`BearerGuard` wraps the MCP HTTP app: every request needs a token that `src.auth.TokenVerifier`
accepts, else it gets the REST 401 (same body, same `WWW-Authenticate`, with
`resource_metadata` naming the RFC 9728 document when an authorization server is configured,
so a client such as the MCP Inspector can discover where to log in). An accepted token becomes
the SDK's `AuthenticatedUser` and access-token context (`AuthContextMiddleware`), so tools
learn the caller from `token_subject()` (the JWT `sub`), never from their arguments, and the
SDK binds a session to its principal.
"""

from __future__ import annotations

import json

import anyio.to_thread
from loguru import logger
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware, get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from src.auth import (
    MISSING_TOKEN,
    AuthError,
    TokenVerifier,
    resource_metadata_url,
    unauthorized_body,
    www_authenticate,
)
from src.config import Settings

__all__ = ["BearerGuard", "JWTTokenVerifier", "token_subject"]

# The principal's client id: the SDK binds an HTTP session to (client_id, issuer, subject),
# so a session opened by one user cannot be continued with another user's token.
_CLIENT_ID = "pakaura-bearer"


class JWTTokenVerifier:
    """`mcp.server.auth.provider.TokenVerifier` over `src.auth.TokenVerifier`.

    Takes an HS256 secret (as before) or a configured `TokenVerifier`.
    """

    def __init__(self, secret: str | TokenVerifier, *, leeway: int = 0) -> None:
        self._verifier = (
            secret
            if isinstance(secret, TokenVerifier)
            else TokenVerifier(secret=secret, leeway=leeway)
        )

    async def check(self, token: str) -> AccessToken:
        """The access token, or `AuthError` with the reason."""
        # A thread: a JWKS refresh is a blocking HTTP call.
        user = await anyio.to_thread.run_sync(self._verifier.verify, token)
        # expires_at stays unset: `exp` was checked with the configured leeway and the SDK
        # would re-check it without. Each HTTP request is verified again anyway.
        return AccessToken(token=token, client_id=_CLIENT_ID, scopes=[], subject=user)

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            return await self.check(token)
        except AuthError as exc:
            # The reason only (expired, bad signature, ...), never the token.
            logger.bind(reason=str(exc)).info("mcp bearer token refused")
            return None


class BearerGuard:
    """ASGI middleware: 401 unless the request carries a valid bearer token."""

    def __init__(self, app: ASGIApp, verifier: JWTTokenVerifier, settings: Settings) -> None:
        self._app = AuthContextMiddleware(app)
        self._verifier = verifier
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refuse(scope, send, None)
            return
        try:
            access = await self._verifier.check(token.strip())
        except AuthError as exc:
            logger.bind(reason=str(exc)).info("mcp bearer token refused")
            await self._refuse(scope, send, str(exc))
            return
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials(access.scopes)
        await self._app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, detail: str | None) -> None:
        metadata = resource_metadata_url(self._settings, _base_url(scope))
        body = json.dumps(unauthorized_body(detail or MISSING_TOKEN)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", www_authenticate(detail, metadata).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _base_url(scope: Scope) -> str:
    """The app's base URL as the client sees it (before the `/mcp` mount)."""
    host = Headers(scope=scope).get("host") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}"


def token_subject() -> str | None:
    """The user of the HTTP request being served (the verified token's subject)."""
    access = get_access_token()
    return access.subject if access is not None else None
