"""W3C trace context of a change, and optional OpenTelemetry spans (issue 19).

Capture. Every Task change is done in some trace context, which its CloudEvents carry as the
distributed-tracing extension attributes `traceparent` / `tracestate`:

- with OpenTelemetry on, the current span (the FastAPI instrumentation's request span, which
  continues the request's `traceparent` header);
- otherwise the request's `traceparent` / `tracestate` headers as parsed by the request
  middleware (`from_headers`): a missing or malformed `traceparent` starts a new trace, as an
  instrumented server does, and is never an error;
- outside a request (stdio MCP, scripts) a new trace per database transaction, unless the
  caller set one (`request_trace`, or an OpenTelemetry span of its own).

`change_context()` answers that at flush time; the ORM hooks' rule writes it into each event,
so it is stored in the outbox row with the change and survives until delivery.

Spans. With the optional `tracing` extra installed and the standard `OTEL_*` variables set
(`configure_from_env`), the API gets the FastAPI and SQLAlchemy instrumentations, a span per
outbox write (`src.events.wiring`) and the relay a span per delivered event linked to the
context its event carries (`src.events.tracing_transport`). With nothing configured none of
this is imported and the only cost is the context strings above.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from loguru import logger
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "TraceContext",
    "change_context",
    "configure_from_env",
    "disable",
    "enable",
    "from_headers",
    "install_transaction_context",
    "instrument_engine",
    "is_enabled",
    "new_traceparent",
    "parse_traceparent",
    "provider",
    "request_trace",
    "trace_headers",
    "traceparent_of",
    "tracer",
    "tracing_wanted",
]

DEFAULT_SERVICE_NAME: Final = "pakaura-api"
_HEX: Final = frozenset("0123456789abcdef")
_TRACEPARENT_KEY: Final = '"traceparent":"'
_TRACESTATE_KEY: Final = '"tracestate":'
# W3C: a tracestate of up to 512 characters must be propagated; longer ones may be dropped.
_MAX_TRACESTATE: Final = 512
_DECODER: Final = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context: a valid version-00 `traceparent` and an optional `tracestate`."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def sampled(self) -> bool:
        return bool(int(self.traceparent[53:55], 16) & 1)


# Set by the request middleware (REST and MCP over HTTP), or by a caller that wants its own
# trace for the changes it makes; copied into the worker threads that run sync endpoints.
request_trace: ContextVar[TraceContext | None] = ContextVar("request_trace", default=None)
# The trace of the current database transaction outside a request (`_transaction_begins`).
_transaction_trace: ContextVar[TraceContext | None] = ContextVar("transaction_trace", default=None)


# --- W3C trace context ---------------------------------------------------------------------


def parse_traceparent(value: str | bytes | None) -> str | None:
    """The `traceparent` as version 00, or None when it is malformed (W3C Trace Context §3.2).

    A higher version is read by its first four fields, as the spec asks; all-zero ids, the
    version `ff`, upper-case hex and wrong lengths are malformed.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip(" \t")
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, parent_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if not _HEX.issuperset(version + trace_id + parent_id + flags) or version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


def _clean_tracestate(values: Iterable[str | bytes]) -> str | None:
    """Several `tracestate` headers are one list (joined by commas); passed on unchanged when
    it is printable ASCII of at most 512 characters, otherwise dropped (never an error)."""
    parts = [v.decode("latin-1") if isinstance(v, bytes) else v for v in values]
    joined = ",".join(p.strip(" \t") for p in parts if p.strip(" \t"))
    if not joined or len(joined) > _MAX_TRACESTATE:
        return None
    if not all(" " <= c <= "~" for c in joined):
        return None
    return joined


def new_traceparent() -> str:
    """A new trace: random trace id and parent id, sampled (what an instrumented server that
    samples everything would start)."""
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"


def from_headers(
    traceparent: str | bytes | None, tracestate: Iterable[str | bytes] = ()
) -> TraceContext:
    """The context of a request: its headers when `traceparent` is valid, else a new trace
    (its `tracestate` is then ignored too, as W3C asks)."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return TraceContext(new_traceparent())
    return TraceContext(parent, _clean_tracestate(tracestate))


def traceparent_of(body: str) -> str | None:
    """The `traceparent` attribute of a CloudEvent JSON written by the derivation, without
    parsing the whole event: the derivation puts it last, and the key cannot occur unescaped
    inside a string value. None when absent or malformed."""
    at = body.rfind(_TRACEPARENT_KEY)
    if at < 0:
        return None
    start = at + len(_TRACEPARENT_KEY)
    return (
        parse_traceparent(body[start : start + 55])
        if body[start + 55 : start + 56] == '"'
        else None
    )


def _tracestate_of(body: str) -> str | None:
    at = body.rfind(_TRACESTATE_KEY)
    if at < 0:
        return None
    try:
        value, _ = _DECODER.raw_decode(body, at + len(_TRACESTATE_KEY))
    except ValueError:
        return None
    return value if isinstance(value, str) and value else None


def trace_headers(body: str) -> dict[str, str]:
    """`traceparent` (and `tracestate`) HTTP headers for publishing one event, so the sidecar
    continues the event's own trace; empty when the event carries none."""
    parent = traceparent_of(body)
    if parent is None:
        return {}
    state = _tracestate_of(body)
    return (
        {"traceparent": parent} if state is None else {"traceparent": parent, "tracestate": state}
    )


def _format(span_context: Any) -> TraceContext:
    state = span_context.trace_state.to_header() if span_context.trace_state else ""
    return TraceContext(
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}",
        state or None,
    )


def change_context() -> TraceContext | None:
    """The trace context of a change being flushed now (see the module docstring)."""
    if _tracer is not None:
        from opentelemetry import trace

        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            return _format(span_context)
    return request_trace.get() or _transaction_trace.get()


# --- a new trace per transaction outside requests ------------------------------------------

_installed = False
_PENDING: Final = "pakaura.trace.pending"
_install_lock = threading.Lock()
# Root transaction -> its trace; weak, so a finished transaction takes its entry with it.
_by_transaction: weakref.WeakKeyDictionary[SessionTransaction, TraceContext] = (
    weakref.WeakKeyDictionary()
)


def _has_caller_context() -> bool:
    if request_trace.get() is not None:
        return True
    if _tracer is not None:
        from opentelemetry import trace

        return bool(trace.get_current_span().get_span_context().is_valid)
    return False


def _enter_transaction(session: Session) -> None:
    """Makes the session's root transaction's trace current before anything derives events.

    Scripts and stdio MCP calls have no request: each database transaction starts its own
    trace, shared by all its flushes and statements (`clear_completed` in one trace).
    """
    if _has_caller_context():
        return
    root = session.get_transaction()
    if root is None:
        # An ORM statement first in its session: the transaction begins inside the statement
        # (after this listener); `_transaction_created` hands it this context then.
        context = session.info.get(_PENDING)
        if context is None:
            context = session.info[_PENDING] = TraceContext(new_traceparent())
    else:
        context = _by_transaction.get(root)
        if context is None:
            context = _by_transaction[root] = TraceContext(new_traceparent())
    _transaction_trace.set(context)


def _transaction_created(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and _PENDING in session.info:
        _by_transaction[transaction] = session.info.pop(_PENDING)


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    _enter_transaction(session)


def _do_orm_execute(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        _enter_transaction(state.session)


def install_transaction_context() -> None:
    """Registers the per-transaction trace on every `Session`; idempotent. `insert=True`: it
    must run before the hooks' own `do_orm_execute` listener derives the statement's events."""
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Session, "before_flush", _before_flush, insert=True)
        event.listen(Session, "do_orm_execute", _do_orm_execute, insert=True)
        event.listen(Session, "after_transaction_create", _transaction_created)
        _installed = True


# --- OpenTelemetry -------------------------------------------------------------------------

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_lock = threading.Lock()


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def tracing_wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the `OTEL_*` variables ask for spans: an exporter named (`OTEL_TRACES_EXPORTER`)
    or an OTLP endpoint set, and the SDK not disabled (`OTEL_SDK_DISABLED=true`)."""
    env = os.environ if env is None else env
    if _true(env.get("OTEL_SDK_DISABLED")):
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if exporters:
        return True
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def is_enabled() -> bool:
    return _tracer is not None


def provider() -> TracerProvider | None:
    return _provider


def tracer() -> Tracer | None:
    """The app's tracer when tracing is on, else None (callers skip their spans)."""
    return _tracer


def enable(tracer_provider: TracerProvider) -> None:
    """Turns spans on with `tracer_provider` (from `configure_from_env`, or a test's)."""
    global _provider, _tracer
    with _lock:
        _provider = tracer_provider
        _tracer = tracer_provider.get_tracer("pakaura")


def disable() -> None:
    """Turns spans off again (tests); instrumented engines keep their listeners."""
    global _provider, _tracer
    with _lock:
        _provider = None
        _tracer = None


def _exporters(names: str) -> list[Any]:
    exporters: list[Any] = []
    for name in [n.strip().lower() for n in names.split(",") if n.strip()]:
        if name == "otlp":
            protocol = os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            )
            if protocol.strip() != "http/protobuf":
                logger.bind(protocol=protocol).warning(
                    "OTLP protocol {} is not installed; exporting over http/protobuf", protocol
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # Endpoint, headers, time-out, compression: OTEL_EXPORTER_OTLP_* (read by it).
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            logger.bind(exporter=name).warning(
                "OTEL_TRACES_EXPORTER {!r} is not supported (otlp, console, none); ignored", name
            )
    return exporters


def configure_from_env() -> bool:
    """Sets OpenTelemetry up from the `OTEL_*` variables once per process; True when tracing is
    on. Without the `tracing` extra a warning says how to install it, and tracing stays off."""
    if _tracer is not None:
        return True
    if not tracing_wanted():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_* asks for traces but OpenTelemetry is not installed: "
            "pip install 'pakaura-backend[tracing]'; tracing stays off"
        )
        return False
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; our name replaces "unknown_service".
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), the batch sizes from OTEL_BSP_*.
    tracer_provider = TracerProvider(resource=resource)
    for exporter in _exporters(os.environ.get("OTEL_TRACES_EXPORTER", "otlp")):
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    enable(tracer_provider)
    logger.bind(service=resource.attributes.get(SERVICE_NAME)).info("OpenTelemetry tracing on")
    return True


def instrument_engine(engine: sa.Engine) -> None:
    """SQLAlchemy instrumentation (a span per statement) on `engine`, once, when tracing is on.

    Per engine rather than `SQLAlchemyInstrumentor().instrument()`: that patches
    `create_engine` only once per process, and the app's engine may exist already.
    """
    if _provider is None or engine in _engines:
        return
    from opentelemetry.instrumentation.sqlalchemy import __version__
    from opentelemetry.metrics import get_meter

    with _lock:
        if engine in _engines:
            return
        meter = get_meter("opentelemetry.instrumentation.sqlalchemy", __version__)
        usage = meter.create_up_down_counter(name="db.client.connections.usage", unit="connections")
        _engine_tracer_class()(
            _provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__),
            engine,
            usage,
        )
        event.listen(engine, "after_cursor_execute", _after_one_off)
        event.listen(engine, "handle_error", _one_off_failed)
        _engines.add(engine)


# SQLAlchemy runs one-off cursor statements (sequences, column defaults, and the hooks'
# outbox INSERT, which skips the execution context for speed: issue 4) with the execution
# context None; the instrumentation keeps its span on that context and raises
# AttributeError on None, failing the write. A stand-in context per cursor fixes that.
_ONE_OFF: Final = "pakaura.otel.one_off"


class _OneOffContext:
    __slots__ = ("_otel_span",)


_tracer_class: type | None = None


def _engine_tracer_class() -> type:
    global _tracer_class
    if _tracer_class is not None:
        return _tracer_class
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    class _EngineTracer(EngineTracer):
        def _before_cur_exec(
            self,
            conn: sa.Connection,
            cursor: Any,
            statement: str,
            params: Any,
            context: Any,
            executemany: bool,
        ) -> Any:
            if context is None:
                context = _OneOffContext()
                conn.info.setdefault(_ONE_OFF, {})[id(cursor)] = context
            return super()._before_cur_exec(conn, cursor, statement, params, context, executemany)

    _tracer_class = _EngineTracer
    return _tracer_class


def _after_one_off(
    conn: sa.Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool
) -> None:
    if context is not None:
        return
    pending = conn.info.get(_ONE_OFF)
    one_off = pending.pop(id(cursor), None) if pending else None
    span = getattr(one_off, "_otel_span", None)
    if span is not None:
        span.end()


def _one_off_failed(exception_context: Any) -> None:
    conn = exception_context.connection
    if exception_context.execution_context is not None or conn is None:
        return
    pending = conn.info.get(_ONE_OFF)
    one_off = pending.pop(id(exception_context.cursor), None) if pending else None
    span = getattr(one_off, "_otel_span", None)
    if span is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, str(exception_context.original_exception)))
        span.end()
