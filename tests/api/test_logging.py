"""Logging (issue 2): loguru, JSON lines by default, `LOG_FORMAT=console` for humans, stdlib
logging (uvicorn, SQLAlchemy, libraries) routed in, and no secrets in what is logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger
from src.config import Settings
from src.logging_setup import configure_logging

from tests.support.app import TEST_SECRET, make_client, make_token


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    configure_logging(Settings())  # back to the default stderr set-up


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    records = []
    for line in buffer.getvalue().splitlines():
        records.append(json.loads(line)["record"])  # every line is one JSON object
    return records


def test_json_lines_by_default(stream: io.StringIO) -> None:
    configure_logging(Settings(), stream=stream)
    logger.bind(event_type="task.created", task_id=3, user_id="alice").info("published")
    [record] = json_lines(stream)
    assert record["message"] == "published"
    assert record["level"]["name"] == "INFO"
    assert record["extra"] == {"event_type": "task.created", "task_id": 3, "user_id": "alice"}


def test_stdlib_logging_is_routed_into_loguru(stream: io.StringIO) -> None:
    configure_logging(Settings(), stream=stream)
    logging.getLogger("uvicorn.error").warning("uvicorn says %s", "hi")
    logging.getLogger("sqlalchemy.pool").warning("pool trouble")
    logging.getLogger("some.library").error("library failure")
    messages = {r["message"]: r["level"]["name"] for r in json_lines(stream)}
    expected = {"uvicorn says hi": "WARNING", "pool trouble": "WARNING", "library failure": "ERROR"}
    assert expected.items() <= messages.items()


def test_console_format_for_humans(stream: io.StringIO) -> None:
    configure_logging(Settings(log_format="console"), stream=stream)
    logger.info("readable")
    text = stream.getvalue()
    assert "readable" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_log_level_filters(stream: io.StringIO) -> None:
    configure_logging(Settings(log_level="WARNING"), stream=stream)
    logger.info("hidden")
    logging.getLogger("uvicorn.error").info("hidden too")
    logger.warning("shown")
    messages = [r["message"] for r in json_lines(stream)]
    assert "shown" in messages
    assert "hidden" not in messages
    assert "hidden too" not in messages


def test_sql_is_logged_only_with_log_sql(sqlite_url: str) -> None:
    def sql_lines(log_sql: str) -> list[str]:
        with make_client(sqlite_url, LOG_SQL=log_sql) as api:
            records: list[str] = []
            sink = logger.add(lambda m: records.append(m.record["message"]), level="DEBUG")
            try:
                api.client.get("/api/alice/tasks", headers=api.auth("alice"))
            finally:
                logger.remove(sink)
        return [m for m in records if "SELECT" in m]

    assert sql_lines("false") == []
    assert sql_lines("true") != []


def test_no_token_or_secret_reaches_the_logs(sqlite_url: str) -> None:
    tokens = [make_token("alice"), make_token("alice", secret="wrong-secret-" * 4)]
    with make_client(sqlite_url, LOG_LEVEL="DEBUG", LOG_SQL="true") as api:
        lines: list[str] = []
        sink = logger.add(lines.append, level="TRACE", serialize=True)
        try:
            for token in tokens:
                headers = {"Authorization": f"Bearer {token}"}
                api.client.post("/api/alice/tasks", json={"title": "t"}, headers=headers)
                api.client.get("/api/alice/tasks", headers=headers)
        finally:
            logger.remove(sink)
    text = "".join(lines)
    assert "INSERT" in text  # the capture saw the request's work
    for secret in (*tokens, TEST_SECRET):
        assert secret not in text


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as stderr in an interactive shell does."""

    def isatty(self) -> bool:
        return True


def test_auto_is_the_default_format() -> None:
    assert Settings().log_format == "auto"


def test_auto_writes_console_lines_on_a_terminal() -> None:
    terminal = _Terminal()
    try:
        configure_logging(Settings(log_format="auto"), stream=terminal)
        logger.bind(task_id=3).info("readable")
        line = terminal.getvalue().splitlines()[0]
        assert "readable" in line and "task_id=3" in line
        assert not line.lstrip().startswith("{")
        assert len(line) < 200
    finally:
        configure_logging(Settings())


def test_auto_writes_json_lines_elsewhere(stream: io.StringIO) -> None:
    configure_logging(Settings(log_format="auto"), stream=stream)
    logger.info("for machines")
    [record] = json_lines(stream)
    assert record["message"] == "for machines"


def test_the_default_sink_follows_sys_stderr(
    monkeypatch: pytest.MonkeyPatch, stream: io.StringIO
) -> None:
    """Log lines go to whatever sys.stderr is when they are written (pytest's capture, a
    redirect), not to the stream that was current when logging was configured."""
    configure_logging(Settings(log_format="json"))
    monkeypatch.setattr("sys.stderr", stream)
    logger.info("captured")
    assert json_lines(stream)[0]["message"] == "captured"
