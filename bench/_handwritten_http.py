"""A minimal asyncio HTTP/1.1 keep-alive client for the Dapr sidecar (T-016 / issue 8).

The publisher runs in the API's event loop (the relay lives there), so whatever CPU a request
costs is added to API latency. An httpx request costs ~1 ms of CPU on the benchmark machine,
a request of this client under 0.1 ms (most of it the socket send); the sidecar is plain
HTTP/1.1 on a fixed host and port, which needs none of httpx's generality. Hence this client:

- `SidecarTransport`: the one-method interface the publisher uses (`request()`);
- `SidecarClient`: the default implementation, a small pool of keep-alive connections to one
  `http://host:port` origin, owned by the event loop that uses it;
- `HttpxSidecarClient`: adapts an `httpx.AsyncClient` given by the caller (httpx is imported
  only there);
- `SidecarResponse` and the exceptions (`SidecarHTTPError` and its subclasses).

What `SidecarClient` does: `Content-Length` request bodies; answers framed by
`Content-Length`, chunked transfer coding (trailers are read and dropped) or the end of the
connection; interim 1xx answers skipped; head and body size limits; idle connections reused
LIFO and dropped after `keepalive_expiry`, or when the server closed them or sent unsolicited
bytes; a connection is pooled again only after an answer that was fully read and allows it.
A request that fails on a *reused* connection before any byte of the answer arrived (the
server closed the idle connection as we sent) is sent once more on a new connection, as
urllib3 and browsers do: the request may then have been received twice, which at-least-once
delivery allows (consumers de-duplicate on the event id). Any other failure closes the
connection. A time-out bounds the whole call (slot wait, connect, send, answer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, SupportsIndex
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from types import TracebackType

    import httpx

__all__ = [
    "HttpxSidecarClient",
    "SidecarClient",
    "SidecarConnectionError",
    "SidecarHTTPError",
    "SidecarProtocolError",
    "SidecarResponse",
    "SidecarTimeout",
    "SidecarTransport",
    "SidecarTransportError",
    "SidecarUnreachable",
]

_HEAD_END: Final = b"\r\n\r\n"
_CRLF: Final = b"\r\n"
_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_READ_CHUNK: Final = 64 * 1024
# Above this a body is written after the head rather than copied into one buffer with it.
_JOIN_LIMIT: Final = 64 * 1024


# --- errors ------------------------------------------------------------------------------------


class SidecarHTTPError(Exception):
    """Base class of this client's errors."""


class SidecarTransportError(SidecarHTTPError):
    """The exchange with the sidecar did not complete: no (valid) answer to rely on."""


class SidecarTimeout(SidecarTransportError, TimeoutError):
    """No complete answer within the time-out (the connection is closed, never reused)."""


class SidecarUnreachable(SidecarTransportError):
    """No connection could be opened (refused, unknown host, network down): nothing was sent."""


class SidecarConnectionError(SidecarTransportError):
    """The connection failed during the exchange (closed or reset by the server).

    `answer_started` tells whether any byte of the answer had arrived.
    """

    def __init__(self, message: str, *, answer_started: bool = False) -> None:
        super().__init__(message)
        self.answer_started = answer_started


class SidecarProtocolError(SidecarTransportError):
    """The answer is not valid HTTP/1.1 or exceeds the client's size limits."""


# --- response and interface --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SidecarResponse:
    """An answer: status, headers (lower-case names; repeated ones joined by ", "), body."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded with the Content-Type charset (default UTF-8), never raising."""
        charset = "utf-8"
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # unknown charset name
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ValueError when it is not JSON (like httpx)."""
        return json.loads(self.content)


class SidecarTransport(Protocol):
    """What the publisher needs from an HTTP client."""

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SidecarResponse:
        """Sends `method target` (origin-form: path and query) to the sidecar.

        Raises `SidecarTimeout`, another `SidecarTransportError`, or ValueError for a request
        that cannot be sent (CR/LF in a header, a target that is not a path).
        """
        ...


# --- the default client ------------------------------------------------------------------------


class _Reader(asyncio.StreamReader):
    # Set whenever bytes arrive: tells a stale connection (nothing came back) from a failure
    # in the middle of an answer, and an idle connection that received unsolicited bytes.
    got_data = False

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.got_data = True
        super().feed_data(data)


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        """False once the server closed or reset it, or sent something nobody asked for."""
        return not (
            self.reader.got_data or self.reader.at_eof() or self.writer.transport.is_closing()
        )

    def close(self) -> None:
        """Graceful close (buffered bytes are flushed first); the loop must be running."""
        self.writer.close()

    def abort(self) -> None:
        """Immediate close, for a connection in an unknown state (never pooled again)."""
        self.writer.transport.abort()

    def abandon(self) -> None:
        """Best effort for a connection of a closed loop: tell the server we are gone.

        The transport cannot be closed without its loop; its socket is closed when the
        transport is garbage-collected.
        """
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class SidecarClient:
    """Keep-alive HTTP/1.1 connections to one plain-HTTP origin (the Dapr sidecar).

    Use it from one event loop only (its connections belong to the loop that opened them).
    At most `max_connections` requests are in flight (others wait for a slot, within their
    time-out); at most `max_idle` connections are kept between requests, each for at most
    `keepalive_expiry` seconds. `timeout` bounds each whole call (None: no bound).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = 5.0,
        max_connections: int = 16,
        max_idle: int = 8,
        keepalive_expiry: float = 30.0,
        max_head_bytes: int = 64 * 1024,
        max_body_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"expected http://host[:port], got {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"expected http://host[:port], got {base_url!r}")
        if max_connections < 1 or max_idle < 0 or max_head_bytes < 256 or max_body_bytes < 0:
            raise ValueError("invalid pool or size limits")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._authority = parts.netloc
        self._origin = f"http://{parts.netloc}"
        self._timeout = timeout
        self._max_idle = max_idle
        self._keepalive_expiry = keepalive_expiry
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._slots = asyncio.Semaphore(max_connections)
        # Requests waiting for a slot: a finished request's connection is kept for them even
        # beyond `max_idle`, rather than closed and reopened a moment later.
        self._waiting = 0
        # Newest last: reuse takes the most recently used one, so extra ones age out.
        self._idle: collections.deque[_Connection] = collections.deque()
        self._active: set[_Connection] = set()
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> SidecarClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SidecarResponse:
        """See `SidecarTransport.request`. RuntimeError once the client is closed."""
        if self._closed:
            raise RuntimeError("the sidecar client is closed")
        head = self._head(method, target, body, headers)
        try:
            async with asyncio.timeout(self._timeout):
                self._waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self._waiting -= 1
                try:
                    return await self._send(method, head, body)
                finally:
                    self._slots.release()
        except TimeoutError as exc:
            if isinstance(exc, SidecarHTTPError):
                raise
            raise SidecarTimeout(f"no answer from {self._origin} within {self._timeout}s") from None

    async def aclose(self) -> None:
        """Closes every connection, idle or in use; later requests raise RuntimeError."""
        self._closed = True
        connections = [*self._idle, *self._active]
        self._idle.clear()
        self._active.clear()
        for conn in connections:
            conn.close()
        await asyncio.gather(
            *(conn.writer.wait_closed() for conn in connections), return_exceptions=True
        )

    def abandon(self) -> None:
        """Forgets every connection without the event loop (it is closed; best effort)."""
        self._closed = True
        for conn in [*self._idle, *self._active]:
            conn.abandon()
        self._idle.clear()
        self._active.clear()

    # --- internals -----------------------------------------------------------------------------

    def _head(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> bytes:
        fields = (
            "".join([f"{name}: {value}\r\n" for name, value in headers.items()]) if headers else ""
        )
        if body is not None:
            length = f"Content-Length: {len(body)}\r\n"
        else:
            length = "Content-Length: 0\r\n" if method in _BODY_METHODS else ""
        head = f"{method} {target} HTTP/1.1\r\nHost: {self._authority}\r\n{fields}{length}\r\n"
        # One count catches a CR or LF smuggled in through the target or a header (no
        # injected header lines); a space in the target would break the request line.
        lines = 3 + (len(headers) if headers else 0) + (1 if length else 0)
        if (
            head.count("\n") != lines
            or head.count("\r") != lines
            or " " in target
            or not target.startswith("/")
        ):
            raise ValueError("invalid request target or header (CR, LF, or not a path)")
        return head.encode("latin-1")

    def _checkout(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        expired = time.monotonic() - self._keepalive_expiry
        while idle and idle[0].idle_since < expired:
            idle.popleft().close()
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.abort()
        return None

    def _checkin(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= self._max_idle + self._waiting:
            conn.close()
            return
        conn.reader.got_data = False
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connect(self) -> _Connection:
        # What asyncio.open_connection() does, with a reader that records incoming bytes.
        loop = asyncio.get_running_loop()
        reader = _Reader(limit=self._max_head, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.create_connection(lambda: protocol, self._host, self._port)
        except OSError as exc:
            raise SidecarUnreachable(f"cannot connect to {self._origin}: {exc}") from exc
        return _Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def _send(self, method: str, head: bytes, body: bytes | None) -> SidecarResponse:
        if self._closed:  # closed while this request waited for a slot
            raise RuntimeError("the sidecar client is closed")
        conn = self._checkout()
        if conn is not None:
            try:
                return await self._exchange(conn, method, head, body)
            except SidecarConnectionError as exc:
                if exc.answer_started or self._closed:
                    raise
                # The server closed the idle connection as we reused it: once more, fresh.
        return await self._exchange(await self._connect(), method, head, body)

    async def _exchange(
        self, conn: _Connection, method: str, head: bytes, body: bytes | None
    ) -> SidecarResponse:
        reader, writer = conn.reader, conn.writer
        self._active.add(conn)
        try:
            if body is None:
                writer.write(head)
            elif len(body) <= _JOIN_LIMIT:
                writer.write(head + body)
            else:
                writer.write(head)
                writer.write(body)
            await writer.drain()
            response, reusable = await self._read_response(reader, method)
        except BaseException as exc:
            # Cancelled, timed out or failed: the connection's state is unknown.
            self._active.discard(conn)
            conn.abort()
            if isinstance(exc, asyncio.IncompleteReadError | ConnectionError):
                started = reader.got_data
                what = "in the middle of the answer" if started else "without answering"
                raise SidecarConnectionError(
                    f"{self._origin} closed the connection {what}: {exc!r}",
                    answer_started=started,
                ) from exc
            if isinstance(exc, asyncio.LimitOverrunError):
                raise SidecarProtocolError(
                    f"answer head or chunk line longer than {self._max_head} bytes"
                ) from exc
            if isinstance(exc, OSError):
                raise SidecarConnectionError(
                    f"connection to {self._origin} failed: {exc!r}", answer_started=True
                ) from exc
            raise
        self._active.discard(conn)
        if reusable:
            self._checkin(conn)
        else:
            conn.close()
        return response

    async def _read_response(
        self, reader: asyncio.StreamReader, method: str
    ) -> tuple[SidecarResponse, bool]:
        """The answer, and whether the connection may carry another request."""
        while True:
            status, headers, keep_alive = _parse_head(await reader.readuntil(_HEAD_END))
            if status >= 200:
                break
            if status == 101:  # never asked for: the connection is no longer HTTP
                raise SidecarProtocolError("unexpected 101 Switching Protocols")
            # Other 1xx are interim answers (e.g. 103 Early Hints): the final one follows.
        if method == "HEAD" or status in _NO_BODY_STATUSES:
            return SidecarResponse(status, headers, b""), keep_alive
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if coding.lower() != "chunked":
                raise SidecarProtocolError(f"unsupported transfer-encoding {coding!r}")
            content = await self._read_chunked(reader)
            # With Content-Length as well the framing is ambiguous (RFC 9112 §6.3): no reuse.
            return SidecarResponse(status, headers, content), (
                keep_alive and "content-length" not in headers
            )
        declared = headers.get("content-length")
        if declared is None:  # the body ends with the connection
            return SidecarResponse(status, headers, await self._read_to_eof(reader)), False
        length = _content_length(declared)
        if length > self._max_body:
            raise SidecarProtocolError(f"answer body of {length} bytes exceeds {self._max_body}")
        content = await reader.readexactly(length) if length else b""
        return SidecarResponse(status, headers, content), keep_alive

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(_CRLF)
            size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
            # int(x, 16) would also take "0x", "+", "_": only plain hex digits are valid.
            if not size_text or len(size_text) > 16 or size_text.strip(_HEX_DIGITS):
                raise SidecarProtocolError(f"malformed chunk size line {line[:40]!r}")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if total > self._max_body:
                raise SidecarProtocolError(f"chunked answer body exceeds {self._max_body} bytes")
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != _CRLF:
                raise SidecarProtocolError("chunk not followed by CRLF")
            parts.append(chunk[:-2])
        trailer_bytes = 0
        while (line := await reader.readuntil(_CRLF)) != _CRLF:
            trailer_bytes += len(line)
            if trailer_bytes > self._max_head:
                raise SidecarProtocolError(f"trailers longer than {self._max_head} bytes")
        return b"".join(parts)

    async def _read_to_eof(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := await reader.read(_READ_CHUNK):
            total += len(chunk)
            if total > self._max_body:
                raise SidecarProtocolError(f"answer body exceeds {self._max_body} bytes")
            parts.append(chunk)
        return b"".join(parts)


def _parse_head(raw: bytes) -> tuple[int, dict[str, str], bool]:
    """Status, headers and keep-alive of an answer head (status line to the blank line)."""
    status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if (
        version not in ("HTTP/1.1", "HTTP/1.0")
        or len(code) != 3
        or not (code.isascii() and code.isdigit())
        or rest[3:4] not in ("", " ")
    ):
        raise SidecarProtocolError(f"malformed status line {status_line[:100]!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        # No whitespace around the name (RFC 9112 §5.1) and no obsolete line folding.
        if not colon or not name or name[0] in " \t" or name[-1] in " \t" or "\n" in line:
            raise SidecarProtocolError(f"malformed header line {line[:100]!r}")
        key = name.lower()
        value = value.strip(" \t")
        previous = headers.get(key)
        if previous is None:
            headers[key] = value
        elif key == "content-length":
            if previous != value:
                raise SidecarProtocolError("conflicting Content-Length headers")
        else:
            headers[key] = f"{previous}, {value}"
    if version == "HTTP/1.1":
        keep_alive = "close" not in _tokens(headers.get("connection"))
    else:
        keep_alive = "keep-alive" in _tokens(headers.get("connection"))
    return int(code), headers, keep_alive


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in value.split(",")} if value else set()


def _content_length(value: str) -> int:
    # "5, 5" (a repeated header, joined) is one length; a sign or spaces inside are not valid.
    first, *others = (v.strip() for v in value.split(","))
    if not (first.isascii() and first.isdigit()) or any(v != first for v in others):
        raise SidecarProtocolError(f"invalid Content-Length {value[:40]!r}")
    return int(first)


# --- an injected httpx client ------------------------------------------------------------------


def _skip_missing_sniffio() -> None:
    # httpcore tries `import sniffio` on every lock set-up (several per request). Without
    # sniffio installed, each failed import searches sys.path again: ~1 ms of CPU per request
    # measured here. Recording the absence once makes that import fail fast.
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


class HttpxSidecarClient:
    """`SidecarTransport` over an `httpx.AsyncClient` owned by the caller (never closed here).

    httpx errors become this module's errors; `timeout` bounds each whole call.
    """

    def __init__(self, client: httpx.AsyncClient, base_url: str, timeout: float | None) -> None:
        _skip_missing_sniffio()
        import httpx  # only callers that inject an httpx client pay for importing it

        self._httpx = httpx
        self._client = client
        self._base = base_url.rstrip("/")
        self._timeout = timeout

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SidecarResponse:
        httpx = self._httpx
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.request(
                    method,
                    self._base + target,
                    content=body,
                    headers=headers,
                    # httpx time-outs are per phase; asyncio.timeout bounds the whole call.
                    timeout=self._timeout,
                )
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise SidecarTimeout(f"no answer from {self._base} within {self._timeout}s") from exc
        except httpx.ConnectError as exc:
            raise SidecarUnreachable(f"cannot connect to {self._base}: {exc!r}") from exc
        except httpx.RemoteProtocolError as exc:
            # h11 reports a server that closed the connection as a protocol error.
            raise SidecarConnectionError(f"{self._base}: {exc!r}", answer_started=True) from exc
        except (httpx.ProtocolError, httpx.DecodingError) as exc:
            raise SidecarProtocolError(f"{self._base}: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise SidecarConnectionError(f"{self._base}: {exc!r}", answer_started=True) from exc
        return SidecarResponse(response.status_code, dict(response.headers), response.content)
