"""Settings from the environment (and `.env`), read once through `get_settings()`.

T-013: the Dapr settings (`DAPR_ENABLED`, `DAPR_HTTP_PORT`, `DAPR_PUBSUB_NAME`,
`DAPR_PUBLISH_TIMEOUT`, ...) live here beside the rest of contract §4.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import stat
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
    "dev_secret_path",
    "get_settings",
    "load_auth_secret",
    "normalize_database_url",
]

# Under the per-user config directory ($XDG_CONFIG_HOME, else ~/.config), so that
# `pakaura serve` and `pakaura token` find the same local secret from any working directory.
DEV_SECRET_FILE = "pakaura/dev-secret"
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

    # The API runs the relay (issue 8); `pakaura relay` runs it alone.
    relay_enabled: bool = True
    # Where the API runs it (issue 15, T-016): "process" a child process at lower CPU priority,
    # "inline" the API's own event loop; "auto" is "process" on PostgreSQL, "inline" on SQLite.
    relay_mode: Literal["auto", "process", "inline"] = "auto"
    # The child relay's CPU priority: "idle" (SCHED_IDLE on Linux, else nice 19) runs it only
    # on CPU that requests leave idle, "low" is nice 19, "normal" the API's own.
    relay_priority: Literal["idle", "low", "normal"] = "idle"
    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0, le=300)
    # The shortest adaptive-batching window of the relay, in seconds (docs/relay.md, T-016).
    relay_linger: float = Field(default=0.003, ge=0, le=1)
    relay_max_backoff: float = Field(default=30.0, gt=0, le=3600)
    relay_drain_timeout: float = Field(default=5.0, ge=0, le=300)

    better_auth_secret: SecretStr | None = None
    jwt_leeway_seconds: int = Field(default=0, ge=0, le=300)
    # When set, tokens must carry this `iss` / `aud` (Better Auth: its BASE_URL for both).
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Public keys of the auth server for EdDSA / ES256 / RS256 tokens (Better Auth's JWT
    # plugin: https://auth.example.com/api/auth/jwks); read at start-up, then cached.
    auth_jwks_url: str | None = None
    auth_jwks_timeout: float = Field(default=5.0, gt=0, le=60)
    auth_jwks_cache_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # The OAuth authorization server MCP clients log in with (RFC 9728 metadata); unset: the
    # 401 just says a bearer token is required.
    auth_server_url: str | None = None
    # The API's external base URL (https://api.example.com), the resource identifier in that
    # metadata; unset: taken from each request's Host.
    public_url: str | None = None
    # Where the generated local secret lives (default $XDG_CONFIG_HOME/pakaura/dev-secret).
    dev_secret_file: Path | None = None

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

    @field_validator(
        "jwt_issuer",
        "jwt_audience",
        "auth_jwks_url",
        "auth_server_url",
        "public_url",
        "dev_secret_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("auth_jwks_url", "auth_server_url", "public_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

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
    def relay_in_child(self) -> bool:
        """Whether the API runs its relay in a child process (RELAY_MODE, issue 15)."""
        return self.relay_mode == "process" or (self.relay_mode == "auto" and not self.is_sqlite)

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


def load_auth_secret(settings: Settings, *, local_secret: bool = True) -> str | None:
    """The HS256 secret: `BETTER_AUTH_SECRET`, else (local use only) a generated one.

    None when only `AUTH_JWKS_URL` is set (asymmetric tokens only). The generated secret is
    refused in production and, with `local_secret=False` (`pakaura serve` on a non-loopback
    address, an app built by a factory), the process must not start: fail closed.
    """
    if settings.better_auth_secret is not None:
        return settings.better_auth_secret.get_secret_value()
    if settings.auth_jwks_url is not None:
        return None
    if settings.app_env == "production":
        raise SettingsError(
            "BETTER_AUTH_SECRET is not set: production needs the secret shared with the auth "
            "server (at least 32 bytes) or AUTH_JWKS_URL"
        )
    if not local_secret:
        raise SettingsError(
            "BETTER_AUTH_SECRET is not set: serving on a non-loopback address needs the secret "
            "shared with the auth server (or AUTH_JWKS_URL); a local secret is generated only "
            "for --host 127.0.0.1 / localhost"
        )
    return _local_secret(dev_secret_path(settings))


def dev_secret_path(settings: Settings) -> Path:
    """`DEV_SECRET_FILE` setting, else `$XDG_CONFIG_HOME/pakaura/dev-secret` (~/.config)."""
    if settings.dev_secret_file is not None:
        return settings.dev_secret_file.expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / DEV_SECRET_FILE


def _local_secret(path: Path) -> str:
    """Reads the local secret file, creating it first if missing.

    Created exclusively (mode 0600, written under a temporary name and hard-linked into place,
    so no reader ever sees a half-written file and two processes starting at once agree on
    the one that was linked first); never opened through a symlink; refused when another user
    owns it or others may read it.
    """
    for _ in range(3):
        try:
            return _read_private(path)
        except FileNotFoundError:
            pass
        try:
            _create_exclusively(path)
        except FileExistsError:
            continue  # another process created it meanwhile: read theirs
    return _read_private(path)


def _refuse(path: Path, problem: str) -> SettingsError:
    return SettingsError(
        f"local secret file {path} {problem}; set BETTER_AUTH_SECRET or DEV_SECRET_FILE"
    )


def _read_private(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(path, "is a symbolic link (refused)") from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise _refuse(path, f"cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "is not a regular file")
        if info.st_uid != os.geteuid():
            raise _refuse(path, "belongs to another user (refused)")
        if info.st_mode & 0o077:
            mode = oct(stat.S_IMODE(info.st_mode))
            raise _refuse(path, f"is readable by others (mode {mode}; chmod 600 it)")
        secret = os.read(fd, 4096).decode("utf-8", errors="replace").strip()
    finally:
        os.close(fd)
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise _refuse(path, f"holds fewer than {MIN_SECRET_BYTES} bytes (delete it)")
    return secret


def _create_exclusively(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never follows or replaces an existing name (a planted symlink included).
        os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
