"""The app's outbox relay (issue 8, T-016): the generic `hooks` relay with the Dapr transport.

- Beside the API: `running_relay(settings)` in the FastAPI lifespan (`app.state.relay`), as a
  child process (`relay_process.py`) or a task of the API's loop (RELAY_MODE); requests never
  wait for it and never see its errors.
- Alone: `run_relay_forever(settings)` (`pakaura relay`), until SIGTERM/SIGINT.
- `print_outbox_status()` / `retry_outbox_now()` for `pakaura outbox status|retry`.

Only one process per database relays at a time (advisory lock on PostgreSQL, lock file on
SQLite); the others stand by and take over within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import sqlalchemy as sa
from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from hooks import (
    DEFAULT_NOTIFY_CHANNEL,
    OutboxRelay,
    RelayMetrics,
    Transport,
    outbox_retry,
    outbox_status,
)
from src.config import Settings, SettingsError

if TYPE_CHECKING:
    from src.events.relay_process import RelayProcess
    from src.events.transport import DaprTransport

__all__ = [
    "METRICS_CONTENT_TYPE",
    "RelayHandle",
    "build_relay",
    "new_registry",
    "print_outbox_status",
    "retry_outbox_now",
    "run_relay_forever",
    "running_relay",
    "start_relay",
]

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def new_registry() -> CollectorRegistry:
    """A registry with the process metrics (memory, CPU, GC) for one app or relay process.

    A fresh one per app instance: tests build many apps in one process, and prometheus-client
    refuses to register a metric twice on the global registry.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class RelayHandle:
    """The running relay of this process (or why there is none), for /health and /metrics."""

    relay: OutboxRelay | None
    registry: CollectorRegistry
    disabled_reason: str | None = None
    _closers: list[Any] = field(default_factory=list)
    child: RelayProcess | None = None

    def status(self) -> dict[str, Any]:
        """The relay part of /health: state (leader, standby, …), backlog, oldest age."""
        if self.child is not None:
            return self.child.status()
        if self.relay is None:
            return {"state": "disabled", "reason": self.disabled_reason}
        return self.relay.status().as_dict()

    def metrics(self) -> bytes:
        """The Prometheus exposition for /metrics (content type `METRICS_CONTENT_TYPE`)."""
        own = generate_latest(self.registry)
        return own + self.child.metrics() if self.child is not None else own

    async def stop(self) -> None:
        """Drains for at most RELAY_DRAIN_TIMEOUT seconds; unsent events stay in the outbox."""
        if self.child is not None:
            await self.child.stop()
        if self.relay is not None:
            await self.relay.stop()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        self._closers.clear()


def _outbox_table() -> sa.Table:
    from src.models import outbox_table

    return outbox_table


def _engine(settings: Settings | None = None) -> sa.Engine:
    """The app's engine, or for the commands a small one of their own on `settings`."""
    from src.db import get_engine, make_engine

    if settings is None:
        return get_engine()
    return make_engine(settings.database_url, pool_size=2)


def build_relay(
    settings: Settings,
    *,
    engine: sa.Engine | None = None,
    registry: CollectorRegistry | None = None,
) -> tuple[OutboxRelay, Any]:
    """The relay for `settings` and its transport (close it with `aclose()` after stopping)."""
    from src.events.transport import DaprTransport
    from src.events.wiring import outbox_wakeup

    transport = DaprTransport(settings)
    engine = engine if engine is not None else _engine()
    relay = OutboxRelay(
        engine,
        _outbox_table(),
        _traced(transport, engine),
        wake=outbox_wakeup(),
        batch_size=settings.relay_batch_size,
        poll_interval=settings.relay_poll_interval,
        linger=settings.relay_linger,
        max_backoff=settings.relay_max_backoff,
        drain_timeout=settings.relay_drain_timeout,
        # The transport bounds each HTTP call by DAPR_PUBLISH_TIMEOUT; this only guards
        # against one that never returns.
        send_timeout=max(30.0, 10 * settings.dapr_publish_timeout),
        ready=transport.check_ready,
        destination=transport.base_url,
        notify_channel=DEFAULT_NOTIFY_CHANNEL,
        metrics=RelayMetrics(registry if registry is not None else new_registry()),
    )
    return relay, transport


def _traced(transport: DaprTransport, engine: sa.Engine) -> Transport:
    """The transport with a delivery span per event, linked to the change's span, when
    OTEL_* turned tracing on (issue 19); the bare transport otherwise."""
    from src import tracing

    tracer = tracing.tracer()
    if tracer is None:
        return transport
    from src.events.tracing_transport import TracingTransport

    tracing.instrument_engine(engine)
    return TracingTransport(transport, tracer)


def _disabled_reason(settings: Settings, *, standalone: bool) -> str | None:
    if not settings.dapr_enabled:
        return "DAPR_ENABLED is false: events are not published, the outbox does not grow"
    if not standalone and not settings.relay_enabled:
        return "RELAY_ENABLED is false: another process runs `pakaura relay`"
    return None


async def start_relay(
    settings: Settings,
    *,
    engine: sa.Engine | None = None,
    registry: CollectorRegistry | None = None,
) -> RelayHandle:
    """Starts the API's relay in the background, as a child process or a task of this loop
    (RELAY_MODE); returns at once, never blocks on the sidecar. A disabled handle when
    DAPR_ENABLED or RELAY_ENABLED is false."""
    registry = registry if registry is not None else new_registry()
    reason = _disabled_reason(settings, standalone=False)
    if reason is not None:
        logger.bind(relay_state="disabled").info(f"outbox relay not started: {reason}")
        return RelayHandle(None, registry, reason)
    if settings.relay_in_child:
        from src.events.relay_process import RelayProcess

        child = RelayProcess(settings)
        await child.start()
        return RelayHandle(None, registry, None, child=child)
    relay, transport = build_relay(settings, engine=engine, registry=registry)
    await relay.start()
    return RelayHandle(relay, registry, None, [transport.aclose])


@contextlib.asynccontextmanager
async def running_relay(
    settings: Settings,
    *,
    engine: sa.Engine | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[RelayHandle]:
    """`start_relay` … `stop` as an async context manager, for the FastAPI lifespan."""
    handle = await start_relay(settings, engine=engine, registry=registry)
    try:
        yield handle
    finally:
        await handle.stop()


# Runs beside the relay with it and a `stop` callable (the child process's reporting).
Watch = Callable[[OutboxRelay, Callable[[], None]], Coroutine[Any, Any, None]]


async def _run_standalone(
    settings: Settings, registry: CollectorRegistry | None, watch: Watch | None
) -> None:
    from src.db import create_tables

    engine = _engine(settings)
    if settings.database_create_tables:
        await asyncio.to_thread(create_tables, engine)
    relay, transport = build_relay(settings, engine=engine, registry=registry)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Future[None]] = []

    def stop() -> None:
        stopping.append(asyncio.ensure_future(relay.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop)
    watcher = asyncio.create_task(watch(relay, stop)) if watch is not None else None
    logger.info("pakaura relay started")
    try:
        await relay.run()
    finally:
        if watcher is not None:
            watcher.cancel()
        await transport.aclose()
        engine.dispose()


def run_relay_forever(
    settings: Settings, *, registry: CollectorRegistry | None = None, watch: Watch | None = None
) -> None:
    """`pakaura relay` (and the API's child relay): relays until SIGTERM/SIGINT (or `watch`
    stops it), then drains and exits."""
    from src.logging_setup import configure_logging

    reason = _disabled_reason(settings, standalone=True)
    if reason is not None:
        raise SettingsError(f"nothing to relay: {reason} (set DAPR_ENABLED=true)")
    configure_logging(settings)
    from src import tracing

    tracing.configure_from_env()  # delivery spans when OTEL_* asks for them (issue 19)
    asyncio.run(_run_standalone(settings, registry, watch))


def print_outbox_status(settings: Settings, stream: IO[str]) -> None:
    """`pakaura outbox status`: backlog, oldest pending age, retries, relay leader."""
    engine = _engine(settings)
    try:
        status = outbox_status(engine, _outbox_table())
    finally:
        engine.dispose()
    stream.write("\n".join(status.lines()) + "\n")


def retry_outbox_now(settings: Settings) -> int:
    """`pakaura outbox retry`: every event that failed before is due now; returns how many."""
    engine = _engine(settings)
    try:
        return outbox_retry(engine, _outbox_table(), notify_channel=DEFAULT_NOTIFY_CHANNEL)
    finally:
        engine.dispose()
