"""`DaprTransport`: Dapr's HTTP publish API over aiohttp, the app's one HTTP path (T-011,
T-016; contract §3). `send(messages)` returns one `hooks.SendResult` per message, in order,
and never raises: 2xx OK; connection error, time-out, 5xx, 408/425/429 TRANSIENT; other
answers PERMANENT. One request per topic, the topics concurrently; two or more messages of a
topic go in bulk (per-entry results from `failedEntries`; `DAPR_BULK_PUBLISH=auto` falls back
to single publish on a sidecar without bulk and remembers it). After a connection error or
time-out, a 401/403/404, or three 5xx in a row, a topic's remaining messages are not tried
and get that result. Ordering is the relay's job (docs/relay.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _quote  # json.dumps of a str, in C
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from loguru import logger
from yarl import URL

from hooks import Message, Outcome, SendResult
from src.config import Settings, get_settings
from src.tracing import trace_headers

__all__ = ["CLOUDEVENTS_CONTENT_TYPE", "DaprTransport", "classify_status"]

CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"
_READY_PATH: Final = "/v1.0/healthz/outbound"
# alpha1 exists since Dapr 1.10 and is still served; the stable path since 1.17 (on older
# sidecars `/v1.0/publish/bulk/p/t` is routed as a single publish to a pubsub named "bulk").
_BULK_PATHS: Final = ("/v1.0-alpha1/publish/bulk", "/v1.0/publish/bulk")
_ROUTE_MISSING: Final = frozenset({404, 405, 501})
_TOPIC_WIDE: Final = frozenset({401, 403, 404})
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})
_MAX_5XX_IN_A_ROW: Final = 3
# Dapr's default max request body is 4 MB; stay well below it.
_MAX_BULK_BYTES: Final = 1_000_000
_MAX_BULK_ENTRIES: Final = 1_000
_HINTS: Final = {
    401: " (check DAPR_API_TOKEN)",
    403: " (the pubsub component's scopes do not allow this topic for the app)",
    404: " (check DAPR_PUBSUB_NAME and the pubsub component)",
}


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.OK
    if status >= 500 or status in _RETRYABLE_4XX:
        return Outcome.TRANSIENT
    return Outcome.PERMANENT


class _Answer:
    """A sidecar answer: status, body text, parsed JSON (None when not JSON)."""

    __slots__ = ("payload", "status", "text")

    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        try:
            self.payload: Any = json.loads(text) if text else None
        except ValueError:
            self.payload = None

    def describe(self) -> str:
        text, p = self.text.strip(), self.payload
        if isinstance(p, dict) and ("errorCode" in p or "message" in p):
            text = f"{p.get('errorCode', '')}: {p.get('message', '')}".strip(": ")
        return f"Dapr answered {self.status}: {text[:300]}{_HINTS.get(self.status, '')}"

    def result(self) -> SendResult:
        outcome = classify_status(self.status)
        error = None if outcome is Outcome.OK else self.describe()
        return SendResult(outcome, error, self.status)


class DaprTransport:
    """Publishes through the sidecar of `settings` (default: `get_settings()`), with one
    aiohttp session per event loop, opened on first use; `aclose()` closes the running loop's."""

    def __init__(self, settings: Settings | None = None) -> None:
        s = self.settings = settings if settings is not None else get_settings()
        self.base_url = s.dapr_base_url
        self._pubsub = quote(s.dapr_pubsub_name, safe="")
        self._timeout = aiohttp.ClientTimeout(
            total=s.dapr_publish_timeout, connect=min(s.dapr_publish_timeout, 1.0)
        )
        token = s.dapr_api_token.get_secret_value() if s.dapr_api_token is not None else None
        self._headers = {"Content-Type": CLOUDEVENTS_CONTENT_TYPE}
        if token is not None:
            self._headers["dapr-api-token"] = token
        self._bulk_headers = {**self._headers, "Content-Type": "application/json"}
        self._mode = s.dapr_bulk_publish
        self._bulk_path = 0  # index of the bulk path that works
        self.bulk_unsupported = False  # auto mode found a sidecar without bulk publish
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    # --- hooks.Transport ------------------------------------------------------------------

    async def send(self, messages: Sequence[Message], /) -> list[SendResult]:
        if not messages:
            return []
        if not self.settings.dapr_enabled:  # events stay in the outbox
            return [
                SendResult(Outcome.TRANSIENT, "publishing disabled (DAPR_ENABLED=false)")
            ] * len(messages)
        by_topic: dict[str, list[int]] = {}
        for index, message in enumerate(messages):
            by_topic.setdefault(message.topic, []).append(index)
        results: list[SendResult] = [SendResult(Outcome.TRANSIENT, "not sent")] * len(messages)
        answers = await asyncio.gather(
            *(self._send_topic(t, [messages[i] for i in ix]) for t, ix in by_topic.items()),
            return_exceptions=True,  # one topic's bug must not cut another's request short
        )
        for indexes, answer in zip(by_topic.values(), answers, strict=True):
            if isinstance(answer, BaseException):  # never raises: the events stay in the outbox
                logger.opt(exception=answer).error("events not published: unexpected error")
                answer = [SendResult(Outcome.TRANSIENT, f"unexpected error: {answer!r}")] * len(
                    indexes
                )
            for index, result in zip(indexes, answer, strict=True):
                results[index] = result
        return results

    async def check_ready(self) -> bool:
        """`GET /v1.0/healthz/outbound` answers 204; False when disabled (no call made)."""
        if not self.settings.dapr_enabled:
            return False
        try:
            return (await self._request("GET", _READY_PATH)).status == 204
        except Exception as exc:
            logger.bind(dapr_status=None).debug("Dapr sidecar not ready: {!r}", exc)
            return False

    async def aclose(self) -> None:
        """Closes the running loop's session; sessions of loops that ended are dropped."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        for old in [lp for lp in self._sessions if lp.is_closed()]:
            del self._sessions[old]
        if session is not None:
            await session.close()

    # --- per topic ------------------------------------------------------------------------

    async def _send_topic(self, topic: str, messages: list[Message]) -> list[SendResult]:
        bulk = self._mode == "always" or (self._mode == "auto" and not self.bulk_unsupported)
        if not bulk or len(messages) < 2:
            return await self._singles(topic, messages)
        results: list[SendResult] = []
        for chunk, body in _bulk_bodies(messages):
            if self._mode == "auto" and self.bulk_unsupported:
                results += await self._singles(topic, chunk)
            else:
                results += await self._bulk(topic, chunk, body)
            last = results[-1]
            if (last.status is None and not last.ok) or last.status in _TOPIC_WIDE:
                results += [last] * (len(messages) - len(results))  # the rest would fail alike
                break
        return results

    async def _singles(self, topic: str, messages: list[Message]) -> list[SendResult]:
        results: list[SendResult] = []
        failures_5xx = 0
        for message in messages:
            result = await self._single(topic, message)
            results.append(result)
            failures_5xx = failures_5xx + 1 if (result.status or 0) >= 500 else 0
            if (result.status is None and not result.ok) or result.status in _TOPIC_WIDE:
                stop = result
            elif failures_5xx >= _MAX_5XX_IN_A_ROW:
                stop = SendResult(result.outcome, f"not sent: {result.error}", result.status)
            else:
                continue
            results += [stop] * (len(messages) - len(results))
            break
        return results

    async def _single(self, topic: str, message: Message) -> SendResult:
        path = f"/v1.0/publish/{self._pubsub}/{quote(topic, safe='')}"
        if message.key:
            path += f"?metadata.partitionKey={quote(message.key, safe='')}"
        # The event's own trace context (issue 19): the sidecar's publish span continues it.
        headers = {**self._headers, **trace_headers(message.body)}
        try:
            answer = await self._request("POST", path, message.body, headers)
        except Exception as exc:
            return self._unreachable(exc)
        return answer.result()

    async def _bulk(self, topic: str, messages: list[Message], body: bytes) -> list[SendResult]:
        for index in range(self._bulk_path, len(_BULK_PATHS)):
            path = f"{_BULK_PATHS[index]}/{self._pubsub}/{quote(topic, safe='')}"
            try:
                answer = await self._request("POST", path, body, self._bulk_headers)
            except Exception as exc:
                return [self._unreachable(exc)] * len(messages)
            if answer.status not in _ROUTE_MISSING or self._pubsub_not_found(answer):
                self._bulk_path = index
                return await self._bulk_results(topic, messages, answer)
        # No bulk route on this sidecar.
        if self._mode == "always":
            error = f"{answer.describe()}: the sidecar has no bulk publish API "
            error += "(DAPR_BULK_PUBLISH=always; use auto or upgrade Dapr)"
            return [SendResult(Outcome.PERMANENT, error, answer.status)] * len(messages)
        results = await self._singles(topic, messages)
        if any(r.ok for r in results):
            self.bulk_unsupported = True
            logger.bind(topic=topic).info(
                "the Dapr sidecar has no bulk publish API; using single publish"
            )
        return results

    async def _bulk_results(
        self, topic: str, messages: list[Message], answer: _Answer
    ) -> list[SendResult]:
        if 200 <= answer.status < 300:
            return [SendResult(Outcome.OK, status=answer.status)] * len(messages)
        if answer.status == 400:  # one malformed entry spoils the request: isolate it
            return await self._singles(topic, messages)
        failed = _failed_entries(answer.payload)
        whole = answer.result()
        if failed is None:
            return [whole] * len(messages)
        return [
            SendResult(whole.outcome, failed[m.id], answer.status)
            if m.id in failed
            else SendResult(Outcome.OK)
            for m in messages
        ]

    # --- HTTP -----------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=16, keepalive_timeout=30.0, use_dns_cache=True)
            session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, trust_env=False
            )
            self._sessions[loop] = session
        return session

    async def _request(
        self,
        method: str,
        path: str,
        body: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Answer:
        # A ready-made, already quoted URL: aiohttp neither joins nor re-encodes it.
        url = URL(self.base_url + path, encoded=True)
        data = body.encode() if isinstance(body, str) else body
        async with self._session().request(method, url, data=data, headers=headers) as response:
            text = "" if response.status == 204 else await response.text(errors="replace")
            return _Answer(response.status, text)

    def _unreachable(self, exc: BaseException) -> SendResult:
        if isinstance(exc, TimeoutError):
            error = f"Dapr sidecar did not answer within {self.settings.dapr_publish_timeout}s"
        else:
            error = f"cannot reach the Dapr sidecar at {self.base_url}: {exc!r}"
        return SendResult(Outcome.TRANSIENT, error)

    def _pubsub_not_found(self, answer: _Answer) -> bool:
        """A 404 that is Dapr's "pubsub not found" for our pubsub: a configuration error, not a
        missing route (pre-1.17 sidecars answer the stable bulk path "pubsub bulk not found")."""
        p = answer.payload
        if not isinstance(p, dict) or p.get("errorCode") != "ERR_PUBSUB_NOT_FOUND":
            return False
        return self.settings.dapr_pubsub_name in str(p.get("message", "")).split()


def _failed_entries(payload: Any) -> dict[str, str] | None:
    """`failedEntries` of a bulk answer as {entryId: error}; None when absent."""
    entries = payload.get("failedEntries") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        return None
    failed = {
        str(e["entryId"]): str(e.get("error") or "failed")
        for e in entries
        if isinstance(e, dict) and e.get("entryId") is not None
    }
    return failed or None


def _bulk_bodies(messages: list[Message]) -> list[tuple[list[Message], bytes]]:
    """Bulk request bodies of at most _MAX_BULK_ENTRIES / _MAX_BULK_BYTES, with their messages.

    The stored CloudEvent JSON is embedded as is (no parse and re-serialise per event). Only
    per-entry metadata: request-level metadata would override the partition keys."""
    out: list[tuple[list[Message], bytes]] = []
    chunk: list[Message] = []
    entries: list[str] = []
    size = 0
    for m in messages:
        entry = (
            f'{{"entryId":{_quote(m.id)},"event":{m.body},"contentType":"{CLOUDEVENTS_CONTENT_TYPE}",'
            f'"metadata":{{"partitionKey":{_quote(m.key)}}}}}'
        )
        if chunk and (size + len(entry) > _MAX_BULK_BYTES or len(chunk) >= _MAX_BULK_ENTRIES):
            out.append((chunk, f"[{','.join(entries)}]".encode()))
            chunk, entries, size = [], [], 0
        chunk.append(m)
        entries.append(entry)
        size += len(entry) + 1
    out.append((chunk, f"[{','.join(entries)}]".encode()))
    return out
