"""`X-Request-ID`: accepted or generated, echoed, bound to every log line of the request.

The log tests run the real logging set-up (`create_app` configures loguru, the stdlib loggers
are routed into it) and read the JSON lines a sink receives.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from loguru import logger
from src.main import create_app
from src.models import Task

from tests.support.app import Api, app_environment, bearer, make_client

MakeTasks = Callable[..., list[Task]]
HEADER = "X-Request-ID"


# --- Echo -------------------------------------------------------------------------------------


def test_a_given_id_is_echoed_on_every_kind_of_answer(api: Api, make_tasks: MakeTasks) -> None:
    (task,) = make_tasks(user_id="alice")
    alice = api.auth("alice")
    calls: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("GET", "/api/alice/tasks", alice, None, 200),
        ("POST", "/api/alice/tasks", alice, {"title": "x"}, 201),
        ("GET", "/api/alice/tasks", {}, None, 401),
        ("GET", "/api/alice/tasks", bearer("bob"), None, 403),
        ("GET", "/api/alice/tasks/999999", alice, None, 404),
        ("POST", "/api/alice/tasks", alice, {"title": ""}, 422),
        ("DELETE", f"/api/alice/tasks/{task.id}", alice, None, 204),
        ("GET", "/health", {}, None, 200),
    ]
    for n, (method, url, headers, body, status) in enumerate(calls):
        request_id = f"req-{n}-{method.lower()}"
        response = api.client.request(
            method, url, json=body, headers={**headers, HEADER: request_id}
        )
        assert response.status_code == status, (method, url, response.text)
        assert response.headers[HEADER] == request_id, (method, url)


def test_an_id_is_generated_when_none_is_sent(api: Api) -> None:
    first = api.client.get("/health").headers[HEADER]
    second = api.client.get("/health", headers={HEADER: ""}).headers[HEADER]
    for generated in (first, second):
        assert len(generated) >= 16
        assert generated.isalnum()
    assert first != second


def test_an_oversized_id_is_cut_not_refused(api: Api) -> None:
    response = api.client.get("/health", headers={HEADER: "a" * 1000})
    assert response.status_code == 200
    assert response.headers[HEADER] == "a" * 128


def test_the_413_answer_carries_the_id(api: Api) -> None:
    response = api.client.post(
        "/api/alice/tasks",
        json={"title": "x", "description": "x" * (1024 * 1024)},
        headers={**api.auth("alice"), HEADER: "big-one"},
    )
    assert response.status_code == 413
    assert response.headers[HEADER] == "big-one"


# --- Logs -------------------------------------------------------------------------------------


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Every record logged meanwhile, as the JSON object loguru serialises."""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = json.loads(message)["record"]
        if not record["name"].startswith(("httpx", "httpcore")):  # the test's HTTP client
            records.append(record)

    sink_id = logger.add(sink, level="DEBUG", serialize=True)
    try:
        yield records
    finally:
        logger.remove(sink_id)


def _add_logging_routes(app: FastAPI) -> None:
    @app.get("/_test/log-sync")
    def log_sync() -> dict[str, str]:  # runs in the worker thread pool
        logger.info("from a sync endpoint")
        logging.getLogger("sqlalchemy.engine").warning("from stdlib logging")
        return {}

    @app.get("/_test/log-async")
    async def log_async() -> dict[str, str]:
        logger.bind(task_id=7).info("from an async endpoint")
        return {}

    @app.get("/_test/slow")
    def slow(marker: str) -> dict[str, str]:
        logger.bind(marker=marker).info("before")
        time.sleep(0.05)  # overlap with the other requests
        logger.bind(marker=marker).info("after")
        return {}

    @app.get("/_test/boom")
    def boom() -> None:
        logger.info("about to fail")
        raise RuntimeError("boom")


def test_every_log_line_of_a_request_carries_its_id(sqlite_url: str) -> None:
    with make_client(sqlite_url, LOG_SQL="true") as api:
        _add_logging_routes(api.app)
        with captured_logs() as records:
            for path in ("/_test/log-sync", "/_test/log-async"):
                api.client.get(path, headers={HEADER: f"id{path}"})
            api.client.post(
                "/api/alice/tasks",
                json={"title": "logged"},
                headers={**api.auth("alice"), HEADER: "id-create"},
            )
        logger.info("outside any request")

    by_message = {r["message"]: r["extra"] for r in records}
    assert by_message["from a sync endpoint"]["correlation_id"] == "id/_test/log-sync"
    assert by_message["from stdlib logging"]["correlation_id"] == "id/_test/log-sync"
    assert by_message["from an async endpoint"] == {
        "task_id": 7,
        "correlation_id": "id/_test/log-async",
    }
    # LOG_SQL routes SQLAlchemy's stdlib logging into loguru: the request's SQL carries its id.
    # (Only lines about `task`: a relay running beside may log its own outbox queries.)
    inserts = [r for r in records if r["message"].startswith("INSERT INTO task")]
    assert inserts
    for record in inserts:
        assert record["extra"].get("correlation_id") == "id-create"


def test_a_log_line_after_the_request_has_no_id(sqlite_url: str) -> None:
    with make_client(sqlite_url) as api, captured_logs() as records:
        api.client.get("/health", headers={HEADER: "finished"})
        logger.info("later")
    [later] = [r for r in records if r["message"] == "later"]
    assert "correlation_id" not in later["extra"]


@contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """The app under a real uvicorn (as `pakaura serve` runs it) on a free port."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def served(sqlite_url: str) -> Iterator[str]:
    with app_environment(sqlite_url):
        app = create_app()
        _add_logging_routes(app)
        with running_server(app) as base_url:
            yield base_url


def test_concurrent_requests_keep_their_own_ids(served: str) -> None:
    markers = [f"m{n}" for n in range(8)]
    with captured_logs() as records, httpx.Client(base_url=served) as client:

        def call(marker: str) -> str:
            response = client.get(
                "/_test/slow", params={"marker": marker}, headers={HEADER: f"id-{marker}"}
            )
            return response.headers[HEADER]

        with ThreadPoolExecutor(len(markers)) as pool:
            echoed = list(pool.map(call, markers))
    assert echoed == [f"id-{m}" for m in markers]
    slow_lines = [r for r in records if r["message"] in {"before", "after"}]
    assert len(slow_lines) == 2 * len(markers)
    for record in slow_lines:
        assert record["extra"]["correlation_id"] == f"id-{record['extra']['marker']}"


def test_an_unhandled_error_answers_500_with_the_id_and_logs_it(served: str) -> None:
    with captured_logs() as records:
        response = httpx.get(f"{served}/_test/boom", headers={HEADER: "id-boom"})
        # The server logs the exception after the answer has gone out.
        deadline = time.monotonic() + 10
        while not any(r["exception"] for r in records) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert response.status_code == 500
    assert response.headers.get(HEADER) == "id-boom"
    assert "boom" not in response.text  # no internals to the client
    errors = [r for r in records if r["level"]["name"] == "ERROR"]
    assert any(r["exception"] and r["exception"]["type"] == "RuntimeError" for r in errors)
    for record in errors:
        assert record["extra"].get("correlation_id") == "id-boom", record["message"]
    [before] = [r for r in records if r["message"] == "about to fail"]
    assert before["extra"]["correlation_id"] == "id-boom"
