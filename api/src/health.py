"""Probes and the health summary.

- `GET /livez`: the process serves requests. Touches no database, so a database outage does
  not make Kubernetes restart every API pod (T-020 chart: liveness probe).
- `GET /readyz`: the database answers and holds the migrated schema; 503 otherwise (the
  readiness and start-up probes: no traffic to a pod that can only answer 503).
- `GET /health`: the summary (database, outbox backlog and oldest pending age, relay state).
  Internal error text (exception names, the relay's last error) only with a valid token.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from hooks import utc_now
from src.db import get_engine
from src.deps import OptionalUser
from src.models import Task, outbox_table

__all__ = ["outbox_summary", "router"]

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    database: Literal["ok", "unavailable", "not migrated"]


class OutboxSummary(BaseModel):
    backlog: int = Field(ge=0)
    oldest_pending_age_seconds: float | None = Field(
        description="Age of the oldest waiting event; null when none waits."
    )


class HealthSummary(BaseModel):
    status: Literal["ok", "degraded"]
    database: str = Field(
        description='"ok", or "unavailable" (with the cause for a caller with a valid token)'
    )
    outbox: OutboxSummary | None = Field(
        default=None, description="Absent when the database is unavailable."
    )
    relay: dict[str, Any] = Field(description="State of this process's outbox relay.")


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


@lru_cache(maxsize=1)
def _head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    from src.migrate import MIGRATIONS

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _readiness() -> Readiness:
    """Reachable, the app's tables there, and (when Alembic manages it) at the head."""
    try:
        with get_engine().connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            needed = {Task.__tablename__, outbox_table.name}
            migrated = needed <= tables
            if migrated and "alembic_version" in tables:
                versions = conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                migrated = _head_revision() in set(versions.scalars())
    except sa.exc.SQLAlchemyError:
        return Readiness(status="unavailable", database="unavailable")
    if not migrated:
        return Readiness(status="unavailable", database="not migrated")
    return Readiness(status="ready", database="ok")


def _check(detailed: bool) -> tuple[bool, dict[str, Any]]:
    engine = get_engine()
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True, {"database": "ok", "outbox": outbox_summary(engine)}
    except sa.exc.SQLAlchemyError as exc:
        cause = f" ({type(exc).__name__})" if detailed else ""
        return False, {"database": f"unavailable{cause}"}


_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {"description": "Not ready (see the body)"}
}


@router.get("/livez", response_model=Liveness, summary="Liveness: the process serves")
async def livez() -> Liveness:
    return Liveness()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: database reachable and migrated",
    responses={503: {"model": Readiness, "description": "Database unreachable or not migrated"}},
)
async def readyz() -> JSONResponse:
    readiness = await run_in_threadpool(_readiness)
    code = status.HTTP_200_OK if readiness.status == "ready" else 503
    return JSONResponse(readiness.model_dump(), status_code=code)


@router.get(
    "/health",
    response_model=HealthSummary,
    summary="Summary: database, outbox backlog, relay",
    responses={503: {"model": HealthSummary, "description": "Database unavailable"}},
)
async def health(request: Request, user: OptionalUser) -> JSONResponse:
    detailed = user is not None
    ok, body = await run_in_threadpool(_check, detailed)
    relay = getattr(request.app.state, "relay", None)
    relay_status = relay.status() if relay is not None else {"state": "disabled"}
    if not detailed and relay_status.get("last_error") is not None:
        relay_status = {**relay_status, "last_error": "hidden (send a valid token to see it)"}
    body["relay"] = relay_status
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
