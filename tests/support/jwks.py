"""A JWKS endpoint on loopback with Ed25519, P-256 and RSA keys, counting its fetches."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = ["ALGORITHMS", "JwksServer", "jwks_server", "new_key"]

ALGORITHMS = ("EdDSA", "ES256", "RS256")


def new_key(alg: str) -> Any:
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(alg: str, private: Any, kid: str) -> dict[str, Any]:
    codec = {"EdDSA": OKPAlgorithm, "ES256": ECAlgorithm, "RS256": RSAAlgorithm}[alg]
    jwk: dict[str, Any] = codec.to_jwk(private.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig"}


@dataclass
class JwksServer:
    url: str
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # kid -> (alg, private)
    published: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def add(self, alg: str, kid: str | None = None) -> str:
        kid = kid or f"{alg.lower()}-{len(self.keys)}"
        private = new_key(alg)
        self.keys[kid] = (alg, private)
        self.published.append(public_jwk(alg, private, kid))
        return kid

    def token(
        self,
        kid: str,
        user: str = "alice",
        *,
        alg: str | None = None,
        expires_in: timedelta = timedelta(hours=1),
        **claims: Any,
    ) -> str:
        key_alg, private = self.keys[kid]
        now = datetime.now(UTC)
        payload = {"sub": user, "iat": now, "exp": now + expires_in, **claims}
        return jwt.encode(payload, private, algorithm=alg or key_alg, headers={"kid": kid})


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    """Serves `server.published` at `server.url`, one key of each type to start with."""
    state: JwksServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.fetches += 1
            body = json.dumps({"keys": state.published}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = JwksServer(url=f"http://127.0.0.1:{httpd.server_address[1]}/api/auth/jwks")
    for alg in ALGORITHMS:
        state.add(alg, kid=alg.lower())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
