"""The Dapr sidecar emulator behaves like the documented Dapr HTTP API (it is shared support)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.dapr_emulator import DaprEmulator

CE = {"specversion": "1.0", "id": "e-1", "source": "me", "type": "t.x", "subject": "1"}
ROOT = Path(__file__).resolve().parents[2]


# One client for the module: building an httpx client loads a CA bundle (slow).
HTTP = httpx.Client(verify=False, trust_env=False)


@pytest.fixture
def emu() -> Iterator[DaprEmulator]:
    with DaprEmulator(pubsubs={"ps"}) as emulator:
        yield emulator


def post(
    emu: DaprEmulator,
    path: str,
    body: object,
    content_type: str = "application/json",
    **headers: str,
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTP.post(emu.url + path, content=raw, headers={"content-type": content_type, **headers})


def test_cloudevents_content_type_keeps_the_envelope(emu: DaprEmulator) -> None:
    r = post(
        emu,
        "/v1.0/publish/ps/orders?metadata.partitionKey=7&other=x",
        CE,
        "application/cloudevents+json",
    )
    assert r.status_code == 204
    (d,) = emu.received
    assert (d.pubsub, d.topic, d.metadata, d.bulk) == ("ps", "orders", {"partitionKey": "7"}, False)
    assert {k: d.event[k] for k in CE} == CE
    assert d.event["topic"] == "orders" and d.event["pubsubname"] == "ps"
    assert d.event["traceparent"].startswith("00-")


def test_other_content_types_are_wrapped(emu: DaprEmulator) -> None:
    assert post(emu, "/v1.0/publish/ps/orders", CE, "application/json").status_code == 204
    assert post(emu, "/v1.0/publish/ps/orders", b"hello", "text/plain").status_code == 204
    wrapped, text = emu.events()
    assert wrapped["type"] == "com.dapr.event.sent" and wrapped["source"] == "pakaura-api"
    assert wrapped["id"] != "e-1" and wrapped["data"] == CE
    assert wrapped["datacontenttype"] == "application/json"
    assert text["data"] == "hello"


def test_raw_payload_is_not_wrapped(emu: DaprEmulator) -> None:
    post(emu, "/v1.0/publish/ps/orders?metadata.rawPayload=true", {"a": 1})
    assert emu.events() == [{"a": 1}]


def test_errors_like_dapr(emu: DaprEmulator) -> None:
    r = post(emu, "/v1.0/publish/nope/orders", CE)
    assert r.status_code == 404 and r.json()["errorCode"] == "ERR_PUBSUB_NOT_FOUND"
    emu.allowed_topics = {"allowed"}
    r = post(emu, "/v1.0/publish/ps/orders", CE)
    assert r.status_code == 403 and r.json()["errorCode"] == "ERR_PUBSUB_FORBIDDEN"
    emu.allowed_topics = None
    assert HTTP.get(emu.url + "/v1.0/unknown").status_code == 404
    emu.require_token("tok")
    assert post(emu, "/v1.0/publish/ps/orders", CE).status_code == 401
    assert post(emu, "/v1.0/publish/ps/orders", CE, **{"dapr-api-token": "bad"}).status_code == 401
    assert post(emu, "/v1.0/publish/ps/orders", CE, **{"dapr-api-token": "tok"}).status_code == 204
    # Health endpoints are exempt from the token, as in Dapr.
    assert HTTP.get(emu.url + "/v1.0/healthz/outbound").status_code == 204
    emu.healthy = False
    assert HTTP.get(emu.url + "/v1.0/healthz/outbound").status_code == 500


def entries(n: int, **meta: str) -> list[dict[str, object]]:
    return [
        {
            "entryId": f"id-{i}",
            "event": {**CE, "id": f"e-{i}"},
            "contentType": "application/cloudevents+json",
            "metadata": {"partitionKey": str(i), **meta},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("prefix", ["/v1.0-alpha1/publish/bulk", "/v1.0/publish/bulk"])
def test_bulk_publish_on_both_paths(emu: DaprEmulator, prefix: str) -> None:
    r = post(emu, f"{prefix}/ps/orders?metadata.ttlInSeconds=60", entries(3))
    assert r.status_code == 204
    got = emu.received
    assert [d.entry_id for d in got] == ["id-0", "id-1", "id-2"]
    assert got[1].metadata == {"partitionKey": "1", "ttlInSeconds": "60"}
    assert all(d.bulk and d.event["topic"] == "orders" for d in got)


def test_bulk_rejects_missing_or_duplicate_entry_ids(emu: DaprEmulator) -> None:
    dup = entries(2)
    dup[1]["entryId"] = "id-0"
    assert post(emu, "/v1.0-alpha1/publish/bulk/ps/orders", dup).status_code == 400
    assert post(emu, "/v1.0-alpha1/publish/bulk/ps/orders", [{"event": CE}]).status_code == 400
    assert emu.received == []


def test_bulk_partial_failure_lists_failed_entries(emu: DaprEmulator) -> None:
    emu.fail_entries(0.5)
    r = post(emu, "/v1.0-alpha1/publish/bulk/ps/orders", entries(40))
    assert r.status_code == 500
    failed = {e["entryId"] for e in r.json()["failedEntries"]}
    assert r.json()["errorCode"] == "ERR_PUBSUB_PUBLISH_MESSAGE"
    assert failed and len(failed) < 40
    assert {d.entry_id for d in emu.received} == {f"id-{i}" for i in range(40)} - failed


def test_sidecar_versions(emu: DaprEmulator) -> None:
    emu.stable_bulk = False  # Dapr < 1.17
    r = post(emu, "/v1.0/publish/bulk/ps/orders", entries(1))
    assert r.status_code == 404 and "pubsub bulk not found" in r.json()["message"]
    assert post(emu, "/v1.0-alpha1/publish/bulk/ps/orders", entries(1)).status_code == 204
    emu.bulk_supported = False  # Dapr < 1.10
    assert post(emu, "/v1.0-alpha1/publish/bulk/ps/orders", entries(1)).status_code == 404


def test_faults(emu: DaprEmulator) -> None:
    emu.respond_status(503)
    assert post(emu, "/v1.0/publish/ps/orders", CE).status_code == 503
    emu.respond_status(None)
    emu.fail_fraction(1.0, status=500)
    r = post(emu, "/v1.0-alpha1/publish/bulk/ps/orders", entries(2))
    assert r.status_code == 500 and len(r.json()["failedEntries"]) == 2
    emu.reset_faults()
    emu.delay(0.1)
    started = time.monotonic()
    assert post(emu, "/v1.0/publish/ps/orders", CE).status_code == 204
    assert time.monotonic() - started >= 0.1
    emu.reset_faults()
    emu.hang(True)
    with pytest.raises(httpx.ReadTimeout):
        HTTP.post(emu.url + "/v1.0/publish/ps/orders", content=b"{}", timeout=0.2)
    emu.hang(False)
    emu.refuse()
    with pytest.raises(httpx.ConnectError):
        HTTP.get(emu.url + "/v1.0/healthz")
    emu.resume()
    assert HTTP.get(emu.url + "/v1.0/healthz").status_code == 204
    assert len(emu.received) == 1


def test_cli_prints_received_events(tmp_path: Path) -> None:
    with DaprEmulator() as probe:
        port = probe.port  # a free port, released when the probe stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.dapr_emulator", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                r = HTTP.post(
                    f"http://127.0.0.1:{port}/v1.0/publish/pubsub-kafka/t1",
                    content=json.dumps(CE),
                    headers={"content-type": "application/cloudevents+json"},
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "emulator CLI did not start"
                time.sleep(0.05)
        assert r.status_code == 204
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["topic"] == "t1" and line["event"]["id"] == "e-1"
    finally:
        proc.terminate()
        proc.wait(10)
