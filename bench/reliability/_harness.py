"""A running stack for the harness: emulated Dapr sidecar + API subprocess(es) + database."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import sqlalchemy as sa

from bench.reliability._process import ApiProcess, random_secret
from tests.support.dapr_emulator import DaprEmulator
from tests.support.databases import ADMIN_URL

__all__ = ["Stack", "api_stack", "make_token"]


def make_token(
    secret: str,
    claims: Mapping[str, Any] | None = None,
    *,
    user: str | None = "alice",
    ttl: timedelta = timedelta(hours=1),
    algorithm: str = "HS256",
) -> str:
    """A JWT like the auth server's (sub, iat, exp), with `claims` merged over it."""
    now = datetime.now(UTC)
    payload: dict[str, Any] = {"iat": now, "exp": now + ttl}
    if user is not None:
        payload["sub"] = user
    payload.update(claims or {})
    return jwt.encode(payload, secret, algorithm=algorithm)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A uniquely named PostgreSQL database, dropped afterwards. Unlike the test suite's
    helper it keeps no pooled admin connection, so a PostgreSQL restart during the run does
    not break the clean-up."""
    name = f"pakaura_reliability_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def admin(statement: str) -> None:
        engine = sa.create_engine(
            ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(statement))
        finally:
            engine.dispose()

    admin(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        deadline = time.monotonic() + 60
        while True:  # the server may still be coming back from a restart
            try:
                admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@dataclass
class Stack:
    """What `api_stack` started; `apis[0]` is the first replica."""

    apis: list[ApiProcess]
    emulator: DaprEmulator
    secret: str
    dapr_token: str
    database_url: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def api(self) -> ApiProcess:
        return self.apis[0]

    def token(self, user: str, **kwargs: Any) -> str:
        return make_token(self.secret, user=user, **kwargs)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def log_text(self) -> str:
        return "\n".join(api.log_text() for api in self.apis)

    def secrets(self) -> dict[str, str]:
        return {"BETTER_AUTH_SECRET": self.secret, "DAPR_API_TOKEN": self.dapr_token}


@contextlib.contextmanager
def api_stack(
    workdir: Path,
    *,
    database_url: str | None = None,
    replicas: int = 1,
    dapr_enabled: bool = True,
    relay_enabled: bool = True,
    log_level: str = "INFO",
    extra_env: Mapping[str, str] | None = None,
    start: bool = True,
) -> Iterator[Stack]:
    """Emulator, then `replicas` API processes on one database (a scratch PostgreSQL one
    unless `database_url` is given). Everything is stopped on exit, also on failure."""
    with contextlib.ExitStack() as stack:
        if database_url is None:
            database_url = stack.enter_context(scratch_database())
        secret, dapr_token = random_secret(48), random_secret(40)
        emulator = stack.enter_context(DaprEmulator(pubsubs={"pubsub-kafka"}, token=dapr_token))
        env = {
            "DATABASE_URL": database_url,
            "APP_ENV": "test",
            "BETTER_AUTH_SECRET": secret,
            "DAPR_ENABLED": "true" if dapr_enabled else "false",
            "DAPR_HTTP_PORT": str(emulator.port),
            "DAPR_API_TOKEN": dapr_token,
            "DAPR_PUBLISH_TIMEOUT": "1.0",
            "RELAY_ENABLED": "true" if relay_enabled else "false",
            "RELAY_POLL_INTERVAL": "0.2",
            "RELAY_MAX_BACKOFF": "1.0",
            "LOG_LEVEL": log_level,
            "LOG_FORMAT": "json",
            **(extra_env or {}),
        }
        apis = [
            ApiProcess(env, workdir=workdir / f"api{i}", name=f"api{i}") for i in range(replicas)
        ]
        for api in apis:
            stack.callback(api.stop)
        if start:
            # The first replica creates the tables; the others then start on a ready schema.
            for api in apis:
                api.start()
        yield Stack(apis, emulator, secret, dapr_token, database_url, workdir, env)
