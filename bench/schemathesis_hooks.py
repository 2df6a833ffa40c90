"""schemathesis hooks for the contract run (`SCHEMATHESIS_HOOKS=bench.schemathesis_hooks`).

Every case carries a valid token *for the user in its path*, so positive cases reach the real
logic for whatever `user_id` schemathesis generates (instead of fixing one user, which its
coverage phase mislabels), and the 403 of another user's path stays reachable through the
stateful phase's links. The secret comes from `PAKAURA_FUZZ_SECRET`, as the API under test
was started with it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import schemathesis

FALLBACK_USER = "fuzzer"


def token_for(user: str, secret: str) -> str:
    now = datetime.now(UTC)
    return jwt.encode(
        {"sub": user, "iat": now, "exp": now + timedelta(hours=2)}, secret, algorithm="HS256"
    )


@schemathesis.auth(refresh_interval=None)
class PathUserToken:
    def get(self, case: Any, ctx: Any) -> str:
        return os.environ["PAKAURA_FUZZ_SECRET"]

    def set(self, case: Any, data: str, ctx: Any) -> None:
        user = (case.path_parameters or {}).get("user_id")
        if not isinstance(user, str) or not user:
            user = FALLBACK_USER
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token_for(user, data)}"}
