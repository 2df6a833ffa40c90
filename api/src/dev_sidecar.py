"""`pakaura dev-sidecar`: a local stand-in for the Dapr sidecar's publish API (development).

With it, events are visible on a laptop without installing Dapr or Kafka: run
`pakaura dev-sidecar` in one shell and `DAPR_ENABLED=true pakaura serve` in another, and every
event the relay delivers is printed as it arrives. The test suite's Dapr emulator
(`tests/support/dapr_emulator.py`) is this same server.

It runs a small HTTP/1.1 server (raw `asyncio`, keep-alive) on loopback in a background thread
and records what it receives. What it implements, following the Dapr runtime's HTTP API
(pkg/api/http in dapr/dapr):

- `POST|PUT /v1.0/publish/{pubsub}/{topic}`: single publish. `metadata.*` query parameters
  become the message metadata. With `Content-Type: application/cloudevents+json` the body is
  kept as the envelope (Dapr only adds `topic`, `pubsubname`, and `traceid`/`traceparent`/
  `tracestate` when the event has no `traceid`); any other content type is wrapped in a new
  CloudEvent (`type` `com.dapr.event.sent`, `source` the app id, `data` the body) unless
  `metadata.rawPayload=true`. Answers 204.
- `POST|PUT /v1.0-alpha1/publish/bulk/{pubsub}/{topic}` and the stable
  `/v1.0/publish/bulk/{pubsub}/{topic}` (Dapr >= 1.17): a JSON array of entries
  `{entryId, event, contentType, metadata}`; entry ids must be present and unique (else 400).
  Entry metadata is merged over the request metadata as the runtime does. 204 when every entry
  is published; 500 with `{"failedEntries": [{"entryId", "error"}], "errorCode":
  "ERR_PUBSUB_PUBLISH_MESSAGE"}` when some are not (the others are recorded).
- `GET /v1.0/healthz/outbound` and `/v1.0/healthz`: 204 (500 when `healthy` is false). These
  two are exempt from the API token, as in Dapr.
- `dapr-api-token`: with a token (`token=` or `require_token(t)`), any other request without
  that header value gets 401 `invalid api token` (text/plain).
- Unknown pubsub (when `pubsubs` names them): 404 `ERR_PUBSUB_NOT_FOUND`; topic outside
  `allowed_topics`: 403 `ERR_PUBSUB_FORBIDDEN`; unknown route: 404 `404 page not found`.
- `bulk_supported = False` behaves like a sidecar older than 1.10: both bulk paths are missing;
  `stable_bulk = False` like one older than 1.17, where `/v1.0/publish/bulk/p/t` is routed as a
  single publish to a pubsub named `bulk` (hence 404 `pubsub bulk not found`);
  `alpha1_bulk = False` a (future) sidecar that dropped the alpha1 path.

Faults, for the tests and for watching the relay's retries by hand; all thread-safe and
effective for the next request:

- `refuse()` closes the listening socket and every open connection (connection refused, like a
  dead sidecar); `resume()` listens again on the same port.
- `hang(True)` accepts requests and never answers them (until `hang(False)`, then the connection
  is closed without an answer); nothing is recorded.
- `fail_fraction(p, status=500)` answers `status` to a fraction `p` of publish calls (bulk:
  every entry listed in `failedEntries`); `fail_entries(p)` fails a fraction of bulk entries.
- `respond_status(code)` answers every publish call with `code` (None to stop).
- `delay(seconds)` waits before answering.
- `reset_faults()` undoes all of these.

Reading what arrived: `received` (a snapshot list of `Delivery`), `events(topic)` (the
forwarded CloudEvents), `calls` (every HTTP request with its answer status), `connections`
(TCP connections accepted so far), `wait_for(n)`, `clear()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TextIO, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["CLOUDEVENTS_JSON", "Call", "Delivery", "DevSidecar", "format_delivery", "run"]

CLOUDEVENTS_JSON = "application/cloudevents+json"
_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_HEADER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message the emulated sidecar accepted, as it would hand it to the broker."""

    pubsub: str
    topic: str
    # Effective metadata (`metadata.*` query parameters, bulk: entry metadata over them).
    metadata: dict[str, str]
    content_type: str
    # The CloudEvent as Dapr forwards it (our envelope plus topic/pubsubname/trace fields, or a
    # Dapr-made envelope around a non-CloudEvent payload); the raw payload with rawPayload.
    event: Any
    # As published: the request body (bytes), or a bulk entry's `event` value.
    payload: Any
    bulk: bool
    entry_id: str | None
    path: str
    received_at: float = field(default_factory=time.time)

    @property
    def raw(self) -> bytes:
        """The payload bytes: the body, or the bulk entry's `event` as compact JSON (which is
        byte-for-byte what `CloudEvent.to_json()` produced for our events)."""
        if isinstance(self.payload, bytes):
            return self.payload
        if isinstance(self.payload, str) and not self.content_type.endswith("json"):
            return self.payload.encode()
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request and the status the emulator answered (None: no answer, e.g. hung)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int | None
    body_size: int


class _Request:
    __slots__ = ("body", "headers", "method", "path", "query", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        parts = urlsplit(target)
        self.path = unquote(parts.path)
        self.query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.headers = headers
        self.body = body


class _Response:
    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type


def _json_response(status: int, payload: Any) -> _Response:
    return _Response(status, json.dumps(payload).encode(), "application/json")


def _dapr_error(status: int, code: str, message: str) -> _Response:
    return _json_response(status, {"errorCode": code, "message": message})


class DevSidecar:
    """A stand-in Dapr sidecar on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        pubsubs: Iterable[str] | None = ("pubsub-kafka",),
        allowed_topics: Iterable[str] | None = None,
        token: str | None = None,
        app_id: str = "pakaura-api",
        bulk_supported: bool = True,
        stable_bulk: bool = True,
        alpha1_bulk: bool = True,
        seed: int = 0,
        on_delivery: Callable[[Delivery], None] | None = None,
        on_call: Callable[[Call], None] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._pubsubs = None if pubsubs is None else frozenset(pubsubs)
        self._allowed_topics = None if allowed_topics is None else frozenset(allowed_topics)
        self._token = token
        self.app_id = app_id
        self.bulk_supported = bulk_supported
        self.stable_bulk = stable_bulk
        self.alpha1_bulk = alpha1_bulk
        self._connections = 0
        self.healthy = True
        self._on_delivery = on_delivery
        self._on_call = on_call

        self._lock = threading.Lock()
        self._received: list[Delivery] = []
        self._calls: list[Call] = []
        self._random = random.Random(seed)
        self._ids = random.Random()  # trace ids; separate so faults stay reproducible

        self._hang = False
        self._fail_fraction = 0.0
        self._fail_status = 500
        self._fail_entries = 0.0
        self._respond_status: int | None = None
        self._delay = 0.0

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False
        # Set (in the loop) whenever `hang()` changes; created here, used only in the loop
        # (asyncio.Event binds to a loop on first wait, Python >= 3.10).
        self._hang_changed = asyncio.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._hang_changed = asyncio.Event()  # one per start: an Event binds to its loop
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="dev-sidecar", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stopping = True
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sidecar is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- what arrived --------------------------------------------------------------------------

    @property
    def received(self) -> list[Delivery]:
        with self._lock:
            return list(self._received)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def events(self, topic: str | None = None) -> list[Any]:
        """The forwarded events, optionally of one topic, in arrival order."""
        return [d.event for d in self.received if topic is None or d.topic == topic]

    @property
    def connections(self) -> int:
        """TCP connections accepted since start (keep-alive reuse keeps this low)."""
        return self._connections

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._calls.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        """Waits until at least `count` deliveries arrived; returns them (raises on time-out)."""
        return _wait_for_length(lambda: self.received, count, timeout, "deliveries")

    def wait_for_calls(self, count: int, timeout: float = 5.0) -> list[Call]:
        """Waits until at least `count` requests were answered (or given up, when hung)."""
        return _wait_for_length(lambda: self.calls, count, timeout, "calls")

    # --- configuration and faults --------------------------------------------------------------

    @property
    def pubsubs(self) -> frozenset[str] | None:
        """The pub/sub component names that exist (None: any name does)."""
        return self._pubsubs

    @pubsubs.setter
    def pubsubs(self, names: Iterable[str] | None) -> None:
        self._pubsubs = None if names is None else frozenset(names)

    @property
    def allowed_topics(self) -> frozenset[str] | None:
        return self._allowed_topics

    @allowed_topics.setter
    def allowed_topics(self, topics: Iterable[str] | None) -> None:
        self._allowed_topics = None if topics is None else frozenset(topics)

    def require_token(self, token: str | None) -> None:
        self._token = token

    def hang(self, on: bool = True) -> None:
        self._hang = on
        self._release_hung()

    def _release_hung(self) -> None:
        # Wakes the hung handlers (from any thread) so they re-check `_hang`.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._hang_changed.set)

    def fail_fraction(self, p: float, status: int = 500) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be between 0 and 1")
        self._fail_fraction, self._fail_status = p, status

    def fail_entries(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be between 0 and 1")
        self._fail_entries = p

    def respond_status(self, code: int | None) -> None:
        self._respond_status = code

    def delay(self, seconds: float) -> None:
        self._delay = max(0.0, seconds)

    def reset_faults(self) -> None:
        self._hang = False
        self._release_hung()
        self._fail_fraction, self._fail_status, self._fail_entries = 0.0, 500, 0.0
        self._respond_status = None
        self._delay = 0.0
        self.healthy = True

    def refuse(self) -> None:
        """Stops listening and drops open connections: new connections are refused."""
        self._run_in_loop(self._close_listener())

    def resume(self) -> None:
        """Listens again on the same port after `refuse()`."""
        self._run_in_loop(self._listen())

    # --- server internals ----------------------------------------------------------------------

    def _run_in_loop(self, coro: Any) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the sidecar is not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        port = self._port if self._port is not None else self._requested_port
        self._server = await asyncio.start_server(
            self._serve, self.host, port, reuse_address=True, limit=_MAX_HEADER
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if server is not None:
            await server.wait_closed()

    async def _shutdown(self) -> None:
        await self._close_listener()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._connections += 1
        try:
            while not self._stopping:
                request = await self._read_request(reader)
                if request is None:
                    return
                response = await self._respond(request)
                self._record_call(request, None if response is None else response.status)
                if response is None:  # hung: drop the connection without an answer
                    return
                keep_alive = request.headers.get("connection", "").lower() != "close"
                writer.write(self._encode(response, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            return
        except asyncio.CancelledError:
            # Shutting down; swallowed because asyncio's stream callback would log it.
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(chunks)
        else:
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
        return _Request(method, target, headers, body)

    @staticmethod
    def _encode(response: _Response, keep_alive: bool) -> bytes:
        reason = _REASONS.get(response.status, "Status")
        head = [f"HTTP/1.1 {response.status} {reason}"]
        if response.content_type:
            head.append(f"Content-Type: {response.content_type}")
        if response.status != 204:
            head.append(f"Content-Length: {len(response.body)}")
        if not keep_alive:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        return data if response.status == 204 else data + response.body

    def _record_call(self, request: _Request, status: int | None) -> None:
        call = Call(
            method=request.method,
            path=request.path,
            query=request.query,
            headers=request.headers,
            status=status,
            body_size=len(request.body),
        )
        with self._lock:
            self._calls.append(call)
        if self._on_call is not None:
            self._on_call(call)

    # --- routing -------------------------------------------------------------------------------

    async def _respond(self, request: _Request) -> _Response | None:
        if self._delay:
            await asyncio.sleep(self._delay)
        if self._hang:
            # Wait for `hang(False)` on an event, not by polling: a hung sidecar must not
            # burn CPU beside the process under test (its requests pile up while hung).
            while self._hang and not self._stopping:
                self._hang_changed.clear()
                if not self._hang:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hang_changed.wait(), 0.5)
            return None

        path = request.path.rstrip("/") or "/"
        if request.method == "GET" and path in ("/v1.0/healthz", "/v1.0/healthz/outbound"):
            if self.healthy:
                return _Response(204)
            return _dapr_error(500, "ERR_HEALTH_NOT_READY", "dapr is not ready")

        route = self._route(path)
        if route is None or request.method not in ("POST", "PUT"):
            return _Response(404, b"404 page not found\n", "text/plain; charset=utf-8")
        if self._token is not None and request.headers.get("dapr-api-token") != self._token:
            return _Response(401, b"invalid api token\n", "text/plain; charset=utf-8")

        bulk, pubsub, topic = route
        if self._respond_status is not None:
            return self._forced(self._respond_status, bulk, request)
        if self._fail_fraction and self._random.random() < self._fail_fraction:
            return self._forced(self._fail_status, bulk, request)
        if self._pubsubs is not None and pubsub not in self._pubsubs:
            return _dapr_error(404, "ERR_PUBSUB_NOT_FOUND", f"pubsub {pubsub} not found")
        if not topic:
            return _dapr_error(404, "ERR_TOPIC_EMPTY", f"topic is empty in pubsub {pubsub}")
        if self._allowed_topics is not None and topic not in self._allowed_topics:
            return _dapr_error(
                403,
                "ERR_PUBSUB_FORBIDDEN",
                f"topic {topic} is not allowed for app id {self.app_id}",
            )
        metadata = {k[9:]: v for k, v in request.query.items() if k.startswith("metadata.")}
        if bulk:
            return self._bulk_publish(request, pubsub, topic, metadata)
        return self._single_publish(request, pubsub, topic, metadata)

    def _route(self, path: str) -> tuple[bool, str, str] | None:
        """(bulk, pubsub, topic) for a publish path, None for anything else."""
        for prefix, bulk in (
            ("/v1.0-alpha1/publish/bulk/", True),
            ("/v1.0/publish/bulk/", True),
            ("/v1.0/publish/", False),
        ):
            if not path.startswith(prefix):
                continue
            if bulk and not self.bulk_supported:
                if prefix.startswith("/v1.0-alpha1"):
                    return None
                # Older than 1.10: only the single publish route, which takes "bulk" as pubsub.
                continue
            if bulk and prefix == "/v1.0/publish/bulk/" and not self.stable_bulk:
                continue
            if bulk and prefix.startswith("/v1.0-alpha1") and not self.alpha1_bulk:
                return None
            pubsub, _, topic = path[len(prefix) :].partition("/")
            return bulk, pubsub, topic
        return None

    def _forced(self, status: int, bulk: bool, request: _Request) -> _Response:
        if status < 300:
            return _Response(status)
        if bulk and status >= 500:
            ids = []
            with contextlib.suppress(Exception):
                ids = [e.get("entryId") for e in json.loads(request.body)]
            return _json_response(
                status,
                {
                    "failedEntries": [{"entryId": i, "error": "emulated failure"} for i in ids],
                    "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
                },
            )
        return _dapr_error(status, "ERR_EMULATED", f"emulated status {status}")

    # --- publishing ----------------------------------------------------------------------------

    def _envelope(
        self,
        pubsub: str,
        topic: str,
        content_type: str,
        payload: bytes,
        metadata: dict[str, str],
        parsed: Any = None,
    ) -> Any:
        """What Dapr hands to the broker for one message (runtime/pubsub NewCloudEvent).

        `parsed`: the payload already decoded (bulk entries), to skip a JSON round trip.
        """
        if metadata.get("rawPayload", "").lower() == "true":
            return parsed if parsed is not None else _maybe_json(payload)
        bits = self._ids.getrandbits
        trace_id = f"00-{bits(128):032x}-{bits(64):016x}-01"
        if content_type.split(";")[0].strip().lower() == CLOUDEVENTS_JSON:
            event = dict(parsed) if isinstance(parsed, dict) else json.loads(payload)
            if not isinstance(event, dict):
                raise ValueError("a CloudEvent must be a JSON object")
            event.setdefault("specversion", "1.0")
            event.setdefault("source", self.app_id)
            event.setdefault("type", "com.dapr.event.sent")
            if "traceid" not in event:
                event["traceid"] = trace_id
                event["traceparent"] = trace_id
                event["tracestate"] = ""
            event["topic"] = topic
            event["pubsubname"] = pubsub
            return event
        base = content_type.split(";")[0].strip().lower() or "text/plain"
        data: Any = payload.decode("utf-8", "replace")
        if base == "application/json" or base.endswith("+json"):
            data = _maybe_json(payload)
        return {
            "id": str(uuid.uuid4()),
            "specversion": "1.0",
            "datacontenttype": content_type or "text/plain",
            "source": self.app_id,
            "type": "com.dapr.event.sent",
            "topic": topic,
            "pubsubname": pubsub,
            "traceid": trace_id,
            "traceparent": trace_id,
            "tracestate": "",
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "data": data,
        }

    def _deliver(self, deliveries: list[Delivery]) -> None:
        with self._lock:
            self._received.extend(deliveries)
        if self._on_delivery is not None:
            for delivery in deliveries:
                self._on_delivery(delivery)

    def _single_publish(
        self, request: _Request, pubsub: str, topic: str, metadata: dict[str, str]
    ) -> _Response:
        content_type = request.headers.get("content-type", "text/plain")
        try:
            event = self._envelope(pubsub, topic, content_type, request.body, metadata)
        except ValueError as exc:
            return _dapr_error(
                500, "ERR_PUBSUB_CLOUD_EVENTS_SER", f"cannot create cloudevent: {exc}"
            )
        self._deliver(
            [
                Delivery(
                    pubsub=pubsub,
                    topic=topic,
                    metadata=metadata,
                    content_type=content_type,
                    event=event,
                    payload=request.body,
                    bulk=False,
                    entry_id=None,
                    path=request.path,
                )
            ]
        )
        return _Response(204)

    def _bulk_publish(
        self, request: _Request, pubsub: str, topic: str, metadata: dict[str, str]
    ) -> _Response:
        try:
            entries = json.loads(request.body)
            if not isinstance(entries, list):
                raise ValueError("the body must be a JSON array")
        except ValueError as exc:
            return _dapr_error(
                400,
                "ERR_PUBSUB_EVENTS_SER",
                f"error when unmarshaling the request for topic {topic} pubsub {pubsub}: {exc}",
            )
        seen: set[str] = set()
        prepared = []
        for entry in entries:
            entry_id = entry.get("entryId") if isinstance(entry, dict) else None
            if not entry_id or entry_id in seen:
                return _dapr_error(
                    400,
                    "ERR_PUBSUB_EVENTS_SER",
                    f"error marshaling events to bytes for topic {topic} pubsub {pubsub}. "
                    "error: entryId is duplicated or not present for entry",
                )
            seen.add(entry_id)
            content_type = entry.get("contentType") or ""
            raw_event = entry.get("event")
            entry_meta = entry.get("metadata")
            # runtime: entry metadata over request metadata, only for entries that have some.
            effective = {**metadata, **entry_meta} if entry_meta else dict(metadata)
            try:
                if isinstance(raw_event, dict | list):
                    event = self._envelope(pubsub, topic, content_type, b"", effective, raw_event)
                else:
                    text = raw_event if isinstance(raw_event, str) else json.dumps(raw_event)
                    event = self._envelope(pubsub, topic, content_type, text.encode(), effective)
            except ValueError:
                return _dapr_error(500, "ERR_PUBSUB_CLOUD_EVENTS_SER", "cannot create cloudevent")
            prepared.append(
                Delivery(
                    pubsub=pubsub,
                    topic=topic,
                    metadata=effective,
                    content_type=content_type,
                    event=event,
                    payload=raw_event,
                    bulk=True,
                    entry_id=entry_id,
                    path=request.path,
                )
            )
        failed = []
        if self._fail_entries:
            failed = [d for d in prepared if self._random.random() < self._fail_entries]
        failed_ids = {d.entry_id for d in failed}
        self._deliver([d for d in prepared if d.entry_id not in failed_ids])
        if failed:
            return _json_response(
                500,
                {
                    "failedEntries": [
                        {"entryId": d.entry_id, "error": "emulated broker failure"} for d in failed
                    ],
                    "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE",
                },
            )
        return _Response(204)


def _maybe_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")


_REFUSALS = {
    400: "malformed bulk request",
    401: "dapr-api-token missing or wrong: --token and DAPR_API_TOKEN must agree",
    403: "topic not allowed",
    404: "unknown pub/sub component or path: see --pubsub and DAPR_PUBSUB_NAME",
    500: "the event could not be read",
}


def format_delivery(delivery: Delivery) -> str:
    """One received event, readable: a header line, then its `data` indented."""
    event = delivery.event
    when = datetime.fromtimestamp(delivery.received_at, UTC).strftime("%H:%M:%S")
    if not isinstance(event, dict):
        return f"{when}  {delivery.topic}  (not a CloudEvent)\n  {event!r}\n"
    head = [when, delivery.topic, str(event.get("type", "?"))]
    if "subject" in event:
        head.append(f"subject={event['subject']}")
    head.append(f"id={event.get('id', '?')}")
    if "partitionKey" in delivery.metadata:
        head.append(f"partitionKey={delivery.metadata['partitionKey']}")
    if delivery.bulk:
        head.append("(bulk)")
    data = event.get("data")
    body = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return "  ".join(head) + "\n" + "\n".join("  " + line for line in body.splitlines()) + "\n"


def format_delivery_json(delivery: Delivery) -> str:
    """One received event as one JSON line (for `jq` and scripts)."""
    line = {"topic": delivery.topic, "metadata": delivery.metadata, "event": delivery.event}
    return json.dumps(line, ensure_ascii=False) + "\n"


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 3500,
    token: str | None = None,
    pubsubs: Iterable[str] | None = None,
    allowed_topics: Iterable[str] | None = None,
    bulk_supported: bool = True,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serves until SIGINT/SIGTERM (or `stop` is set), writing each event to `out` (stdout)."""
    out_stream = out if out is not None else sys.stdout
    err_stream = err if err is not None else sys.stderr
    render = format_delivery_json if as_json else format_delivery

    def show(delivery: Delivery) -> None:
        out_stream.write(render(delivery))
        out_stream.flush()

    def explain(call: Call) -> None:
        # A refused publish is otherwise visible only in the API's log: say it here too.
        if call.status is None or call.status < 400:
            return
        why = _REFUSALS.get(call.status, "see the Dapr HTTP API")
        err_stream.write(f"refused {call.method} {call.path}: {call.status} ({why})\n")
        err_stream.flush()

    sidecar = DevSidecar(
        on_call=explain,
        host=host,
        port=port,
        pubsubs=pubsubs,
        allowed_topics=allowed_topics,
        token=token,
        bulk_supported=bulk_supported,
        on_delivery=show,
    )
    stopped = stop if stop is not None else threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with sidecar:
        port_hint = "" if sidecar.port == 3500 else f" DAPR_HTTP_PORT={sidecar.port}"
        token_hint = " (dapr-api-token required)" if token else ""
        err_stream.write(
            f"dev sidecar listening on {sidecar.url}{token_hint}; start the API with "
            f"DAPR_ENABLED=true{port_hint} pakaura serve; events appear below\n"
        )
        err_stream.flush()
        try:
            while not stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


_T = TypeVar("_T")


def _wait_for_length(
    read: Callable[[], list[_T]], count: int, timeout: float, what: str
) -> list[_T]:
    """Polls `read()` until it holds at least `count` items; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if len(got) >= count:
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError(f"expected {count} {what}, got {len(got)}")
        time.sleep(0.005)
