"""Hostile input over real HTTP (issue 7, part 3): schemathesis, malformed JSON, huge bodies,
control characters and SQL in strings, values the database cannot hold.

The CI slice runs 150 schemathesis cases; `python -m bench.reliability fuzz` runs the full
budget (docs/reliability.md has its figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from bench.reliability import Stack, free_port
from bench.reliability._hostile import run_schemathesis

CI_CASES = 150


def test_schemathesis_finds_no_5xx_and_answers_match_the_schema(fuzz_stack: Stack) -> None:
    report = run_schemathesis(
        fuzz_stack.api.base_url,
        token=fuzz_stack.token("fuzzer"),
        user="fuzzer",
        total_cases=CI_CASES,
        seed=7,
    )
    assert report.cases >= CI_CASES
    assert len(report.operations) >= 10  # 9 task operations + /health
    assert report.failures == [], "\n".join(report.failures)
    assert report.server_errors == 0
    # Both kinds of answer were exercised: the run did reach the database and the validation.
    assert any(200 <= s < 300 for s in report.statuses)
    assert report.statuses[422] > 0


class _Body(BaseModel):
    title: str


@pytest.fixture
def buggy_api() -> Iterator[str]:
    """A tiny API with a planted 5xx, served for real, to prove the runner reports one."""
    app = FastAPI()

    @app.post("/api/{user_id}/tasks", status_code=201)
    def create(user_id: str, body: _Body) -> _Body:
        if len(body.title) > 3:
            raise RuntimeError("planted bug")
        return body

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


def test_schemathesis_runner_reports_a_planted_server_error(buggy_api: str) -> None:
    report = run_schemathesis(buggy_api, token="t", user="u", total_cases=40, seed=1, seed_tasks=0)
    assert report.server_errors > 0
    assert any("Server error" in f or "500" in f for f in report.failures), report.failures


def _count(stack: Stack, user: str) -> int:
    response = httpx.get(
        f"{stack.api.base_url}/api/{user}/tasks?limit=500", headers=stack.headers(user)
    )
    response.raise_for_status()
    return len(response.json())


MALFORMED: list[bytes] = [
    b"",
    b"{",
    b'{"title": }',
    b'{"title": "unterminated',
    b"[]",
    b"null",
    b'"just a string"',
    b"\xff\xfe{}",  # not UTF-8
    b'{"title": "x"} trailing',
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser's recursion limit
    b'{"title": 1e999999}',  # a float that overflows to infinity
    b'{"title": NaN}',
    b'{"title": "x", "completed": 1' + b"0" * 5000 + b"}",  # a 5001-digit integer
    b'{"title": "x", "user_id": "someone-else"}',  # extra field: not even quietly ignored
    b'{"title": "x", "id": 1}',
    b'{"\\ud800": 1}',
]


@pytest.mark.parametrize("path_suffix", ["", "/1"])
def test_malformed_json_is_refused_with_4xx_and_writes_nothing(
    fuzz_stack: Stack, path_suffix: str
) -> None:
    user = "malformed"
    headers = {**fuzz_stack.headers(user), "Content-Type": "application/json"}
    with httpx.Client(base_url=fuzz_stack.api.base_url, headers=headers) as client:
        client.post(f"/api/{user}/tasks", json={"title": "the only task"}).raise_for_status()
        first_id = client.get(f"/api/{user}/tasks").json()[0]["id"]
        before = client.get(f"/api/{user}/tasks").json()
        suffix = path_suffix and f"/{first_id}"
        method = "PUT" if suffix else "POST"
        answers = {}
        for body in MALFORMED:
            response = client.request(method, f"/api/{user}/tasks{suffix}", content=body)
            answers[body[:40]] = response.status_code
            assert response.headers["content-type"].startswith("application/json")
        assert all(status in (400, 422) for status in answers.values()), answers
        assert client.get(f"/api/{user}/tasks").json() == before


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_huge_bodies_are_refused_without_memory_blow_up(fuzz_stack: Stack) -> None:
    user = "huge"
    url = f"{fuzz_stack.api.base_url}/api/{user}/tasks"
    headers = {**fuzz_stack.headers(user), "Content-Type": "application/json"}
    pid = fuzz_stack.api.pid
    assert pid is not None
    rss_before = _rss_mib(pid)

    declared = httpx.post(
        url, content=b'{"title": "' + b"x" * (2 * 1024 * 1024) + b'"}', headers=headers
    )
    assert declared.status_code == 413

    # Chunked: no Content-Length to refuse up front; 64 MiB streamed must be cut off early.
    sent = 0

    def stream() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"title": "'
        for _ in range(64):
            sent += 1
            yield b"x" * (1024 * 1024)
        yield b'"}'

    try:
        chunked = httpx.post(url, content=stream(), headers=headers, timeout=30)
        assert chunked.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while we are still sending: also a refusal
    # Just under the limit but invalid: an answer naming the field, not a crash.
    big_title = httpx.post(url, json={"title": "y" * 900_000}, headers=headers)
    assert big_title.status_code == 422
    assert big_title.json()["detail"][0]["loc"] == ["body", "title"]

    assert _rss_mib(pid) - rss_before < 48, "the API grew by the size of the bodies"
    assert _count(fuzz_stack, user) == 0
    assert httpx.get(f"{fuzz_stack.api.base_url}/health").status_code == 200


LITERAL_STRINGS = [
    "".join(chr(c) for c in range(1, 32)) + "\x7f",  # every C0 control but NUL, and DEL
    "'; DROP TABLE task; --",
    "' OR '1'='1",
    '" OR ""="',
    "1; DELETE FROM event_outbox WHERE 1=1",
    "$$; SELECT pg_sleep(5); $$",
    "%s %(title)s %% {0} ${title}",
    "\\x00 \\u0000 \\\\",
    "\u202eright-to-left override\u202c and \u200b zero width",
    "emoji 🧪 and CJK 漢字 and combining é",
    "<script>alert(1)</script>",
]


def test_control_characters_and_sql_are_stored_literally(fuzz_stack: Stack) -> None:
    user = "literal"
    bystander = {"Authorization": fuzz_stack.headers("bystander")["Authorization"]}
    httpx.post(
        f"{fuzz_stack.api.base_url}/api/bystander/tasks", json={"title": "b"}, headers=bystander
    ).raise_for_status()
    with httpx.Client(base_url=fuzz_stack.api.base_url, headers=fuzz_stack.headers(user)) as client:
        ids = {}
        for text in LITERAL_STRINGS:
            title = text.strip()[:200] or "blank"
            created = client.post(f"/api/{user}/tasks", json={"title": text, "description": text})
            assert created.status_code == 201, (text, created.text)
            ids[created.json()["id"]] = (title, text)
        for task_id, (title, text) in ids.items():
            got = client.get(f"/api/{user}/tasks/{task_id}").json()
            assert got["title"] == title  # titles are trimmed (contract), nothing else changes
            assert got["description"] == text
            updated = client.put(f"/api/{user}/tasks/{task_id}", json={"description": text + "!"})
            assert updated.json()["description"] == text + "!"
        assert len(client.get(f"/api/{user}/tasks?limit=500").json()) == len(LITERAL_STRINGS)
    # None of the SQL ran: another user's task and the outbox table are intact.
    assert _count(fuzz_stack, "bystander") == 1
    health = httpx.get(f"{fuzz_stack.api.base_url}/health")
    assert health.status_code == 200 and health.json()["database"] == "ok"


UNSTORABLE = [
    ("POST", "", {"title": "nul \x00 inside"}, "title"),
    ("POST", "", {"title": "ok", "description": "nul \x00"}, "description"),
    ("POST", "", {"title": "ok", "due_date": "9999-12-31T23:59:59-23:59"}, "due_date"),
    ("POST", "", {"title": "ok", "due_date": "0001-01-01T00:00:00+23:59"}, "due_date"),
    ("GET", "?offset=99999999999999999999", None, "offset"),
]


@pytest.mark.parametrize(("method", "suffix", "body", "field"), UNSTORABLE)
def test_values_the_database_cannot_hold_are_422_naming_the_field(
    fuzz_stack: Stack, method: str, suffix: str, body: dict[str, str] | None, field: str
) -> None:
    user = "unstorable"
    response = httpx.request(
        method,
        f"{fuzz_stack.api.base_url}/api/{user}/tasks{suffix}",
        json=body,
        headers=fuzz_stack.headers(user),
    )
    assert response.status_code == 422, response.text
    assert field in {str(part) for err in response.json()["detail"] for part in err["loc"]}


@pytest.mark.parametrize("task_id", [2**31, 2**63, 10**20])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_ids_the_database_cannot_hold_are_404(fuzz_stack: Stack, method: str, task_id: int) -> None:
    # They cannot exist: the same answer as any missing task, not a 500 from the driver.
    response = httpx.request(
        method,
        f"{fuzz_stack.api.base_url}/api/unstorable/tasks/{task_id}",
        json={"title": "x"} if method in ("PUT", "PATCH") else None,
        headers=fuzz_stack.headers("unstorable"),
    )
    assert response.status_code == 404, response.text


def test_lone_surrogate_escape_is_422(fuzz_stack: Stack) -> None:
    user = "unstorable"
    response = httpx.post(
        f"{fuzz_stack.api.base_url}/api/{user}/tasks",
        content=b'{"title": "half a pair \\ud800"}',
        headers={**fuzz_stack.headers(user), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "title"]
    assert _count(fuzz_stack, user) == 0
