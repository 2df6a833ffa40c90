"""The emulated Dapr sidecar as a quiet process of its own, for the relay benchmarks.

    python -m bench._sidecar --port P --dump FILE

Records nothing on stdout (so its own CPU stays small); SIGUSR1 toggles "hung" (requests are
accepted and never answered); on SIGTERM writes one JSON line per received event (topic,
type, id, task id, receive time) to FILE and exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

from tests.support.dapr_emulator import DaprEmulator


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dump", required=True)
    args = parser.parse_args()
    # A plain flag, not threading.Event: the handler runs in the main thread, and Event.set()
    # there deadlocks when the signal lands while that thread is inside Event.wait() (it
    # holds the Event's lock); a process stuck that way was seen after a "hung" round.
    stopped = [False]

    def request_stop(*_: object) -> None:
        stopped[0] = True

    signal.signal(signal.SIGTERM, request_stop)
    with DaprEmulator(port=args.port) as emulator:
        hung = [False]

        def toggle(*_: object) -> None:
            hung[0] = not hung[0]
            emulator.hang(hung[0])

        signal.signal(signal.SIGUSR1, toggle)
        while not stopped[0]:
            time.sleep(0.2)  # a signal interrupts the sleep; its handler only sets the flag
        emulator.hang(False)
        received = emulator.received
    with open(args.dump, "w", encoding="utf-8") as out:
        for d in received:
            event: dict[str, Any] = d.event if isinstance(d.event, dict) else {}
            data: dict[str, Any] = event["data"] if isinstance(event.get("data"), dict) else {}
            line = [d.topic, event.get("type"), event.get("id"), data.get("task_id"), d.received_at]
            out.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
