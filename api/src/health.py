"""`GET /health`: liveness plus a summary (database, outbox backlog, relay)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from hooks import utc_now
from src.db import get_engine
from src.models import outbox_table

__all__ = ["outbox_summary", "router"]

router = APIRouter(tags=["health"])


def outbox_summary(engine: sa.Engine) -> dict[str, Any]:
    """Backlog size and the age in seconds of the oldest waiting event."""
    with engine.connect() as conn:
        count, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(outbox_table.c.created_at))
        ).one()
    if isinstance(oldest, str):  # SQLite aggregate bypasses the column type
        oldest = datetime.fromisoformat(oldest)
    age = None
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=utc_now().tzinfo)
        age = round((utc_now() - oldest).total_seconds(), 3)
    return {"backlog": int(count), "oldest_pending_age_seconds": age}


def _check() -> tuple[bool, dict[str, Any]]:
    engine = get_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True, {"database": "ok", "outbox": outbox_summary(engine)}
    except sa.exc.SQLAlchemyError as exc:
        return False, {"database": f"unavailable ({type(exc).__name__})"}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    ok, body = await run_in_threadpool(_check)
    relay = getattr(request.app.state, "relay", None)
    body["relay"] = relay.status() if relay is not None else {"state": "disabled"}
    body["status"] = "ok" if ok else "degraded"
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition: relay counters (published, failed, backlog, latency), process."""
    from src.events.relay_service import METRICS_CONTENT_TYPE, new_registry

    relay = getattr(request.app.state, "relay", None)
    if relay is not None:
        body = relay.metrics()
    else:
        from prometheus_client import generate_latest

        body = generate_latest(new_registry())
    return Response(body, media_type=METRICS_CONTENT_TYPE)
