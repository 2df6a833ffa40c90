"""Settings (contract §4): defaults without a .env, env and .env read, invalid values named at
start-up, and the JWT secret: never built in for production, generated locally otherwise."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from src.auth import decode_token, issue_token
from src.config import (
    DEV_SECRET_FILE,
    Settings,
    SettingsError,
    dev_secret_path,
    get_settings,
    load_auth_secret,
)
from src.db import reset_engine
from src.main import create_app

GOOD_SECRET = "s" * 32


def test_defaults_match_the_contract_without_any_configuration(tmp_path: Path) -> None:
    settings = get_settings()
    database = sa.make_url(settings.database_url)
    assert database.get_backend_name() == "sqlite"
    assert database.database is not None
    assert Path(database.database).resolve().parent == tmp_path.resolve()  # working directory
    assert settings.dapr_enabled is False
    assert (settings.dapr_host, settings.dapr_http_port) == ("127.0.0.1", 3500)
    assert settings.dapr_pubsub_name == "pubsub-kafka"
    assert settings.dapr_publish_timeout == 2.0
    assert settings.dapr_api_token is None
    assert settings.events_source == "pakaura-api"
    assert (settings.topic_task_events, settings.topic_task_updates, settings.topic_reminders) == (
        "task-events",
        "task-updates",
        "reminders",
    )
    assert settings.better_auth_secret is None
    assert (settings.log_level, settings.log_format) == ("INFO", "auto")


def test_the_app_runs_with_no_configuration_at_all(tmp_path: Path) -> None:
    """The quick start: no env, no .env; a local database and secret appear in the directory."""
    reset_engine()  # the engine is cached process-wide; earlier tests used other databases
    try:
        app = create_app(local_secret=True)  # as `pakaura serve` on 127.0.0.1
        secret = (tmp_path / "xdg-config" / DEV_SECRET_FILE).read_text().strip()
        headers = {"Authorization": f"Bearer {issue_token('alice', secret)}"}
        with TestClient(app) as client:
            created = client.post("/api/alice/tasks", json={"title": "first"}, headers=headers)
            assert created.status_code == 201
            assert client.get("/api/alice/tasks", headers=headers).json() == [created.json()]
    finally:
        reset_engine()
    assert (tmp_path / "pakaura.db").exists()


ENV_VALUES = [
    ("DATABASE_URL", "postgresql+psycopg://u@db:5432/tasks", "database_url", None),
    ("DAPR_ENABLED", "true", "dapr_enabled", True),
    ("DAPR_HOST", "dapr", "dapr_host", "dapr"),
    ("DAPR_HTTP_PORT", "3601", "dapr_http_port", 3601),
    ("DAPR_PUBSUB_NAME", "pubsub-redis", "dapr_pubsub_name", "pubsub-redis"),
    ("DAPR_PUBLISH_TIMEOUT", "0.5", "dapr_publish_timeout", 0.5),
    ("EVENTS_SOURCE", "pakaura-test", "events_source", "pakaura-test"),
    ("TOPIC_TASK_EVENTS", "te", "topic_task_events", "te"),
    ("TOPIC_TASK_UPDATES", "tu", "topic_task_updates", "tu"),
    ("TOPIC_REMINDERS", "rem", "topic_reminders", "rem"),
    ("LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("LOG_FORMAT", "Console", "log_format", "console"),
    ("RELAY_LINGER", "0", "relay_linger", 0.0),
    ("RELAY_LINGER", "0.01", "relay_linger", 0.01),
]


@pytest.mark.parametrize(("env", "value", "field", "expected"), ENV_VALUES)
def test_environment_variables_are_read(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(get_settings(), field) == (value if expected is None else expected)


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("DAPR_HTTP_PORT=3602\nEVENTS_SOURCE=from-dotenv\n")
    monkeypatch.setenv("EVENTS_SOURCE", "from-env")
    settings = get_settings()
    assert settings.dapr_http_port == 3602
    assert settings.events_source == "from-env"


def test_secrets_do_not_show_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", GOOD_SECRET)
    monkeypatch.setenv("DAPR_API_TOKEN", "dapr-token-value")
    settings = get_settings()
    assert isinstance(settings.dapr_api_token, SecretStr)
    assert settings.dapr_api_token.get_secret_value() == "dapr-token-value"
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert GOOD_SECRET not in text
        assert "dapr-token-value" not in text


INVALID = [
    ("DAPR_HTTP_PORT", "abc"),
    ("DAPR_HTTP_PORT", "0"),
    ("DAPR_HTTP_PORT", "70000"),
    ("DAPR_PUBLISH_TIMEOUT", "-1"),
    ("DAPR_PUBLISH_TIMEOUT", "soon"),
    ("RELAY_LINGER", "-0.001"),
    ("RELAY_LINGER", "2"),
    ("DAPR_ENABLED", "maybe"),
    ("DAPR_PUBSUB_NAME", ""),
    ("EVENTS_SOURCE", ""),
    ("TOPIC_REMINDERS", ""),
    ("LOG_LEVEL", "LOUD"),
    ("LOG_FORMAT", "xml"),
    ("DATABASE_URL", "not a database url"),
    ("MCP_ALLOWED_HOSTS", "example.com"),  # a list setting: JSON expected
]


@pytest.mark.parametrize(("env", "value"), INVALID)
def test_an_invalid_setting_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as caught:
        get_settings()
    message = str(caught.value)
    assert env in message
    assert "\n" not in message


def test_an_invalid_setting_in_dotenv_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LOG_FORMAT=xml\n")
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        get_settings()


def test_every_invalid_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_HTTP_PORT", "abc")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(SettingsError) as caught:
        get_settings()
    assert "DAPR_HTTP_PORT" in str(caught.value)
    assert "LOG_LEVEL" in str(caught.value)


def test_the_app_refuses_to_start_with_an_invalid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAPR_PUBLISH_TIMEOUT", "never")
    with pytest.raises(SettingsError, match="DAPR_PUBLISH_TIMEOUT"):
        create_app()


# --- The JWT secret ---------------------------------------------------------------------------


def test_a_short_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", "too-short-secret")
    with pytest.raises(SettingsError) as caught:
        get_settings()
    assert "BETTER_AUTH_SECRET" in str(caught.value)
    assert "too-short-secret" not in str(caught.value)


def test_production_without_a_secret_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(SettingsError, match="BETTER_AUTH_SECRET"):
        load_auth_secret(get_settings())
    with pytest.raises(SettingsError, match="BETTER_AUTH_SECRET"):
        create_app(local_secret=True)
    assert not (tmp_path / LOCAL).exists()


def test_an_app_not_known_to_serve_on_loopback_fails_closed(tmp_path: Path) -> None:
    """A factory (`uvicorn --factory src.main:create_app`) or a non-loopback `serve`."""
    with pytest.raises(SettingsError, match="BETTER_AUTH_SECRET") as caught:
        create_app()
    assert len(str(caught.value).splitlines()) == 1
    assert not (tmp_path / LOCAL).exists()


def test_production_ignores_a_local_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / LOCAL
    path.parent.mkdir(parents=True)
    path.write_text("x" * 64)
    path.chmod(0o600)
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(SettingsError, match="BETTER_AUTH_SECRET"):
        load_auth_secret(get_settings())


def test_production_uses_the_configured_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("BETTER_AUTH_SECRET", GOOD_SECRET)
    assert load_auth_secret(get_settings(), local_secret=False) == GOOD_SECRET
    assert not (tmp_path / LOCAL).exists()


def test_a_configured_secret_is_used_in_development_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BETTER_AUTH_SECRET", GOOD_SECRET)
    assert load_auth_secret(get_settings()) == GOOD_SECRET
    assert not (tmp_path / LOCAL).exists()


def test_development_generates_a_private_secret_file_and_reuses_it(tmp_path: Path) -> None:
    first = load_auth_secret(get_settings())
    assert first is not None
    path = tmp_path / LOCAL
    assert dev_secret_path(get_settings()) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first.encode()) >= 32
    assert path.read_text().strip() == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left

    get_settings.cache_clear()  # a later process (`pakaura token` after `pakaura serve`)
    assert load_auth_secret(get_settings()) == first
    token = issue_token("alice", first)
    assert decode_token(token, first) == "alice"


def test_the_local_secret_is_the_same_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = load_auth_secret(Settings())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_auth_secret(Settings()) == here


def test_dev_secret_file_setting_moves_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEV_SECRET_FILE", str(tmp_path / "mine" / "secret"))
    secret = load_auth_secret(get_settings())
    assert (tmp_path / "mine" / "secret").read_text().strip() == secret
    assert not (tmp_path / LOCAL).exists()


@pytest.mark.parametrize("content", ["", "\n", "short"])
def test_an_unusable_secret_file_is_refused_not_replaced(tmp_path: Path, content: str) -> None:
    path = tmp_path / LOCAL
    path.parent.mkdir(parents=True)
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SettingsError, match="fewer than 32 bytes"):
        load_auth_secret(get_settings())
    assert path.read_text() == content


LOCAL = Path("xdg-config") / DEV_SECRET_FILE  # under tmp_path (tests/conftest.py)


@pytest.mark.parametrize(
    ("given", "read_as"),
    [
        ("postgres://u:p@db:5432/tasks", "postgresql+psycopg://u:p@db:5432/tasks"),
        (
            "postgresql://u@db/tasks?sslmode=require",
            "postgresql+psycopg://u@db/tasks?sslmode=require",
        ),
        ("postgresql+psycopg://u@db/tasks", "postgresql+psycopg://u@db/tasks"),
        ("sqlite:///./x.db", "sqlite:///./x.db"),
        ("sqlite+pysqlite:////tmp/x.db", "sqlite+pysqlite:////tmp/x.db"),
    ],
)
def test_database_url_spellings_that_work(
    monkeypatch: pytest.MonkeyPatch, given: str, read_as: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", given)
    assert get_settings().database_url == read_as


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d", "mysql://u@h/d", "x"]
)
def test_unsupported_database_urls_say_which_forms_work(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError) as caught:
        get_settings()
    message = str(caught.value)
    assert message.startswith("invalid setting DATABASE_URL: ")
    assert "postgresql+psycopg://user:password@host:5432/dbname" in message
    assert "Value error" not in message
