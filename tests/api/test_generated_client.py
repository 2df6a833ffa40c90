"""A client generated from /openapi.json (openapi-python-client) builds and round-trips every
route, error answers included, each parsed into its declared type."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.app import Api, bearer

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "pakaura_client"

pytestmark = pytest.mark.skipif(not GENERATOR.exists(), reason="openapi-python-client missing")


@pytest.fixture(scope="module")
def client_package(api_module: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("client")
    spec = root / "openapi.json"
    spec.write_text(json.dumps(api_module.app.openapi()))
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(root / PACKAGE),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(root))
    try:
        yield root / PACKAGE
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _operation(package: Path, tag: str, prefix: str) -> ModuleType:
    """The generated module of one operation (names follow FastAPI's operation ids)."""
    [path] = [p for p in (package / "api" / tag).glob(f"{prefix}*.py")]
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{path.stem}")


def _client(api: Api, user: str | None) -> Any:
    models = importlib.import_module(f"{PACKAGE}.client")
    client = models.Client(base_url="http://testserver")
    headers = bearer(user) if user else {}
    client.set_httpx_client(TestClient(api.app, headers=headers))
    return client


def test_the_generated_client_round_trips_every_route(api: Api, client_package: Path) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")
    op = lambda tag, prefix: _operation(client_package, tag, prefix)  # noqa: E731
    alice = _client(api, "alice")

    assert isinstance(op("health", "livez").sync(client=alice), models.Liveness)
    ready = op("health", "readyz").sync(client=alice)
    assert isinstance(ready, models.Readiness) and ready.status == models.ReadinessStatus.READY
    assert isinstance(op("health", "health").sync(client=alice), models.HealthSummary)

    created = op("tasks", "create_task").sync(
        "alice",
        client=alice,
        body=models.TaskCreate(title="  Buy milk  ", description="2 l", due_date=None),
    )
    assert isinstance(created, models.TaskPublic)
    assert (created.title, created.description, created.due_date) == ("Buy milk", "2 l", None)

    listed = op("tasks", "list_tasks").sync("alice", client=alice)
    assert [t.id for t in listed] == [created.id]
    got = op("tasks", "get_task").sync("alice", created.id, client=alice)
    assert got.to_dict() == created.to_dict()

    import datetime as dt

    due = dt.datetime(2031, 6, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    put = op("tasks", "update_task_api_user_id_tasks_task_id_put").sync(
        "alice",
        created.id,
        client=alice,
        body=models.TaskUpdate(title="Buy oat milk", due_date=due),
    )
    assert put.title == "Buy oat milk" and put.due_date == due
    assert put.description == "2 l"  # not sent, kept
    # null clears (sent explicitly); UNSET (not sent) keeps.
    patched = op("tasks", "update_task_api_user_id_tasks_task_id_patch").sync(
        "alice", created.id, client=alice, body=models.TaskUpdate(description=None)
    )
    assert patched.description is None and patched.due_date == due
    assert isinstance(models.TaskUpdate().title, types.Unset)

    done = op("tasks", "complete_task").sync("alice", created.id, client=alice)
    assert done.completed is True
    reopened = op("tasks", "uncomplete_task").sync("alice", created.id, client=alice)
    assert reopened.completed is False
    op("tasks", "complete_task").sync("alice", created.id, client=alice)
    cleared = op("tasks", "clear_completed").sync("alice", client=alice)
    assert isinstance(cleared, models.DeletedCount) and cleared.deleted == 1

    body = models.TaskCreate(title="x")
    again = op("tasks", "create_task").sync("alice", client=alice, body=body)
    deleted = op("tasks", "delete_task").sync_detailed("alice", again.id, client=alice)
    assert deleted.status_code == 204


def test_every_error_answer_parses_into_its_declared_type(api: Api, client_package: Path) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    op = lambda tag, prefix: _operation(client_package, tag, prefix)  # noqa: E731
    alice, nobody = _client(api, "alice"), _client(api, None)

    unauthorized = op("tasks", "list_tasks").sync_detailed("alice", client=nobody)
    assert unauthorized.status_code == 401
    assert isinstance(unauthorized.parsed, models.AuthErrorBody)
    assert unauthorized.parsed.error == "invalid_token"

    forbidden = op("tasks", "list_tasks").sync_detailed("bob", client=alice)
    assert forbidden.status_code == 403 and isinstance(forbidden.parsed, models.ErrorDetail)

    missing = op("tasks", "get_task").sync_detailed("alice", 999_999, client=alice)
    assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorDetail)

    invalid = op("tasks", "create_task").sync_detailed(
        "alice", client=alice, body=models.TaskCreate(title="   ")
    )
    assert invalid.status_code == 422
    assert isinstance(invalid.parsed, models.HTTPValidationError)
