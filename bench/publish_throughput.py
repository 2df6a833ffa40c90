"""Publisher throughput and CPU cost per event against the Dapr emulator (T-011).

    python -m bench.publish_throughput [--events 20000] [--batch 500] [--mode auto|never]
                                       [--in-process]

Sends pre-serialised events (as the outbox relay does) through `DaprTransport` in batches and
prints events/s and the publishing process's CPU time per event. By default the emulator runs
in its own process, so its CPU does not count against the publisher.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from src.config import Settings
from src.events.schemas import build_sync_event, build_task_event, topic_for
from src.events.transport import DaprTransport

from hooks import Message, Outcome


def _messages(count: int, settings: Settings) -> list[Message]:
    now = datetime.now(UTC)
    out: list[Message] = []
    task_id = 0
    while len(out) < count:
        task_id += 1
        user_id = f"user-{task_id % 50}"
        row: dict[str, Any] = {
            "id": task_id,
            "user_id": user_id,
            "title": f"Task number {task_id}",
            "description": "Some description text of a typical length for a task.",
            "completed": False,
            "due_date": None,
            "created_at": now,
            "updated_at": now,
        }
        for event in (
            build_task_event(
                action="created", task=row, changes=None, source="bench", correlation_id="r"
            ),
            build_sync_event(
                action="created",
                task_id=task_id,
                user_id=user_id,
                source="bench",
                correlation_id="r",
            ),
        ):
            out.append(
                Message(event.id, topic_for(event.type, settings), str(task_id), event.to_json())
            )
    return out[:count]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("emulator did not start")


async def _run(settings: Settings, messages: list[Message], batch: int) -> tuple[float, float, int]:
    transport = DaprTransport(settings)
    ok = 0
    await transport.send(messages[:batch])  # warm-up: connection, bulk path discovery
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(messages), batch):
        results = await transport.send(messages[start : start + batch])
        ok += sum(r.outcome is Outcome.OK for r in results)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await transport.aclose()
    return wall, cpu, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--mode", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--in-process", action="store_true", help="emulator in this process")
    args = parser.parse_args()
    logger.remove()  # measure publishing, not log formatting

    port = _free_port()
    proc = None
    emulator = None
    if args.in_process:
        from tests.support.dapr_emulator import DaprEmulator

        emulator = DaprEmulator(port=port).start()
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dapr_emulator", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(port)
    try:
        settings = Settings(
            dapr_enabled=True,
            dapr_http_port=port,
            dapr_bulk_publish=args.mode,
            dapr_publish_timeout=10.0,
        )
        messages = _messages(args.events, settings)
        wall, cpu, ok = asyncio.run(_run(settings, messages, args.batch))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if emulator is not None:
            emulator.stop()
    print(
        f"mode={args.mode} batch={args.batch} events={len(messages)} delivered={ok} "
        f"wall={wall:.2f}s rate={len(messages) / wall:,.0f} events/s "
        f"publisher_cpu={cpu / len(messages) * 1e6:.1f} us/event"
    )
    return 0 if ok == len(messages) else 1


if __name__ == "__main__":
    raise SystemExit(main())
