"""CPU per sidecar request: aiohttp (the transport's) vs httpx vs the former hand-written client.

    python -m bench.bench_http_clients [--requests 2000] [--events 2] [--rounds 5]

A loopback server in its own process (`bench._sidecar`, the emulated Dapr sidecar) answers
each bulk publish with 204; the client process's CPU time (`time.process_time`) per request is
measured, medians of interleaved rounds. `--events` is the number of CloudEvents in each bulk
request (2: a typical relay round at rest; 500: a backlog batch). `bench/_handwritten_http.py`
is the hand-written HTTP/1.1 client the relay used before issue 15, kept here as the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
from src.config import Settings

from bench._handwritten_http import SidecarClient
from bench.publish_throughput import _free_port, _messages, _wait_listening

PATH = "/v1.0-alpha1/publish/bulk/pubsub-kafka/task-events"
HEADERS = {"Content-Type": "application/json"}


def _body(events: int) -> bytes:
    entries = ",".join(
        f'{{"entryId":"{m.id}","event":{m.body},"contentType":"application/cloudevents+json",'
        f'"metadata":{{"partitionKey":"{m.key}"}}}}'
        for m in _messages(events, Settings())[:events]
    )
    return f"[{entries}]".encode()


async def _aiohttp(base: str, body: bytes, n: int) -> float:
    async with aiohttp.ClientSession(base) as session:
        return await _timed(n, lambda: _aiohttp_one(session, body))


async def _aiohttp_one(session: aiohttp.ClientSession, body: bytes) -> None:
    async with session.post(PATH, data=body, headers=HEADERS) as response:
        assert response.status == 204, response.status


async def _httpx(base: str, body: bytes, n: int) -> float:
    async with httpx.AsyncClient(base_url=base) as client:

        async def one() -> None:
            response = await client.post(PATH, content=body, headers=HEADERS)
            assert response.status_code == 204, response.status_code

        return await _timed(n, one)


async def _handwritten(base: str, body: bytes, n: int) -> float:
    client = SidecarClient(base, timeout=5.0)
    try:

        async def one() -> None:
            response = await client.request("POST", PATH, body, HEADERS)
            assert response.status_code == 204, response.status_code

        return await _timed(n, one)
    finally:
        await client.aclose()


async def _timed(n: int, one: Callable[[], Awaitable[None]]) -> float:
    for _ in range(20):  # warm-up: connection, caches
        await one()
    started = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - started) / n * 1e6


CLIENTS = {"aiohttp": _aiohttp, "httpx": _httpx, "hand-written": _handwritten}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per client and round")
    parser.add_argument("--events", type=int, default=2, help="CloudEvents per bulk request")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        dump = str(Path(tmp) / "dump")
        server = subprocess.Popen(
            [sys.executable, "-m", "bench._sidecar", "--port", str(port), "--dump", dump]
        )
        try:
            _wait_listening(port)
            base = f"http://127.0.0.1:{port}"
            body = _body(args.events)
            results: dict[str, list[float]] = {name: [] for name in CLIENTS}
            for round_no in range(args.rounds):
                names = list(CLIENTS)
                names = names[round_no % 3 :] + names[: round_no % 3]
                for name in names:
                    results[name].append(asyncio.run(CLIENTS[name](base, body, args.requests)))
        finally:
            server.terminate()
            server.wait(30)
    print(f"| client ({args.events} events per request) | CPU per request (median) |")
    print("|---|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
