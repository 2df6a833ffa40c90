"""The API as run by the API-latency benchmark (bench/bench_relay.py `api`).

    python -m bench._api_server --mode off|outbox|seed --port P

Settings come from the environment (DATABASE_URL, DAPR_*, BETTER_AUTH_SECRET).

- `off`: events off (DAPR_ENABLED=false): neither outbox nor publishing.
- `outbox`: this design: ORM hooks write the outbox, the in-process relay (started by the
  app's lifespan) delivers.
- `seed`: the seed design for comparison: no outbox; after each successful task mutation the
  response waits for the lifecycle and sync events to be published to the sidecar, in the
  request, with the publisher's 2 s time-out (what T-014/T-017 did in the routes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]

_ACTIONS = {
    ("POST", False): "created",
    ("PATCH", True): "completed",
    ("PUT", False): "updated",
    ("PATCH", False): "updated",
}


class SeedPublishing:
    """Publishes in the request, after the route's work, as the seed routes did."""

    def __init__(self, app: Any, publisher: Any) -> None:
        self.app = app
        self.publisher = publisher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        held: list[ASGIMessage] = []

        async def hold(message: ASGIMessage) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        start = held[0] if held else {}
        if 200 <= start.get("status", 500) < 300:
            body = b"".join(m.get("body", b"") for m in held[1:])
            with contextlib.suppress(ValueError, KeyError, TypeError):
                task = json.loads(body)
                complete = bool(re.search(r"/complete$", scope["path"]))
                action = _ACTIONS.get((scope["method"], complete), "updated")
                await self.publisher.publish_task_event_from_dict(action, task)
                await self.publisher.publish_sync_event(action, task["id"], task["user_id"])
        for message in held:
            await send(message)


def build(mode: str) -> Any:
    from src.config import get_settings
    from src.db import get_engine  # noqa: F401 - models and hooks imported
    from src.main import create_app

    settings = get_settings()
    app = create_app(settings)
    if mode == "seed":
        from src.events.publisher import EventPublisher

        publisher = EventPublisher(settings.model_copy(update={"dapr_enabled": True}))
        return SeedPublishing(app, publisher)
    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["off", "outbox", "seed"], required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    uvicorn.run(
        build(args.mode), host="127.0.0.1", port=args.port, log_config=None, access_log=False
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
