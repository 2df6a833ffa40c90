"""The Dapr sidecar emulator the tests and benchmarks use: `pakaura dev-sidecar`'s server.

The server, its Dapr HTTP API slice and its fault switches (`refuse`/`resume`, `hang`,
`fail_fraction`, `fail_entries`, `respond_status`, `delay`, `reset_faults`) live in
`src.dev_sidecar` (see its docstring); this module keeps the name the tests import and the
emulator's default of a single pub/sub component named `pubsub-kafka`.

Usage::

    with DaprEmulator(pubsubs={"pubsub-kafka"}) as dapr:
        os.environ["DAPR_HTTP_PORT"] = str(dapr.port)
        ...
        assert dapr.wait_for(2)[0].topic == "task-events"

By hand: `pakaura dev-sidecar` (readable), or `python -m tests.support.dapr_emulator --port 3500
[--token T] [--pubsub NAME]`, which prints one JSON line per received event (topic, metadata,
event).
"""

from __future__ import annotations

import argparse

from src.dev_sidecar import CLOUDEVENTS_JSON, Call, Delivery, DevSidecar, run

__all__ = ["CLOUDEVENTS_JSON", "Call", "DaprEmulator", "Delivery"]


class DaprEmulator(DevSidecar):
    """An emulated Dapr sidecar on 127.0.0.1 (see `src.dev_sidecar`)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.dapr_emulator",
        description="Emulated Dapr sidecar: prints every received event as a JSON line.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3500)
    parser.add_argument("--pubsub", action="append", help="pubsub name (repeatable)")
    parser.add_argument("--topic", action="append", help="allowed topic (repeatable; default all)")
    parser.add_argument("--token", help="require this dapr-api-token")
    parser.add_argument("--no-bulk", action="store_true", help="emulate a sidecar without bulk")
    args = parser.parse_args(argv)
    run(
        host=args.host,
        port=args.port,
        token=args.token,
        pubsubs=args.pubsub or ["pubsub-kafka"],
        allowed_topics=args.topic,
        bulk_supported=not args.no_bulk,
        as_json=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
