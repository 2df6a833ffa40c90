"""Bearer JWTs, checked as an auth server issues them (REST and MCP alike).

Two key sources, either or both:
- `BETTER_AUTH_SECRET` (or the generated local secret): HS256 only.
- `AUTH_JWKS_URL`: the public keys of an auth server (Better Auth's JWT plugin serves them at
  `/api/auth/jwks`), fetched and cached by PyJWT's `PyJWKClient`. Each key type allows exactly
  one algorithm: OKP/Ed25519 -> EdDSA, EC/P-256 -> ES256, RSA -> RS256.

The token header's `alg` picks the source, and only an algorithm of that source's allow-list
is accepted: `none`, HS384/HS512, an HS256 token "signed" with a public key's bytes (there is
no secret to check it with but the real one), an asymmetric token whose `kid` is not in the key
set or whose key type allows another algorithm: all are refused. `exp` and `sub` are always
required; `iss` / `aud` too once `JWT_ISSUER` / `JWT_AUDIENCE` are set.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt import PyJWK, PyJWKClient

if TYPE_CHECKING:
    from src.config import Settings

__all__ = [
    "ALGORITHM",
    "ASYMMETRIC_ALGORITHMS",
    "AuthError",
    "JWKSUnavailable",
    "TokenVerifier",
    "build_token_verifier",
    "decode_token",
    "issue_token",
    "resource_metadata_url",
    "unauthorized_body",
    "www_authenticate",
]

MISSING_TOKEN = "bearer token required: send Authorization: Bearer <token>"
METADATA_PATH = "/.well-known/oauth-protected-resource"

ALGORITHM = "HS256"
ASYMMETRIC_ALGORITHMS = ("EdDSA", "ES256", "RS256")


class AuthError(Exception):
    """The token is missing, malformed, expired, wrongly signed or lacks a claim."""


class JWKSUnavailable(RuntimeError):
    """The JWKS endpoint could not be read (start-up check)."""


def issue_token(
    user_id: str,
    secret: str,
    *,
    ttl: timedelta = timedelta(hours=12),
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def _allowed_algorithm(key: PyJWK) -> str | None:
    """The one algorithm a JWK may sign with, from its key type (never from the token)."""
    public = key.key
    if isinstance(public, ed25519.Ed25519PublicKey):
        alg = "EdDSA"
    elif isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        alg = "ES256"
    elif isinstance(public, rsa.RSAPublicKey):
        alg = "RS256"
    else:  # private or symmetric keys published by mistake, other curves
        return None
    # A JWK that declares its own `alg` (PyJWK takes it) must declare that one.
    return alg if key.algorithm_name == alg else None


def _subject(claims: dict[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.strip():
        raise AuthError("invalid token: empty subject")
    if "\x00" in subject:  # no database text column (PostgreSQL) can hold it as a user id
        raise AuthError("invalid token: subject contains NUL")
    return subject


class TokenVerifier:
    """Verifies bearer tokens for REST and MCP; `verify` returns the user id (`sub`).

    Blocking (a key-set refresh is an HTTP call): call it from a worker thread.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: int = 0,
        jwks_timeout: float = 5.0,
        jwks_cache_seconds: float = 300.0,
        jwks_refresh_cooldown: float = 30.0,
    ) -> None:
        if secret is None and jwks_url is None:
            raise ValueError("a secret or a JWKS URL is needed")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._jwks: PyJWKClient | None = None
        self._known_keys: dict[str, PyJWK] = {}
        if jwks_url is not None:
            self._jwks = PyJWKClient(
                jwks_url,
                cache_jwk_set=True,
                lifespan=jwks_cache_seconds,
                timeout=jwks_timeout,
                # An unknown kid refreshes the set (key rotation), at most once per cooldown,
                # so a stream of made-up kids cannot make us hammer the auth server.
                cooldown_duration=jwks_refresh_cooldown,
            )

    @property
    def uses_jwks(self) -> bool:
        return self._jwks is not None

    def check_jwks(self) -> int:
        """Fetches the key set now; returns its number of usable signing keys.

        Raises `JWKSUnavailable` with a one-line reason when it cannot be read.
        """
        if self._jwks is None:
            return 0
        try:
            keys = self._jwks.get_signing_keys(refresh=True)
        except jwt.PyJWKClientError as exc:
            raise JWKSUnavailable(_one_line(exc)) from None
        except jwt.PyJWTError as exc:  # PyJWKSetError: no usable key in the answer
            raise JWKSUnavailable(f"no usable signing key ({_one_line(exc)})") from None
        usable = [k for k in keys if _allowed_algorithm(k) is not None]
        if not usable:
            raise JWKSUnavailable("no EdDSA (Ed25519), ES256 (P-256) or RS256 signing key")
        return len(usable)

    def _public_key(self, header: dict[str, Any]) -> Any:
        assert self._jwks is not None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("invalid token: no kid in the header")
        try:
            key = self._jwks.get_signing_key(kid)  # locked inside: one refresh at a time
        except jwt.PyJWKClientConnectionError:
            # The cached set expired while the auth server is unreachable: a key that verified
            # a token before still does, so its outage does not log everyone out.
            known = self._known_keys.get(kid)
            if known is None:
                raise AuthError("invalid token: the auth server's key set is unavailable") from None
            key = known
        except jwt.PyJWKClientError:
            raise AuthError("invalid token: unknown kid") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {_one_line(exc)}") from None
        if _allowed_algorithm(key) != header.get("alg"):
            raise AuthError("invalid token: algorithm not allowed for this key")
        self._known_keys[kid] = key
        return key.key

    def verify(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        alg = header.get("alg")
        key: Any
        if alg == ALGORITHM and self._secret is not None:
            key = self._secret
        elif alg in ASYMMETRIC_ALGORITHMS and self._jwks is not None:
            key = self._public_key(header)
        else:
            raise AuthError("invalid token: algorithm not allowed")
        return self._decode(token, key, [str(alg)])

    def _decode(self, token: str, key: Any, algorithms: Sequence[str]) -> str:
        required = ["exp", "sub"]
        if self._issuer is not None:
            required.append("iss")
        if self._audience is not None:
            required.append("aud")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                issuer=self._issuer,
                audience=self._audience,
                # Unset JWT_AUDIENCE: the audience is not checked (PyJWT would refuse any aud).
                options={"require": required, "verify_aud": self._audience is not None},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return _subject(claims)


def decode_token(token: str, secret: str, *, leeway: int = 0) -> str:
    """Returns the user id of an HS256 token signed with `secret` (no `none`, no confusion)."""
    return TokenVerifier(secret=secret, leeway=leeway).verify(token)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def build_token_verifier(settings: Settings, *, local_secret: bool) -> TokenVerifier:
    """The verifier of this process's settings; fails closed with a one-line `SettingsError`.

    `local_secret`: whether a generated local secret may be used (loopback `pakaura serve`).
    With `AUTH_JWKS_URL` the key set is read now, so an unreachable auth server stops the
    start-up instead of turning every request into a 401.
    """
    from src.config import SettingsError, load_auth_secret

    secret = load_auth_secret(settings, local_secret=local_secret)
    verifier = TokenVerifier(
        secret=secret,
        jwks_url=settings.auth_jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway_seconds,
        jwks_timeout=settings.auth_jwks_timeout,
        jwks_cache_seconds=settings.auth_jwks_cache_seconds,
    )
    try:
        verifier.check_jwks()
    except JWKSUnavailable as exc:
        raise SettingsError(
            f"AUTH_JWKS_URL: cannot read the key set at {settings.auth_jwks_url} ({exc}); "
            "check the URL and that the auth server is up"
        ) from None
    return verifier


def unauthorized_body(detail: str) -> dict[str, str]:
    """The one 401 body of REST and MCP: FastAPI's `detail` plus RFC 6750's error fields."""
    return {"detail": detail, "error": "invalid_token", "error_description": detail}


def resource_metadata_url(settings: Settings, base_url: str) -> str | None:
    """Where the RFC 9728 metadata is, or None when no authorization server is configured."""
    if settings.auth_server_url is None:
        return None
    return f"{(settings.public_url or base_url).rstrip('/')}{METADATA_PATH}"


def www_authenticate(detail: str | None, metadata_url: str | None) -> str:
    """`WWW-Authenticate` of a 401 (RFC 6750 section 3, MCP authorization).

    `detail` None: no token was sent, so no error code (RFC 6750 3.1).
    """
    parts = ['realm="pakaura"']
    if detail is not None:
        safe = detail.replace("\\", "").replace('"', "'")
        parts += ['error="invalid_token"', f'error_description="{safe}"']
    if metadata_url is not None:
        parts.append(f'resource_metadata="{metadata_url}"')
    return "Bearer " + ", ".join(parts)
