"""Typed FastAPI dependencies, in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from src.auth import AuthError, decode_token
from src.config import Settings, get_settings
from src.db import session_scope

__all__ = ["CurrentUser", "OwnerId", "SessionDep", "SettingsDep"]

_bearer = HTTPBearer(auto_error=False, description="JWT signed with BETTER_AUTH_SECRET")

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(session_scope)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer token")
    secret: str = request.app.state.auth_secret
    try:
        return decode_token(
            credentials.credentials, secret, leeway=get_settings().jwt_leeway_seconds
        )
    except AuthError as exc:
        raise _unauthorized(str(exc)) from None


CurrentUser = Annotated[str, Depends(current_user)]


def owner_id(user_id: Annotated[str, Path(min_length=1, max_length=255)], user: CurrentUser) -> str:
    """The `{user_id}` of the path, which must be the token's user."""
    if user_id != user:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="not your tasks")
    return user_id


OwnerId = Annotated[str, Depends(owner_id)]
