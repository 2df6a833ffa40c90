"""Typed FastAPI dependencies, in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from src.auth import (
    MISSING_TOKEN,
    AuthError,
    TokenVerifier,
    resource_metadata_url,
    unauthorized_body,
    www_authenticate,
)
from src.config import Settings, get_settings
from src.db import session_scope

__all__ = [
    "CurrentUser",
    "OptionalUser",
    "OwnerId",
    "SessionDep",
    "SettingsDep",
    "Unauthorized",
    "unauthorized_response",
]

_bearer = HTTPBearer(
    auto_error=False,
    description="JWT: HS256 with BETTER_AUTH_SECRET, or EdDSA/ES256/RS256 from AUTH_JWKS_URL",
)

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(session_scope)]


class Unauthorized(Exception):
    """401 with the body and `WWW-Authenticate` header MCP answers too (see src.auth)."""

    def __init__(self, detail: str | None) -> None:
        super().__init__(detail or MISSING_TOKEN)
        self.detail = detail  # None: no token was sent


def unauthorized_response(request: Request, exc: Unauthorized) -> JSONResponse:
    settings: Settings = request.app.state.settings
    metadata = resource_metadata_url(settings, str(request.base_url))
    return JSONResponse(
        unauthorized_body(str(exc)),
        status_code=status.HTTP_401_UNAUTHORIZED,
        headers={"WWW-Authenticate": www_authenticate(exc.detail, metadata)},
    )


def _verify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized(None)
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        return verifier.verify(credentials.credentials)
    except AuthError as exc:
        raise Unauthorized(str(exc)) from None


# Sync on purpose: FastAPI runs it in a worker thread, and a key-set refresh blocks.
def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    return _verify(request, credentials)


def optional_user(request: Request) -> str | None:
    """The caller when a valid token came along, else None (no 401).

    Reads the header itself: through `HTTPBearer` the route would be documented as secured,
    and it is not (the probes answer everyone).
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    verifier: TokenVerifier = request.app.state.token_verifier
    try:
        return verifier.verify(token.strip())
    except AuthError:
        return None


CurrentUser = Annotated[str, Depends(current_user)]
OptionalUser = Annotated[str | None, Depends(optional_user)]


def owner_id(user_id: Annotated[str, Path(min_length=1, max_length=255)], user: CurrentUser) -> str:
    """The `{user_id}` of the path, which must be the token's user."""
    if user_id != user:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="not your tasks")
    return user_id


OwnerId = Annotated[str, Depends(owner_id)]
