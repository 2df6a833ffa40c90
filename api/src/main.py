"""The FastAPI application factory and its lifespan."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from src import tracing
from src.auth import build_token_verifier, issue_token  # noqa: F401 - re-exported
from src.config import Settings, get_settings
from src.db import create_tables, get_engine
from src.deps import Unauthorized, unauthorized_response
from src.health import router as health_router
from src.logging_setup import configure_logging
from src.mcp_server import mount_mcp
from src.request_context import correlation_id
from src.routes.tasks import router as tasks_router
from src.services import TaskNotFound
from src.tracing import from_headers, request_trace

__all__ = ["create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024
REQUEST_ID_HEADER = b"x-request-id"
TRACEPARENT_HEADER = b"traceparent"
TRACESTATE_HEADER = b"tracestate"


class _BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit. An HTTPException, so FastAPI's body
    parsing re-raises it (any other exception there becomes a 400) and answers 413."""

    def __init__(self) -> None:
        super().__init__(
            status.HTTP_413_CONTENT_TOO_LARGE, f"request body larger than {MAX_BODY_BYTES} bytes"
        )


class RequestContextMiddleware:
    """Accepts or generates `X-Request-ID`, echoes it, binds it to logs and events.

    Plain ASGI (not BaseHTTPMiddleware) to keep per-request overhead small; it also refuses
    bodies declared larger than `MAX_BODY_BYTES` with 413 before anything reads them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        length = 0
        traceparent: bytes | None = None
        tracestate: list[bytes] = []
        for key, value in scope["headers"]:
            if key == REQUEST_ID_HEADER:
                request_id = value.decode("latin-1")[:128]
            elif key == b"content-length" and value.isdigit():
                length = int(value)
            elif key == TRACEPARENT_HEADER:
                traceparent = value
            elif key == TRACESTATE_HEADER:
                tracestate.append(value)
        request_id = request_id or uuid.uuid4().hex
        token = correlation_id.set(request_id)
        # The W3C trace context of the changes this request makes (issue 19); malformed or
        # missing -> a new trace. With OpenTelemetry on, its request span takes precedence.
        trace_token = request_trace.set(from_headers(traceparent, tracestate))
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER, raw_id)]
            await send(message)

        # A chunked body declares no length: count what arrives, so a streamed body cannot
        # grow past the limit in memory either (issue 7: 200 MiB used to be read whole).
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        too_large = JSONResponse(
            {"detail": f"request body larger than {MAX_BODY_BYTES} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        if length > MAX_BODY_BYTES:
            await too_large(scope, receive, send_with_id)
            correlation_id.reset(token)
            request_trace.reset(trace_token)
            return
        try:
            await self.app(scope, limited_receive, send_tracked)
        except _BodyTooLarge:
            # FastAPI turns it into a 413 itself; other mounted apps (MCP) land here.
            if not started:
                await too_large(scope, receive, send_with_id)
        except Exception:
            # Starlette's outermost error middleware would answer 500 without the id: answer
            # here, then re-raise for the server to log. The id stays bound (no reset), so
            # that log line carries it too; the context ends with the request's task.
            if not started:
                await _INTERNAL_ERROR(scope, receive, send_with_id)
            raise
        correlation_id.reset(token)
        request_trace.reset(trace_token)


_INTERNAL_ERROR = JSONResponse(
    {"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_safe(value: Any) -> Any:
    """An echoed input as JSON can carry it: NaN/Infinity become strings, and unpaired
    surrogates (valid as JSON escapes, not encodable as UTF-8) become U+FFFD."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _speak_of_characters(error: Any) -> Any:
    """pydantic words the length limit of an Annotated str (title: stripped, then checked) as
    "at most 200 items after validation": say characters, as for plain strings."""
    if (
        isinstance(error, dict)
        and error.get("type") in ("too_long", "too_short")
        and isinstance(error.get("input"), str)
    ):
        ctx = error.get("ctx") or {}
        if error["type"] == "too_long" and "max_length" in ctx:
            limit = ctx["max_length"]
            bound = "at most"
        elif error["type"] == "too_short" and "min_length" in ctx:
            limit = ctx["min_length"]
            bound = "at least"
        else:
            return error
        unit = "character" if limit == 1 else "characters"
        return {**error, "msg": f"String should have {bound} {limit} {unit}"}
    return error


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of this path answers (Starlette's 405 names one route's only,
    and the OpenAPI document promises them all)."""
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            allow = ", ".join(_allowed_methods(request.app, request.scope))
            exc = StarletteHTTPException(exc.status_code, exc.detail, {"Allow": allow})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler answered 500 when the echoed input was 1e999, NaN or "\ud800"
        # (issue 7).
        errors = [_speak_of_characters(error) for error in exc.errors()]
        detail = _json_safe(jsonable_encoder(errors))
        return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return unauthorized_response(request, exc)

    @app.exception_handler(TaskNotFound)
    async def _not_found(_: Request, exc: TaskNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # Nothing was committed; the client may retry once the database is back.
        logger.bind(error=type(exc).__name__).error("database unavailable")
        return JSONResponse(
            {"detail": "database unavailable, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )


# Swagger UI and ReDoc from assets packaged with fastapi-offline (FastAPI's defaults load them
# from a CDN: blank offline).
DOCS_ASSETS_URL = "/docs-assets"


def _relay_part(app: FastAPI) -> Callable[[Settings], AbstractAsyncContextManager[None]]:
    """The API's outbox relay (issue 8; a child process or a task of this loop, RELAY_MODE),
    unless DAPR_ENABLED or RELAY_ENABLED is false.

    It starts in the background: the API serves while the relay waits for the sidecar.
    """

    @asynccontextmanager
    async def part(settings: Settings) -> AsyncIterator[None]:
        from src.events.relay_service import running_relay

        async with running_relay(settings) as handle:
            app.state.relay = handle
            try:
                yield
            finally:
                app.state.relay = None

    return part


def create_app(settings: Settings | None = None, *, local_secret: bool = False) -> FastAPI:
    """Builds the app. Settings are read now so a bad setting fails at start-up.

    `local_secret`: a generated local secret may stand in for `BETTER_AUTH_SECRET`; only
    `pakaura serve` on a loopback address says so. Anything else fails closed.
    """
    settings = settings or get_settings()
    configure_logging(settings)
    token_verifier = build_token_verifier(settings, local_secret=local_secret)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            engine = get_engine()
            tracing.instrument_engine(engine)  # a no-op unless OTEL_* turned tracing on
            if settings.database_create_tables:
                create_tables(engine)
            for enter in app.state.lifespan_parts:
                await stack.enter_async_context(enter(settings))
            logger.bind(dapr_enabled=settings.dapr_enabled).info("pakaura api started")
            yield
        logger.info("pakaura api stopped")

    app = FastAPIOffline(
        title="Pakaura task API",
        version="0.1.0",
        lifespan=lifespan,
        description="Tasks per user. Every committed change becomes CloudEvents on Dapr.",
        static_url=DOCS_ASSETS_URL,
    )
    app.state.token_verifier = token_verifier
    app.state.settings = settings
    # Async context managers entered in order at start-up (relay, MCP session manager).
    app.state.lifespan_parts = [_relay_part(app)]
    app.state.relay = None
    app.add_middleware(RequestContextMiddleware)
    _install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(tasks_router)
    mount_mcp(app, settings)
    _instrument(app)
    return app


def _instrument(app: FastAPI) -> None:
    """The FastAPI instrumentation (a server span per request, continuing its `traceparent`)
    when the `OTEL_*` variables turn tracing on and the `tracing` extra is installed."""
    if not tracing.configure_from_env():
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No spans per ASGI receive/send message: three spans a request, for little to see.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=tracing.provider(), exclude_spans=["receive", "send"]
    )
