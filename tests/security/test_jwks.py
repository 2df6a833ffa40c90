"""Tokens as an auth server issues them: JWKS (EdDSA, ES256, RS256), iss / aud, and the
attacks on the algorithm choice, on REST and on MCP over HTTP.

The JWKS is served from loopback (tests/support/jwks.py); no other network is used.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from src.auth import AuthError, TokenVerifier
from src.config import SettingsError
from src.main import create_app

from tests.support.app import TEST_SECRET, Api, make_client, make_token
from tests.support.jwks import ALGORITHMS, JwksServer, jwks_server
from tests.support.mcp_requests import INITIALIZE, MCP_HEADERS

ISSUER = "https://auth.example.test"
AUDIENCE = "https://api.example.test"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _hs256_with(key: bytes, kid: str | None = None) -> str:
    """An HS256 token keyed with `key` (PyJWT refuses to build one with a PEM key)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    claims = {"sub": "alice", "exp": exp, "iss": ISSUER, "aud": AUDIENCE}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _public_pem(jwks: JwksServer, kid: str) -> bytes:
    _, private = jwks.keys[kid]
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _alg_none(jwks: JwksServer, kid: str) -> str:
    valid = jwks.token(kid, iss=ISSUER, aud=AUDIENCE)
    _, payload, _ = valid.split(".")
    return f"{_b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{payload}."


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    with jwks_server() as server:
        yield server


def _verifier(jwks: JwksServer, **kwargs: Any) -> TokenVerifier:
    verifier = TokenVerifier(jwks_url=jwks.url, issuer=ISSUER, audience=AUDIENCE, **kwargs)
    verifier.check_jwks()
    return verifier


# --- The verifier --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_asymmetric_tokens_from_the_key_set_are_accepted(jwks: JwksServer, alg: str) -> None:
    verifier = _verifier(jwks)
    assert verifier.verify(jwks.token(alg.lower(), iss=ISSUER, aud=AUDIENCE)) == "alice"


def test_the_key_set_is_cached(jwks: JwksServer) -> None:
    verifier = _verifier(jwks)
    for alg in ALGORITHMS * 3:
        verifier.verify(jwks.token(alg.lower(), iss=ISSUER, aud=AUDIENCE))
    assert jwks.fetches == 1  # the start-up check only


def test_an_unknown_kid_refreshes_once_then_is_refused(jwks: JwksServer) -> None:
    verifier = _verifier(jwks, jwks_refresh_cooldown=0)
    stranger = JwksServer(url="")
    stranger.add("EdDSA", kid="not-published")
    with pytest.raises(AuthError, match="unknown kid"):
        verifier.verify(stranger.token("not-published", iss=ISSUER, aud=AUDIENCE))
    assert jwks.fetches == 2  # start-up + exactly one refresh


def test_a_rotated_in_key_is_found_by_the_refresh(jwks: JwksServer) -> None:
    verifier = _verifier(jwks, jwks_refresh_cooldown=0)
    kid = jwks.add("EdDSA", kid="rotated")
    assert verifier.verify(jwks.token(kid, iss=ISSUER, aud=AUDIENCE)) == "alice"
    assert jwks.fetches == 2


def test_unknown_kids_cannot_make_it_hammer_the_auth_server(jwks: JwksServer) -> None:
    verifier = _verifier(jwks)  # default cooldown
    stranger = JwksServer(url="")
    stranger.add("EdDSA", kid="made-up")
    for _ in range(20):
        with pytest.raises(AuthError):
            verifier.verify(stranger.token("made-up", iss=ISSUER, aud=AUDIENCE))
    assert jwks.fetches == 1


def _attacks(jwks: JwksServer) -> dict[str, str]:
    rsa_pem = _public_pem(jwks, "rs256")
    ec_pem = _public_pem(jwks, "es256")
    forged = JwksServer(url="")
    forged.add("RS256", kid="rs256")  # the published kid, another key
    return {
        "HS256 keyed with the RSA public key PEM": _hs256_with(rsa_pem, "rs256"),
        "HS256 keyed with the EC public key PEM": _hs256_with(ec_pem, "es256"),
        "HS256 keyed with the RSA PEM, no kid": _hs256_with(rsa_pem),
        "alg none": _alg_none(jwks, "eddsa"),
        "ES256 token pointing at the RSA key": _swap_kid(
            jwks.token("es256", iss=ISSUER, aud=AUDIENCE), "rs256"
        ),
        "RS256 signed by another key with a published kid": forged.token(
            "rs256", iss=ISSUER, aud=AUDIENCE
        ),
        "no kid": jwt.encode(
            {"sub": "alice", "exp": datetime.now(UTC) + timedelta(hours=1)},
            jwks.keys["eddsa"][1],
            algorithm="EdDSA",
        ),
        "RS512 with the published RSA key": jwks.token(
            "rs256", alg="RS512", iss=ISSUER, aud=AUDIENCE
        ),
        "wrong issuer": jwks.token("eddsa", iss="https://evil.example", aud=AUDIENCE),
        "no issuer": jwks.token("eddsa", aud=AUDIENCE),
        "wrong audience": jwks.token("eddsa", iss=ISSUER, aud="https://other.example"),
        "no audience": jwks.token("eddsa", iss=ISSUER),
        "expired": jwks.token("eddsa", iss=ISSUER, aud=AUDIENCE, expires_in=-timedelta(minutes=1)),
    }


def _swap_kid(token: str, kid: str) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    return f"{_b64(json.dumps({**decoded, 'kid': kid}).encode())}.{payload}.{signature}"


@pytest.mark.parametrize("with_secret", [False, True])
def test_algorithm_and_claim_attacks_are_refused(jwks: JwksServer, with_secret: bool) -> None:
    verifier = _verifier(jwks, secret=TEST_SECRET if with_secret else None)
    for name, token in _attacks(jwks).items():
        with pytest.raises(AuthError):
            verifier.verify(token)
            pytest.fail(f"accepted: {name}")


def test_hs256_needs_iss_and_aud_too_when_configured() -> None:
    verifier = TokenVerifier(secret=TEST_SECRET, issuer=ISSUER, audience=AUDIENCE)
    assert verifier.verify(make_token("alice", iss=ISSUER, aud=AUDIENCE)) == "alice"
    for claims in ({}, {"iss": ISSUER}, {"aud": AUDIENCE}, {"iss": ISSUER, "aud": "x"}):
        with pytest.raises(AuthError):
            verifier.verify(make_token("alice", **claims))


def test_without_jwt_audience_an_aud_claim_is_not_checked() -> None:
    verifier = TokenVerifier(secret=TEST_SECRET)
    assert verifier.verify(make_token("alice", aud="https://anything.example")) == "alice"


# --- Start-up -------------------------------------------------------------------------------


def test_an_unreachable_jwks_stops_the_start_up_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("AUTH_JWKS_URL", "http://127.0.0.1:9/api/auth/jwks")
    monkeypatch.setenv("AUTH_JWKS_TIMEOUT", "2")
    from src.config import get_settings

    get_settings.cache_clear()
    with pytest.raises(SettingsError) as caught:
        create_app(local_secret=True)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("AUTH_JWKS_URL: cannot read the key set at http://127.0.0.1:9/")


def test_the_cli_says_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from src.cli import main

    os.environ["AUTH_JWKS_URL"] = "http://127.0.0.1:9/jwks"
    try:
        from src.config import get_settings

        get_settings.cache_clear()
        assert main(["serve", "--port", "1"]) == 2
    finally:
        del os.environ["AUTH_JWKS_URL"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "AUTH_JWKS_URL" in err[0]


# --- REST and MCP over HTTP -------------------------------------------------------------------


@pytest.fixture
def jwks_api(jwks: JwksServer, sqlite_url: str) -> Iterator[Api]:
    env = {"AUTH_JWKS_URL": jwks.url, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE}
    with make_client(sqlite_url, **env) as api:  # BETTER_AUTH_SECRET set as well
        yield api


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_rest_and_mcp_accept_key_set_tokens(jwks: JwksServer, jwks_api: Api, alg: str) -> None:
    headers = _bearer(jwks.token(alg.lower(), iss=ISSUER, aud=AUDIENCE))
    assert jwks_api.client.get("/api/alice/tasks", headers=headers).status_code == 200
    mcp = jwks_api.client.post("/mcp/", json=INITIALIZE, headers={**MCP_HEADERS, **headers})
    assert mcp.status_code == 200


def test_rest_and_mcp_refuse_every_attack_alike(jwks: JwksServer, jwks_api: Api) -> None:
    attacks = _attacks(jwks)
    attacks["HS256 without iss/aud"] = make_token("alice")
    for name, token in attacks.items():
        rest = jwks_api.client.get("/api/alice/tasks", headers=_bearer(token))
        mcp = jwks_api.client.post(
            "/mcp/", json=INITIALIZE, headers={**MCP_HEADERS, **_bearer(token)}
        )
        assert rest.status_code == mcp.status_code == 401, name
        assert rest.json() == mcp.json(), name  # one body shape
        assert rest.json()["error"] == "invalid_token"
        assert rest.headers["www-authenticate"] == mcp.headers["www-authenticate"], name
    # The local secret still works once it carries the configured iss and aud.
    good = make_token("alice", iss=ISSUER, aud=AUDIENCE)
    assert jwks_api.client.get("/api/alice/tasks", headers=_bearer(good)).status_code == 200


def test_jwks_only_refuses_hs256_even_with_the_right_claims(
    jwks: JwksServer, sqlite_url: str
) -> None:
    env = {"AUTH_JWKS_URL": jwks.url, "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": AUDIENCE}
    with make_client(sqlite_url, secret=None, **env) as api:
        hs = make_token("alice", iss=ISSUER, aud=AUDIENCE)
        assert api.client.get("/api/alice/tasks", headers=_bearer(hs)).status_code == 401
        ok = jwks.token("eddsa", iss=ISSUER, aud=AUDIENCE)
        assert api.client.get("/api/alice/tasks", headers=_bearer(ok)).status_code == 200


def test_an_auth_server_outage_keeps_known_keys_working() -> None:
    """The cached set expires while the JWKS endpoint is down: keys seen before still verify,
    unknown ones are refused."""
    import time

    with jwks_server() as server:
        verifier = _verifier(server, jwks_cache_seconds=0.2, jwks_refresh_cooldown=0)
        assert verifier.verify(server.token("eddsa", iss=ISSUER, aud=AUDIENCE)) == "alice"
        valid_later = server.token("eddsa", iss=ISSUER, aud=AUDIENCE)
        never_used = server.token("es256", iss=ISSUER, aud=AUDIENCE)
    time.sleep(0.3)  # cache expired, endpoint gone
    assert verifier.verify(valid_later) == "alice"
    with pytest.raises(AuthError, match="unavailable"):
        verifier.verify(never_used)
