"""W3C trace context parsing and the attributes' place in the event JSON (issue 19)."""

from __future__ import annotations

import json

import pytest
from src import tracing
from src.tracing import (
    TraceContext,
    from_headers,
    new_traceparent,
    parse_traceparent,
    trace_headers,
    traceparent_of,
    tracing_wanted,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_kept() -> None:
    assert parse_traceparent(VALID) == VALID
    assert parse_traceparent(VALID.encode()) == VALID
    assert parse_traceparent(f" {VALID}\t") == VALID  # optional whitespace around the value


def test_a_future_version_is_read_by_its_first_four_fields() -> None:
    assert parse_traceparent("cc" + VALID[2:] + "-what-the-future-adds") == VALID
    assert parse_traceparent("cc" + VALID[2:]) == VALID


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        VALID.upper(),  # hex must be lower case
        VALID + "-extra",  # version 00 has exactly four fields
        VALID[:-1],
        "ff" + VALID[2:],  # forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "cc" + VALID[2:] + "x",  # a longer future version needs a dash after the flags
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\x00",
        "\u00e9" * 55,
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(value: str) -> None:
    assert parse_traceparent(value) is None
    context = from_headers(value.encode("utf-8"), [b"congo=t61rcWkgMzE"])
    assert parse_traceparent(context.traceparent) == context.traceparent
    assert context.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.tracestate is None  # W3C: no tracestate without a valid traceparent


def test_no_header_starts_a_new_sampled_trace_each_time() -> None:
    first, second = from_headers(None), from_headers(None)
    assert first.trace_id != second.trace_id
    assert first.sampled and parse_traceparent(first.traceparent) == first.traceparent
    assert parse_traceparent(new_traceparent()) is not None


def test_tracestate_is_passed_through_unchanged_or_dropped() -> None:
    state = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"
    assert from_headers(VALID, [state]).tracestate == state
    # Several headers are one list.
    assert from_headers(VALID, [b"a=1", b"b=2"]).tracestate == "a=1,b=2"
    assert from_headers(VALID, [b""]).tracestate is None
    assert from_headers(VALID, ["a=" + "x" * 600]).tracestate is None  # over 512 characters
    assert from_headers(VALID, ["a=\u00e9"]).tracestate is None  # not ASCII
    assert from_headers(VALID, ["a=\n1"]).tracestate is None


def test_trace_context_parts() -> None:
    context = TraceContext(VALID, "congo=t61rcWkgMzE")
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.parent_id == "00f067aa0ba902b7"
    assert context.sampled
    assert not TraceContext(VALID[:-2] + "00").sampled


def test_the_relay_reads_the_context_back_from_the_stored_json() -> None:
    body = json.dumps(
        {
            "data": {"title": '"traceparent":"00-11111111111111111111111111111111-'},
            "traceparent": VALID,
            "traceid": VALID,
            "tracestate": 'k="quoted"\\value',
        },
        separators=(",", ":"),
    )
    assert traceparent_of(body) == VALID
    assert trace_headers(body) == {"traceparent": VALID, "tracestate": 'k="quoted"\\value'}
    assert trace_headers('{"traceparent":"' + VALID + '"}') == {"traceparent": VALID}
    assert trace_headers('{"id":"1"}') == {}
    assert traceparent_of('{"traceparent":"nonsense"}') is None
    assert traceparent_of('{"traceparent":"' + VALID + 'x"}') is None


def test_tracing_is_off_unless_otel_variables_ask_for_it() -> None:
    assert not tracing_wanted({})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert not tracing_wanted({"OTEL_TRACES_EXPORTER": "  "})


def test_without_otel_variables_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_from_env() is False
    assert tracing.tracer() is None and tracing.provider() is None
    assert not tracing.is_enabled()
