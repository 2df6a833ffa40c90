"""The `pakaura` command (contract §7): token, db upgrade, and one-line errors.

Most cases run the command as a user does, in a subprocess with its own environment and
working directory; variants of the same error path call `main()` in-process to stay fast.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
import sqlalchemy as sa
from src.cli import main
from src.config import DEV_SECRET_FILE

from tests.support.app import TEST_SECRET, make_client

PAKAURA = Path(sys.executable).with_name("pakaura")


def run(
    *args: str, cwd: Path, command: list[str] | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    # os.environ holds no pakaura settings here (tests/conftest.py clears them).
    return subprocess.run(
        [*(command or [sys.executable, "-m", "src.cli"]), *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# --- pakaura token ----------------------------------------------------------------------------


def test_token_prints_a_token_signed_with_the_configured_secret(tmp_path: Path) -> None:
    assert PAKAURA.exists(), "the `pakaura` console script is installed with the project"
    done = run(
        "token", "alice", cwd=tmp_path, command=[str(PAKAURA)], BETTER_AUTH_SECRET=TEST_SECRET
    )
    assert done.returncode == 0, done.stderr
    token = one_line(done.stdout)
    claims = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    hours_left = (claims["exp"] - datetime.now(UTC).timestamp()) / 3600
    assert 11.9 < hours_left <= 12
    assert TEST_SECRET not in done.stdout + done.stderr
    assert not (tmp_path / DEV_SECRET_FILE).exists()


def test_token_and_the_api_agree_on_the_generated_local_secret(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "alice", "--hours", "1"]) == 0
    token = one_line(capsys.readouterr().out)
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "alice"
    assert (tmp_path / "xdg-config" / DEV_SECRET_FILE).exists()
    # The API started later in the same directory (no BETTER_AUTH_SECRET) accepts it. (Its
    # log lines go to whatever sys.stderr is at the time: captured here.)
    with make_client(sqlite_url, secret=None) as api:
        headers = {"Authorization": f"Bearer {token}"}
        assert api.client.get("/api/alice/tasks", headers=headers).status_code == 200
        assert api.client.get("/api/bob/tasks", headers=headers).status_code == 403


# --- One-line errors --------------------------------------------------------------------------


def test_a_bad_setting_is_one_line_on_stderr_and_a_failure(tmp_path: Path) -> None:
    done = run("token", "alice", cwd=tmp_path, DAPR_HTTP_PORT="abc")
    assert done.returncode != 0
    assert done.stdout == ""
    assert "DAPR_HTTP_PORT" in one_line(done.stderr)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["token", "alice"], {"MCP_ALLOWED_HOSTS": "not-json"}, "MCP_ALLOWED_HOSTS"),
        (["token", "alice"], {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        (["token", "alice"], {"APP_ENV": "production"}, "BETTER_AUTH_SECRET"),
        (["token", "alice"], {"BETTER_AUTH_SECRET": "short"}, "BETTER_AUTH_SECRET"),
        (["token", "  "], {}, "USER"),
        (["db", "upgrade"], {"DATABASE_URL": "nonsense"}, "DATABASE_URL"),
        (
            ["db", "upgrade"],
            {"DATABASE_URL": "postgresql+psycopg://pakaura:pw@127.0.0.1:1/pakaura"},
            "DATABASE_URL",
        ),
        (["db", "upgrade"], {"DATABASE_URL": "sqlite:////nonexistent-dir/x.db"}, "DATABASE_URL"),
    ],
)
def test_errors_print_one_line_naming_what_to_fix(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) != 0
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line(err)
    assert line.startswith("pakaura: ")
    assert named in line
    assert "pw@" not in line  # no credentials echoed


# --- pakaura db upgrade -----------------------------------------------------------------------


def test_db_upgrade_creates_the_tables(tmp_path: Path, db_url: str) -> None:
    done = run("db", "upgrade", cwd=tmp_path, DATABASE_URL=db_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    engine = sa.create_engine(db_url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"task", "event_outbox", "alembic_version"} <= tables


def test_db_upgrade_twice_is_harmless(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0
    assert "upgraded" in capsys.readouterr().err


# --- DATABASE_URL forms, --hours, help (T-019: errors and help a newcomer can act on) -----------


@pytest.mark.parametrize(
    ("url", "command"),
    [
        # driver not installed
        ("postgresql+psycopg2://pakaura:pw@127.0.0.1:5432/pakaura", ["outbox", "status"]),
        ("mysql://pakaura:pw@127.0.0.1/pakaura", ["outbox", "status"]),
        ("not a url pw@", ["db", "upgrade"]),
        ("mysql+pymysql://pakaura:pw@127.0.0.1/pakaura", ["serve", "--port", "1"]),
    ],
)
def test_an_unsupported_database_url_is_one_line_naming_the_setting(
    tmp_path: Path, url: str, command: list[str]
) -> None:
    done = run(*command, cwd=tmp_path, command=[str(PAKAURA)], DATABASE_URL=url)
    assert done.returncode != 0
    assert done.stdout == ""
    line = one_line(done.stderr)
    assert line.startswith("pakaura: ")
    assert "DATABASE_URL" in line
    # It says which forms work, and never echoes the URL (it may carry a password).
    assert "sqlite:///" in line and "postgresql+psycopg://" in line
    assert "pw@" not in line


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgresql+psycopg"])
def test_postgres_url_spellings_are_read_as_psycopg(
    tmp_path: Path, pg_database_url: str, scheme: str
) -> None:
    url = sa.make_url(pg_database_url).set(drivername=scheme)
    rendered = url.render_as_string(hide_password=False)
    done = run("db", "upgrade", cwd=tmp_path, command=[str(PAKAURA)], DATABASE_URL=rendered)
    assert done.returncode == 0, done.stderr
    assert one_line(done.stderr) == "database upgraded to head"


@pytest.mark.parametrize("hours", ["0", "-1", "-0.5", "nan", "inf", "soon"])
def test_token_hours_must_be_positive(tmp_path: Path, hours: str) -> None:
    done = run("token", "alice", "--hours", hours, cwd=tmp_path, command=[str(PAKAURA)])
    assert done.returncode == 2
    assert done.stdout == ""
    line = one_line(done.stderr)
    assert "--hours" in line and "pakaura token --help" in line


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    from src.cli import _parser

    found: list[tuple[str, argparse.ArgumentParser]] = []
    pending = [_parser()]
    while pending:
        parser = pending.pop()
        found.append((parser.prog, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return found


def test_every_option_has_help_that_states_its_default() -> None:
    parsers = _all_parsers()
    assert {prog for prog, _ in parsers} >= {
        "pakaura serve",
        "pakaura token",
        "pakaura dev-sidecar",
        "pakaura db upgrade",
        "pakaura outbox status",
    }
    for prog, parser in parsers:
        assert parser.description, prog
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, f"{prog} {action.dest} has no help"
            if not action.required and (action.option_strings or action.nargs == "?"):
                shown = formatter._get_help_string(action) or ""  # what --help prints
                assert "default" in shown, f"{prog} {action.dest}: {shown}"


def test_help_shows_defaults(tmp_path: Path) -> None:
    done = run("dev-sidecar", "--help", cwd=tmp_path, command=[str(PAKAURA)])
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "(default: 3500)" in text and "(default: 127.0.0.1)" in text
