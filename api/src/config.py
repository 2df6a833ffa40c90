"""Settings from the environment (and `.env`), read once through `get_settings()`.

T-013: the Dapr settings (`DAPR_ENABLED`, `DAPR_HTTP_PORT`, `DAPR_PUBSUB_NAME`,
`DAPR_PUBLISH_TIMEOUT`, ...) live here beside the rest of contract §4.
"""

from __future__ import annotations

import os
import re
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

__all__ = [
    "DEV_SECRET_FILE",
    "Settings",
    "SettingsError",
    "get_settings",
    "load_auth_secret",
    "normalize_database_url",
]

DEV_SECRET_FILE = ".pakaura-dev-secret"
MIN_SECRET_BYTES = 32


class SettingsError(RuntimeError):
    """A setting is missing or invalid; the message names it and says what to do."""


DATABASE_URL_FORMS = (
    "sqlite:///path/to/file.db, "
    "postgresql+psycopg://user:password@host:5432/dbname "
    "(postgres:// and postgresql:// are read as postgresql+psycopg://)"
)
# Drivers that are installed with the project. `postgres://` (Heroku, many PaaS) and a bare
# `postgresql://` would otherwise pick the psycopg2 driver, which is not installed.
_POSTGRES_ALIASES = {"postgres", "postgresql", "postgresql+psycopg"}
_SQLITE_DRIVERS = {"sqlite", "sqlite+pysqlite"}


def normalize_database_url(url: str) -> str:
    """`url` with its driver made explicit, or ValueError naming the forms that work.

    The message never repeats the URL: it may carry a password.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        raise ValueError(f"not a database URL; the forms that work: {DATABASE_URL_FORMS}") from None
    driver = parsed.drivername.lower()
    if driver in _SQLITE_DRIVERS:
        return url.strip()
    if driver in _POSTGRES_ALIASES:
        fixed = parsed.set(drivername="postgresql+psycopg")
        return fixed.render_as_string(hide_password=False)
    raise ValueError(
        f"unsupported database or driver {driver!r}; the forms that work: {DATABASE_URL_FORMS}"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # "development" allows the generated local secret; "production" refuses to start without
    # BETTER_AUTH_SECRET. Chart and Dockerfile set production.
    app_env: Literal["development", "test", "production"] = "development"

    database_url: str = "sqlite:///./pakaura.db"
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # Creates missing tables at start-up (the quick start); production runs `pakaura db upgrade`.
    database_create_tables: bool = True

    dapr_enabled: bool = False
    dapr_host: str = "127.0.0.1"
    dapr_http_port: int = Field(default=3500, ge=1, le=65535)
    dapr_pubsub_name: str = Field(default="pubsub-kafka", min_length=1)
    dapr_publish_timeout: float = Field(default=2.0, gt=0, le=60)
    dapr_api_token: SecretStr | None = None
    # "auto": bulk publish, falling back to single publish if the sidecar lacks it.
    dapr_bulk_publish: Literal["auto", "always", "never"] = "auto"

    events_source: str = Field(default="pakaura-api", min_length=1)
    topic_task_events: str = Field(default="task-events", min_length=1)
    topic_task_updates: str = Field(default="task-updates", min_length=1)
    topic_reminders: str = Field(default="reminders", min_length=1)

    # In-process relay (issue 8); `pakaura relay` runs it alone.
    relay_enabled: bool = True
    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0, le=300)
    # The shortest adaptive-batching window of the relay, in seconds (docs/relay.md, T-016).
    relay_linger: float = Field(default=0.003, ge=0, le=1)
    relay_max_backoff: float = Field(default=30.0, gt=0, le=3600)
    relay_drain_timeout: float = Field(default=5.0, ge=0, le=300)

    better_auth_secret: SecretStr | None = None
    jwt_leeway_seconds: int = Field(default=0, ge=0, le=300)

    mcp_allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1:*", "localhost:*", "testserver", "[::1]:*"]
    )

    log_level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # "auto": console lines on a terminal, JSON lines otherwise (containers, CI).
    log_format: Literal["auto", "json", "console"] = "auto"
    # SQL echo goes through loguru at DEBUG when true.
    log_sql: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("better_auth_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes for HS256")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def dapr_base_url(self) -> str:
        return f"http://{self.dapr_host}:{self.dapr_http_port}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper() or "settings"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {message}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings. Tests call `get_settings.cache_clear()` after changing env."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(
            f"invalid setting {_describe(exc)} (fix the environment variable or .env)"
        ) from None
    except SourceError as exc:
        # A list setting that is not JSON fails while being read, before validation.
        match = re.search(r'field "(\w+)"', str(exc))
        name = match.group(1).upper() if match else "settings"
        raise SettingsError(
            f'invalid setting {name}: not valid JSON (a list is written ["a", "b"]) '
            "(fix the environment variable or .env)"
        ) from None


def load_auth_secret(settings: Settings) -> str:
    """The JWT secret: `BETTER_AUTH_SECRET`, or outside production a generated local one.

    The local secret lives in `.pakaura-dev-secret` (mode 0600) in the working directory, so
    `pakaura serve` and `pakaura token` agree without anyone choosing a secret. Production has
    no built-in secret: it refuses to start.
    """
    if settings.better_auth_secret is not None:
        return settings.better_auth_secret.get_secret_value()
    if settings.app_env == "production":
        raise SettingsError(
            "BETTER_AUTH_SECRET is not set: production needs the secret shared with the auth "
            "server (at least 32 bytes)"
        )
    path = Path(DEV_SECRET_FILE)
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if len(secret.encode()) >= MIN_SECRET_BYTES:
            return secret
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    return secret
