"""`pakaura dev-sidecar` (T-016/T-019): a local stand-in for the Dapr publish API that prints
each CloudEvent readably, so a newcomer sees events without installing Dapr."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from src.dev_sidecar import CLOUDEVENTS_JSON, DevSidecar, run

PAKAURA = Path(sys.executable).with_name("pakaura")
EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "pakaura-api",
    "type": "task.created",
    "subject": "7",
    "datacontenttype": "application/json",
    "data": {"task_id": 7, "user_id": "alice", "action": "created"},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_listening(port: int, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1.0/healthz/outbound").status_code == 204:
                return
        except httpx.ConnectError:
            pass
        assert proc is None or proc.poll() is None, "the sidecar exited"
        assert time.monotonic() < deadline, "the sidecar did not start"
        time.sleep(0.05)


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    env = {**os.environ, "DAPR_API_TOKEN": "local-token"}
    proc = subprocess.Popen(
        [str(PAKAURA), "dev-sidecar", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(port, proc)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_command_prints_single_and_bulk_events_readably(
    sidecar_process: tuple[int, subprocess.Popen[str]],
) -> None:
    port, proc = sidecar_process
    base = f"http://127.0.0.1:{port}"
    headers = {"content-type": CLOUDEVENTS_JSON, "dapr-api-token": "local-token"}
    single = httpx.post(
        f"{base}/v1.0/publish/pubsub-kafka/task-events?metadata.partitionKey=7",
        content=json.dumps(EVENT),
        headers=headers,
    )
    assert single.status_code == 204
    bulk_event = {**EVENT, "id": "e-2", "type": "task.sync"}
    bulk = httpx.post(
        f"{base}/v1.0-alpha1/publish/bulk/any-name/task-updates",
        json=[{"entryId": "1", "event": bulk_event, "contentType": CLOUDEVENTS_JSON}],
        headers={"dapr-api-token": "local-token"},
    )
    assert bulk.status_code == 204
    # The API token (from DAPR_API_TOKEN, as the API sends it) is required for publishing.
    refused = httpx.post(f"{base}/v1.0/publish/pubsub-kafka/task-events", content=b"{}", headers={})
    assert refused.status_code == 401
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert f"listening on http://127.0.0.1:{port}" in err
    assert "dapr-api-token required" in err
    assert "refused POST /v1.0/publish/pubsub-kafka/task-events: 401 (dapr-api-token" in err
    lines = out.splitlines()
    assert lines[0].split()[1:] == [
        "task-events",
        "task.created",
        "subject=7",
        "id=e-1",
        "partitionKey=7",
    ]
    assert '"user_id": "alice"' in out  # data, indented JSON
    assert any("task-updates  task.sync" in line and "(bulk)" in line for line in lines)
    assert "Traceback" not in err


def test_the_port_in_use_is_one_line(tmp_path: Path) -> None:
    with DevSidecar() as busy:
        done = subprocess.run(
            [str(PAKAURA), "dev-sidecar", "--port", str(busy.port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("pakaura: cannot listen on 127.0.0.1:") and "--port" in line


def test_run_writes_json_lines_when_asked() -> None:
    port = free_port()
    out, err = io.StringIO(), io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=run,
        kwargs={"port": port, "as_json": True, "out": out, "err": err, "stop": stop},
    )
    thread.start()
    try:
        wait_until_listening(port)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1.0/publish/p/t1",
            content=json.dumps(EVENT),
            headers={"content-type": CLOUDEVENTS_JSON},
        )
        assert response.status_code == 204
    finally:
        stop.set()
        thread.join(10)
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["topic"] == "t1"
    assert record["event"]["id"] == "e-1"
    assert record["event"]["pubsubname"] == "p"  # any pub/sub name is accepted by default
