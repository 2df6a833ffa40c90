"""Bearer JWTs: HS256 with `BETTER_AUTH_SECRET`, `exp` required, `sub` = the user id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

__all__ = ["ALGORITHM", "AuthError", "decode_token", "issue_token"]

ALGORITHM = "HS256"


class AuthError(Exception):
    """The token is missing, malformed, expired, wrongly signed or lacks a claim."""


def issue_token(user_id: str, secret: str, *, ttl: timedelta = timedelta(hours=12)) -> str:
    now = datetime.now(UTC)
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl}, secret, algorithm=ALGORITHM)


def decode_token(token: str, secret: str, *, leeway: int = 0) -> str:
    """Returns the user id. Only HS256 is accepted (no `none`, no algorithm confusion)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub"]},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise AuthError("invalid token: empty subject")
    if "\x00" in subject:  # no database text column (PostgreSQL) can hold it as a user id
        raise AuthError("invalid token: subject contains NUL")
    return subject
