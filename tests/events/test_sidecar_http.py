"""The publisher's HTTP/1.1 keep-alive client (`src.events._sidecar_http`, T-016 / issue 8).

Protocol cases run against a scripted `asyncio.start_server` on loopback in the test's own
event loop; end-to-end cases against the Dapr sidecar emulator.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx
import pytest
from src.events import EventPublisher, PublishOutcome
from src.events._sidecar_http import (
    HttpxSidecarClient,
    SidecarClient,
    SidecarConnectionError,
    SidecarHTTPError,
    SidecarProtocolError,
    SidecarResponse,
    SidecarTimeout,
    SidecarTransportError,
    SidecarUnreachable,
)
from src.events.schemas import build_sync_event

from tests.support.dapr_emulator import DaprEmulator

T = TypeVar("T")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def run(factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await factory()

    return asyncio.run(main())


# --- a scripted server ---------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A request as the server read it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # 1-based, in accept order
    nth: int  # 1-based index of the request on its connection


@dataclass(frozen=True)
class Reply:
    """What the server does: send `data`, then close if `close`; with `hang`, never answer
    (and wait for the client to close); with `drop`, close without answering."""

    data: bytes = b""
    close: bool = False
    hang: bool = False
    drop: bool = False


Answer = Callable[[Seen], "bytes | Reply | Awaitable[bytes | Reply]"]


@dataclass
class Server:
    answer: Answer
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    open: int = 0
    max_open: int = 0
    # Connections the client closed (the server read EOF while waiting for a request).
    closed_by_client: list[int] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self._writers.add(writer)
        number, nth = self.connections, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed_by_client.append(number)
                    return
                lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                nth += 1
                seen = Seen(method, target, headers, body, number, nth)
                self.requests.append(seen)
                reply = self.answer(seen)
                if inspect.isawaitable(reply):
                    reply = await reply
                if isinstance(reply, bytes):
                    reply = Reply(reply)
                if reply.hang:
                    if await reader.read(1) == b"":
                        self.closed_by_client.append(number)
                    return
                if reply.drop:
                    return
                writer.write(reply.data)
                await writer.drain()
                if reply.close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return  # the loop is ending; asyncio's stream callback would log a re-raise
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()


async def eventually(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def serve(answer: Answer | bytes) -> Server:
    if isinstance(answer, bytes):
        data = answer
        return Server(lambda _seen: data)
    return Server(answer)


# --- keep-alive and framing ----------------------------------------------------------------


def test_keep_alive_reuses_one_connection_and_sends_a_plain_request() -> None:
    async def go() -> None:
        async with serve(OK) as server, SidecarClient(server.url) as client:
            for i in range(50):
                response = await client.request(
                    "POST",
                    f"/v1.0/publish/p/t?metadata.partitionKey={i}",
                    b'{"n":%d}' % i,
                    {"Content-Type": "application/cloudevents+json", "dapr-api-token": "x"},
                )
                assert (response.status_code, response.content) == (200, b"ok")
            assert await client.request("GET", "/v1.0/healthz/outbound") is not None
        assert server.connections == 1
        first = server.requests[0]
        assert (first.method, first.target, first.body) == (
            "POST",
            "/v1.0/publish/p/t?metadata.partitionKey=0",
            b'{"n":0}',
        )
        assert first.headers == {
            "host": f"127.0.0.1:{server.port}",
            "content-type": "application/cloudevents+json",
            "dapr-api-token": "x",
            "content-length": "7",
        }
        # A GET without a body carries no Content-Length.
        assert server.requests[-1].headers == {"host": f"127.0.0.1:{server.port}"}

    run(go)


def test_response_api_headers_text_and_json() -> None:
    error_body = '{"errorCode":"E","message":"café 1"}'.encode()
    answers = [
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"X-Dup: a\r\nx-dup: b\r\nContent-Length: %d\r\n\r\n%s" % (len(error_body), error_body),
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=latin-1\r\n"
        b"Content-Length: 4\r\n\r\ncaf\xe9",
    ]

    async def go() -> list[SidecarResponse]:
        async with (
            serve(lambda seen: answers[seen.nth - 1]) as server,
            SidecarClient(server.url) as client,
        ):
            return [await client.request("GET", "/"), await client.request("GET", "/")]

    error, missing = run(go)
    assert error.status_code == 500
    assert error.headers["content-type"] == "application/json; charset=utf-8"
    assert error.headers["x-dup"] == "a, b"
    assert error.json() == {"errorCode": "E", "message": "café 1"}
    assert error.text == '{"errorCode":"E","message":"café 1"}'
    assert missing.text == "café"
    with pytest.raises(ValueError):
        missing.json()


def test_chunked_body_with_extensions_and_trailers_keeps_the_connection() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n"
    )

    async def go() -> list[bytes]:
        async with serve(chunked) as server, SidecarClient(server.url) as client:
            bodies = [(await client.request("GET", "/")).content for _ in range(3)]
        assert server.connections == 1
        return bodies

    assert run(go) == [b"hello world"] * 3


def test_body_until_close_is_read_and_the_connection_not_reused() -> None:
    async def go() -> None:
        reply = Reply(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it", close=True)
        async with serve(lambda _: reply) as server, SidecarClient(server.url) as client:
            for _ in range(2):
                assert (await client.request("GET", "/")).content == b"all of it"
        assert server.connections == 2

    run(go)


def test_no_body_after_204_304_head_and_interim_1xx() -> None:
    answers = {
        1: NO_CONTENT,
        2: b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        3: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",  # answer to HEAD
        4: b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + NO_CONTENT,
        5: OK,
    }

    async def go() -> None:
        async with (
            serve(lambda seen: answers[seen.nth]) as server,
            SidecarClient(server.url) as client,
        ):
            got = [
                await client.request("POST", "/", b"x"),
                await client.request("GET", "/"),
                await client.request("HEAD", "/"),
                await client.request("GET", "/"),
                await client.request("GET", "/"),
            ]
        assert [(r.status_code, r.content) for r in got] == [
            (204, b""),
            (304, b""),
            (200, b""),
            (204, b""),
            (200, b"ok"),
        ]
        assert server.connections == 1

    run(go)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        # Both framings: ambiguous, so the connection is not trusted again.
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["connection-close", "close-token", "http-1.0", "te-and-cl"],
)
def test_an_answer_that_forbids_reuse_closes_the_connection(answer: bytes) -> None:
    async def go() -> None:
        async with serve(answer) as server, SidecarClient(server.url) as client:
            for _ in range(3):
                assert (await client.request("GET", "/")).content == b"ok"
            await eventually(lambda: server.closed_by_client == [1, 2])
        assert server.connections == 3

    run(go)


def test_http_1_0_keep_alive_is_reused() -> None:
    answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"

    async def go() -> None:
        async with serve(answer) as server, SidecarClient(server.url) as client:
            for _ in range(3):
                await client.request("GET", "/")
        assert server.connections == 1

    run(go)


# --- stale connections and retries --------------------------------------------------------


def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def go() -> None:
        # The server closes after every answer without saying so (like an idle time-out).
        async with (
            serve(lambda _: Reply(OK, close=True)) as server,
            SidecarClient(server.url) as client,
        ):
            for _ in range(3):
                assert (await client.request("POST", "/", b"x")).status_code == 200
                await asyncio.sleep(0.02)  # the close reaches the client while idle
        assert server.connections == 3
        assert len(server.requests) == 3  # nothing sent twice

    run(go)


def test_reused_connection_closed_without_answer_is_retried_once_on_a_new_one() -> None:
    def answer(seen: Seen) -> Reply:
        # Connection 1 answers once, then is closed as the second request arrives: the race
        # between an idle time-out and reuse, which the client cannot see beforehand.
        if seen.connection == 1 and seen.nth == 2:
            return Reply(drop=True)
        return Reply(OK)

    async def go() -> None:
        async with serve(answer) as server, SidecarClient(server.url) as client:
            assert (await client.request("POST", "/", b"a")).status_code == 200
            assert (await client.request("POST", "/", b"b")).status_code == 200
        assert server.connections == 2
        assert [(s.connection, s.body) for s in server.requests] == [
            (1, b"a"),
            (1, b"b"),
            (2, b"b"),
        ]

    run(go)


def test_no_second_retry_when_the_new_connection_fails_too() -> None:
    def answer(seen: Seen) -> Reply:
        return Reply(OK) if seen.connection == 1 and seen.nth == 1 else Reply(drop=True)

    async def go() -> None:
        async with serve(answer) as server, SidecarClient(server.url) as client:
            await client.request("POST", "/", b"a")
            with pytest.raises(SidecarConnectionError) as caught:
                await client.request("POST", "/", b"b")
            assert caught.value.answer_started is False
        assert len(server.requests) == 3 and server.connections == 2

    run(go)


def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    async def go() -> None:
        async with (
            serve(lambda _: Reply(drop=True)) as server,
            SidecarClient(server.url) as client,
        ):
            with pytest.raises(SidecarConnectionError, match="without answering"):
                await client.request("POST", "/", b"x")
        assert len(server.requests) == 1 and server.connections == 1

    run(go)


def test_failure_in_the_middle_of_an_answer_is_not_retried() -> None:
    def answer(seen: Seen) -> Reply:
        if seen.nth == 1:
            return Reply(OK)
        return Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True)

    async def go() -> None:
        async with serve(answer) as server, SidecarClient(server.url) as client:
            await client.request("POST", "/", b"a")
            with pytest.raises(SidecarConnectionError, match="middle of the answer") as caught:
                await client.request("POST", "/", b"b")
            assert caught.value.answer_started is True
        assert len(server.requests) == 2

    run(go)


# --- time-outs and unreachable sidecars -----------------------------------------------------


def test_no_answer_times_out_and_the_connection_is_closed_not_reused() -> None:
    def answer(seen: Seen) -> Reply:
        return Reply(hang=True) if seen.nth == 2 else Reply(OK)

    async def go() -> None:
        async with serve(answer) as server, SidecarClient(server.url, timeout=0.2) as client:
            await client.request("POST", "/", b"a")
            started = time.monotonic()
            with pytest.raises(SidecarTimeout) as caught:
                await client.request("POST", "/", b"b")
            assert time.monotonic() - started < 2.0
            assert isinstance(caught.value, TimeoutError)
            assert isinstance(caught.value, SidecarTransportError)
            await eventually(lambda: server.closed_by_client == [1])
            assert (await client.request("POST", "/", b"c")).status_code == 200
        assert server.connections == 2

    run(go)


def test_connection_refused_is_unreachable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def go() -> None:
        async with SidecarClient(f"http://127.0.0.1:{port}") as client:
            with pytest.raises(SidecarUnreachable, match=f"127.0.0.1:{port}") as caught:
                await client.request("GET", "/")
            assert isinstance(caught.value, SidecarTransportError)
            assert isinstance(caught.value, SidecarHTTPError)

    run(go)


# --- malformed and oversized answers --------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTP/1.1 200 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    ],
)
def test_malformed_answers_are_protocol_errors(answer: bytes) -> None:
    async def go() -> None:
        async with (
            serve(lambda _: Reply(answer, close=True)) as server,
            SidecarClient(server.url) as client,
        ):
            with pytest.raises(SidecarProtocolError):
                await client.request("GET", "/")
            assert not client._idle  # never pooled again

    run(go)


def test_oversized_head_is_a_protocol_error() -> None:
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 4096 + b"\r\nContent-Length: 0\r\n\r\n"

    async def go() -> None:
        async with serve(big) as server, SidecarClient(server.url, max_head_bytes=1024) as client:
            with pytest.raises(SidecarProtocolError, match="longer than 1024"):
                await client.request("GET", "/")

    run(go)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"a" * 101,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"40\r\n"
        + b"a" * 64
        + b"\r\n"
        + b"40\r\n"
        + b"a" * 64
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 101,
    ],
    ids=["content-length", "chunked", "until-close"],
)
def test_oversized_body_is_a_protocol_error(answer: bytes) -> None:
    async def go() -> None:
        async with (
            serve(lambda _: Reply(answer, close=True)) as server,
            SidecarClient(server.url, max_body_bytes=100) as client,
        ):
            with pytest.raises(SidecarProtocolError, match="exceeds 100"):
                await client.request("GET", "/")

    run(go)


def test_a_request_that_would_inject_headers_is_refused_before_sending() -> None:
    async def go() -> None:
        async with serve(OK) as server, SidecarClient(server.url) as client:
            for target, headers in [
                ("/ok", {"X-A": "1\r\nX-Injected: 1"}),
                ("/ok", {"X-A\r\n": "1"}),
                ("/a b", None),
                ("/a\r\nX: 1", None),
                ("http://elsewhere/", None),
            ]:
                with pytest.raises(ValueError):
                    await client.request("GET", target, None, headers)
        assert server.connections == 0

    run(go)


def test_base_url_must_be_plain_http_host_and_port() -> None:
    for url in ("https://h:1", "http://h:1/prefix", "h:1", "http://u:p@h:1"):
        with pytest.raises(ValueError):
            SidecarClient(url)


# --- the pool -----------------------------------------------------------------------------------


def test_concurrent_requests_share_a_bounded_pool() -> None:
    async def slow(_: Seen) -> bytes:
        await asyncio.sleep(0.02)
        return OK

    async def go() -> None:
        async with (
            serve(slow) as server,
            SidecarClient(server.url, max_connections=4, max_idle=2) as client,
        ):
            results = await asyncio.gather(
                *(client.request("POST", f"/{i}", b"x") for i in range(20))
            )
            assert [r.status_code for r in results] == [200] * 20
            # Never more than four open; while requests wait, a finished one's connection
            # is handed on (not closed and reopened); at the end two stay idle.
            assert server.max_open <= 4 and server.connections == 4
            await eventually(lambda: server.open == 2)
        assert sorted(s.target for s in server.requests) == sorted(f"/{i}" for i in range(20))

    run(go)


def test_idle_connections_expire() -> None:
    async def go() -> None:
        async with (
            serve(OK) as server,
            SidecarClient(server.url, keepalive_expiry=0.05) as client,
        ):
            await client.request("GET", "/")
            await client.request("GET", "/")
            await asyncio.sleep(0.1)
            await client.request("GET", "/")
            await eventually(lambda: server.closed_by_client == [1])
        assert server.connections == 2

    run(go)


def test_aclose_closes_the_sockets_and_refuses_later_requests() -> None:
    async def go() -> None:
        async with serve(OK) as server:
            client = SidecarClient(server.url)
            await asyncio.gather(*(client.request("GET", "/") for _ in range(3)))
            assert server.open == 3
            await client.aclose()
            assert client.is_closed
            await eventually(lambda: server.open == 0)
            assert sorted(server.closed_by_client) == [1, 2, 3]
            with pytest.raises(RuntimeError, match="closed"):
                await client.request("GET", "/")

    run(go)


# --- end to end: the Dapr emulator, the httpx adapter, the publisher ------------------------


def test_against_the_dapr_emulator(dapr: DaprEmulator) -> None:
    async def go() -> list[SidecarResponse]:
        async with SidecarClient(dapr.url) as client:
            headers = {"Content-Type": "application/cloudevents+json"}
            event = (
                build_sync_event(
                    action="created", task_id=7, user_id="u", source="s", correlation_id=None
                )
                .to_json()
                .encode()
            )
            return [
                await client.request(
                    "POST", "/v1.0/publish/pubsub-kafka/t?metadata.partitionKey=7", event, headers
                ),
                await client.request("POST", "/v1.0/publish/nope/t", event, headers),
                await client.request("GET", "/v1.0/healthz/outbound"),
            ]

    published, unknown, health = run(go)
    assert published.status_code == 204 and health.status_code == 204
    assert unknown.status_code == 404
    assert unknown.json()["errorCode"] == "ERR_PUBSUB_NOT_FOUND"
    assert [(d.topic, d.metadata) for d in dapr.received] == [("t", {"partitionKey": "7"})]
    assert dapr.connections == 1


def test_httpx_adapter_translates_answers_and_errors(dapr: DaprEmulator) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as http:
            adapter = HttpxSidecarClient(http, dapr.url, timeout=0.2)
            response = await adapter.request("GET", "/v1.0/healthz/outbound")
            assert isinstance(response, SidecarResponse) and response.status_code == 204
            missing = await adapter.request("GET", "/nowhere")
            assert missing.status_code == 404 and "404" in missing.text
            dapr.hang(True)
            try:
                with pytest.raises(SidecarTimeout):
                    await adapter.request("GET", "/v1.0/healthz/outbound")
            finally:
                dapr.hang(False)
            dapr.refuse()
            with pytest.raises(SidecarUnreachable):
                await adapter.request("GET", "/v1.0/healthz/outbound")
            dapr.resume()
            assert not http.is_closed

    run(go)


def test_publisher_does_not_reuse_a_connection_that_timed_out(
    dapr: DaprEmulator, publisher_for: Callable[..., EventPublisher]
) -> None:
    p = publisher_for(dapr_publish_timeout=0.2)

    async def go() -> list[PublishOutcome]:
        first = await p.publish_sync_event("created", 1, "u")
        dapr.hang(True)
        second = await p.publish_sync_event("created", 2, "u")
        dapr.hang(False)
        third = await p.publish_sync_event("created", 3, "u")
        await p.aclose()
        return [first.outcome, second.outcome, third.outcome]

    assert run(go) == [PublishOutcome.DELIVERED, PublishOutcome.TRANSIENT, PublishOutcome.DELIVERED]
    assert dapr.connections == 2
    assert [d.event["data"]["task_id"] for d in dapr.received] == [1, 3]


def test_publisher_lets_go_of_clients_of_ended_loops(
    dapr: DaprEmulator, publisher_for: Callable[..., EventPublisher]
) -> None:
    p = publisher_for()
    for _ in range(3):
        assert run(lambda: p.publish_sync_event("created", 1, "u")).ok
    # One client per live loop: the ended loops' clients were dropped (sockets shut down).
    assert len(p._clients) == 1
    assert run(lambda: p.check_ready())
    assert len(p._clients) == 1
