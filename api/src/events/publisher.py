"""Publishes CloudEvents to Dapr pub/sub over the sidecar's HTTP API (T-011, T-015, T-016).

Two kinds of callers:

- code that wants to send one event now: `publish_task_event()`, `publish_sync_event()`,
  `publish_reminder_event()`, `publish_task_event_from_dict()`, `publish_event()`;
- the outbox relay, which sends events that were built and serialised at commit time:
  `publish_serialized()` for one, `publish_batch()` for many (through `DaprTransport`).

None of the public methods raises (T-016): every outcome comes back as a `PublishResult`,
classified as delivered, disabled, transient (connection error, time-out, 5xx: retry soon) or
configuration error (400/401/403/404: fix the deployment), and is logged with loguru, bound
with event_type, topic, task_id, user_id, correlation_id, dapr_status (T-015).
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import quote

from loguru import logger

from src.config import Settings, get_settings
from src.events._sidecar_http import (
    HttpxSidecarClient,
    SidecarClient,
    SidecarResponse,
    SidecarTransport,
    SidecarTransportError,
)
from src.events.schemas import (
    CloudEvent,
    EventSchemaError,
    LifecycleAction,
    ReminderAction,
    TaskSnapshot,
    build_reminder_event,
    build_sync_event,
    build_task_event,
    topic_for,
)
from src.request_context import correlation_id as current_correlation_id

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "EventPublisher",
    "OutgoingEvent",
    "PublishOutcome",
    "PublishResult",
    "get_event_publisher",
    "reset_event_publisher",
]

CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"
_SINGLE_PATH: Final = "/v1.0/publish"
# alpha1 exists since Dapr 1.10 and is still served; the stable path only since 1.17, and on
# older sidecars `/v1.0/publish/bulk/p/t` is routed as a single publish to a pubsub "bulk".
_BULK_PATHS: Final = ("/v1.0-alpha1/publish/bulk", "/v1.0/publish/bulk")
_READY_PATH: Final = "/v1.0/healthz/outbound"
# Answers meaning "this sidecar has no such route" rather than "your request is wrong".
_ROUTE_MISSING: Final = frozenset({404, 405, 501})
_CONFIG_STATUSES: Final = frozenset({400, 401, 403, 404})
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})
# Statuses that say nothing about one event but about the whole topic/pubsub/token (a bad
# single event gets 500 "cannot create cloudevent" from Dapr, not 400): after one, the rest of
# the batch for that topic is not attempted.
_TOPIC_WIDE: Final = frozenset({400, 401, 403, 404})
# Single publishes that fail in a row before the rest of a topic's batch is left for later
# (a broker outage answers 500 to every event: no point in hundreds of requests and logs).
_MAX_FAILURES_IN_A_ROW: Final = 3
# Dapr's default max request body is 4 MB; stay well below it.
_MAX_BULK_BYTES: Final = 1_000_000
_MAX_BULK_ENTRIES: Final = 1_000
_MAX_LOGGED_IDS: Final = 20


class PublishOutcome(enum.Enum):
    DELIVERED = "delivered"
    # DAPR_ENABLED=false: nothing was sent, on purpose.
    DISABLED = "disabled"
    # Connection refused/reset, time-out, 5xx, 408/425/429: worth retrying soon.
    TRANSIENT = "transient"
    # 400/401/403/404 and other 4xx: the deployment needs fixing (logged at ERROR).
    CONFIG_ERROR = "config_error"
    # The event could not be built from the given values (a caller bug).
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class PublishResult:
    outcome: PublishOutcome
    dapr_status: int | None = None
    error: str | None = None
    event_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is PublishOutcome.DELIVERED


class OutgoingEvent(Protocol):
    """An already-serialised event (`hooks.Message` is one): body is the CloudEvent JSON."""

    @property
    def id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def body(self) -> str: ...


@dataclass(frozen=True, slots=True)
class _Serialized:
    id: str
    topic: str
    key: str
    body: str


@dataclass(frozen=True, slots=True)
class _LogFields:
    event_type: str | None = None
    task_id: str | None = None
    user_id: str | None = None
    correlation_id: str | None = None
    event_id: str | None = None

    @classmethod
    def of_event(cls, event: CloudEvent) -> _LogFields:
        return cls(event.type, event.subject, event.user_id, event.correlationid, event.id)

    @classmethod
    def of_body(cls, body: str, event_id: str | None, key: str | None) -> _LogFields:
        try:
            raw = json.loads(body)
            data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
            user = data.get("user_id")
            return cls(
                raw.get("type"),
                raw.get("subject") or key,
                None if user is None else str(user),
                raw.get("correlationid"),
                raw.get("id") or event_id,
            )
        except (ValueError, AttributeError):
            return cls(task_id=key, event_id=event_id)


@dataclass(slots=True)
class _TopicRun:
    """Per-topic state while sending one batch: keys that must wait, or a topic-wide stop."""

    blocked: dict[str, PublishResult] = field(default_factory=dict)
    abort: PublishResult | None = None
    failures_in_a_row: int = 0


@dataclass(frozen=True, slots=True)
class _BulkAnswer:
    status: int | None
    failed: dict[str, str] | None = None
    error: str | None = None
    route_missing: bool = False


def classify_status(status: int) -> PublishOutcome:
    """Contract §3: 2xx delivered; 5xx and 408/425/429 transient; other answers config errors."""
    if 200 <= status < 300:
        return PublishOutcome.DELIVERED
    if status >= 500 or status in _RETRYABLE_4XX:
        return PublishOutcome.TRANSIENT
    return PublishOutcome.CONFIG_ERROR


def _describe_answer(response: SidecarResponse) -> str:
    text = response.text.strip()
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and ("errorCode" in payload or "message" in payload):
        text = f"{payload.get('errorCode', '')}: {payload.get('message', '')}".strip(": ")
    hint = {
        401: " (check DAPR_API_TOKEN)",
        403: " (the pubsub component's scopes do not allow this topic for the app)",
        404: " (check DAPR_PUBSUB_NAME and the pubsub component)",
    }.get(response.status_code, "")
    return f"Dapr answered {response.status_code}: {text[:300]}{hint}"


def _task_mapping(task: Any) -> Mapping[str, Any] | TaskSnapshot:
    if isinstance(task, TaskSnapshot | Mapping):
        return task
    # An ORM object (e.g. the Task model): read the snapshot fields off it.
    return {name: getattr(task, name) for name in TaskSnapshot.model_fields if hasattr(task, name)}


def _change_pairs(changes: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    pairs: dict[str, tuple[Any, Any]] = {}
    for name, change in (changes or {}).items():
        if isinstance(change, Mapping):
            pairs[name] = (change.get("old"), change.get("new"))
        else:
            old, new = change
            pairs[name] = (old, new)
    return pairs


class EventPublisher:
    """Sends CloudEvents to the Dapr sidecar configured in `Settings`.

    One `SidecarClient` (a minimal HTTP/1.1 keep-alive pool, `_sidecar_http`) per event loop,
    created on first use, or the httpx `client` given (then the caller owns and closes it).
    `aclose()` closes the current loop's client.
    """

    def __init__(
        self, settings: Settings | None = None, *, client: httpx.AsyncClient | None = None
    ) -> None:
        self._settings = settings if settings is not None else get_settings()
        s = self._settings
        self._base = s.dapr_base_url
        self._pubsub = quote(s.dapr_pubsub_name, safe="")
        self._timeout = s.dapr_publish_timeout
        self._injected: SidecarTransport | None = (
            None if client is None else HttpxSidecarClient(client, self._base, self._timeout)
        )
        self._clients: dict[asyncio.AbstractEventLoop, SidecarClient] = {}
        self._lock = threading.Lock()
        self._headers = {"Content-Type": CLOUDEVENTS_CONTENT_TYPE}
        if s.dapr_api_token is not None:
            self._headers["dapr-api-token"] = s.dapr_api_token.get_secret_value()
        self._bulk_mode = s.dapr_bulk_publish
        # auto mode: index of the bulk path that works, and whether the sidecar has none.
        self._bulk_path = 0
        self._bulk_unsupported = False

    # --- properties ----------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def enabled(self) -> bool:
        return self._settings.dapr_enabled

    @property
    def bulk_unsupported(self) -> bool:
        """True once auto mode found that the sidecar has no bulk publish API."""
        return self._bulk_unsupported

    # --- building (T-010 builders with the configured source and request correlation id) --------

    def _correlation(self, correlation_id: str | None) -> str | None:
        # Default: the X-Request-ID of the request being served, if any.
        return correlation_id if correlation_id is not None else current_correlation_id.get()

    def _build_cloud_event(
        self,
        event_type: str,
        *,
        correlation_id: str | None = None,
        time: datetime | None = None,
        **fields: Any,
    ) -> CloudEvent:
        """The CloudEvent of `event_type` from its data fields (raises EventSchemaError)."""
        common: dict[str, Any] = {
            "source": self._settings.events_source,
            "correlation_id": self._correlation(correlation_id),
            "time": time,
        }
        family, _, action = event_type.partition(".")
        if event_type == "task.sync":
            return build_sync_event(action=fields.pop("action"), **fields, **common)
        if family == "task":
            return build_task_event(
                action=action,  # type: ignore[arg-type]
                task=_task_mapping(fields.pop("task")),
                changes=_change_pairs(fields.pop("changes", None)),
                **fields,
                **common,
            )
        if family == "reminder":
            return build_reminder_event(action=action, **fields, **common)  # type: ignore[arg-type]
        raise EventSchemaError(f"unknown event type {event_type!r}")

    async def _build_and_publish(self, event_type: str, **fields: Any) -> PublishResult:
        try:
            event = self._build_cloud_event(event_type, **fields)
        except (EventSchemaError, KeyError, TypeError, ValueError) as exc:
            logger.bind(event_type=event_type, outcome=PublishOutcome.INVALID.value).error(
                "event not published: cannot build it: {}", exc
            )
            return PublishResult(PublishOutcome.INVALID, error=str(exc))
        return await self.publish_event(event)

    # --- public publish API (never raises) -----------------------------------------------------

    async def publish_task_event(
        self,
        action: LifecycleAction,
        task: Any,
        *,
        changes: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> PublishResult:
        """`task.<action>` to TOPIC_TASK_EVENTS. `task`: ORM object, mapping or TaskSnapshot;
        `changes`: `{field: (old, new)}` or `{field: {"old":…, "new":…}}`."""
        return await self._build_and_publish(
            f"task.{action}",
            task=task,
            changes=changes,
            correlation_id=correlation_id,
            time=time,
        )

    async def publish_task_event_from_dict(
        self,
        action: LifecycleAction,
        task: Mapping[str, Any],
        *,
        changes: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> PublishResult:
        """Like `publish_task_event()` for a task given as a dict (e.g. a serialised row)."""
        return await self.publish_task_event(
            action, dict(task), changes=changes, correlation_id=correlation_id, time=time
        )

    async def publish_sync_event(
        self,
        action: LifecycleAction,
        task_id: int,
        user_id: str,
        *,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> PublishResult:
        """`task.sync` to TOPIC_TASK_UPDATES."""
        return await self._build_and_publish(
            "task.sync",
            action=action,
            task_id=task_id,
            user_id=user_id,
            correlation_id=correlation_id,
            time=time,
        )

    async def publish_reminder_event(
        self,
        action: ReminderAction,
        task_id: int,
        user_id: str,
        due_date: datetime | None,
        title: str,
        *,
        correlation_id: str | None = None,
        time: datetime | None = None,
    ) -> PublishResult:
        """`reminder.<action>` to TOPIC_REMINDERS (T-018)."""
        return await self._build_and_publish(
            f"reminder.{action}",
            task_id=task_id,
            user_id=user_id,
            due_date=due_date,
            title=title,
            correlation_id=correlation_id,
            time=time,
        )

    async def publish_event(self, event: CloudEvent, *, topic: str | None = None) -> PublishResult:
        """Sends an already-built event to `topic` (default: the topic of its type)."""
        try:
            resolved = topic or topic_for(event.type, self._settings)
        except EventSchemaError as exc:
            self._log(PublishResult(PublishOutcome.INVALID, error=str(exc)), topic, None, event)
            return PublishResult(PublishOutcome.INVALID, error=str(exc), event_id=event.id)
        return await self._publish(resolved, event)

    async def publish_serialized(
        self, topic: str, key: str, body: str, *, event_id: str | None = None
    ) -> PublishResult:
        """Sends one event serialised earlier (the outbox body) with partition key `key`."""
        results = await self.publish_batch(
            [_Serialized(id=event_id or "", topic=topic, key=key, body=body)]
        )
        return results[0]

    async def _publish(self, topic: str, event: CloudEvent) -> PublishResult:
        """One single-publish call for `event`; logs the outcome; never raises (T-016)."""
        try:
            if not self.enabled:
                result = PublishResult(PublishOutcome.DISABLED, event_id=event.id)
            else:
                key = event.partitionkey or event.subject
                result = await self._post_single(topic, key, event.to_json().encode(), event.id)
            self._log(result, topic, _LogFields.of_event(event), event)
            return result
        except Exception as exc:  # never let publishing reach the caller
            logger.opt(exception=exc).bind(topic=topic, event_type=event.type).error(
                "event not published: unexpected error"
            )
            return PublishResult(PublishOutcome.TRANSIENT, error=repr(exc), event_id=event.id)

    # --- batches (the relay) -------------------------------------------------------------------

    async def publish_batch(self, messages: Sequence[OutgoingEvent]) -> list[PublishResult]:
        """Sends serialised events; one result per message, in order. Never raises.

        Per topic, in batch order. Bulk publish (DAPR_BULK_PUBLISH) sends "waves" holding at
        most one event per partition key, since a bulk request promises no order; once an
        event of a key fails, the later ones of that key in the batch are not sent, so a
        retry cannot overtake them. A connection failure, time-out or topic-wide error
        (401/403/404) stops the rest of that topic's batch with the same result.
        """
        if not messages:
            return []
        try:
            results: list[PublishResult | None] = [None] * len(messages)
            if not self.enabled:
                logger.bind(count=len(messages), outcome=PublishOutcome.DISABLED.value).debug(
                    "publishing disabled (DAPR_ENABLED=false): {} events not sent", len(messages)
                )
                return [PublishResult(PublishOutcome.DISABLED, event_id=m.id) for m in messages]
            by_topic: dict[str, list[tuple[int, OutgoingEvent]]] = {}
            for index, message in enumerate(messages):
                by_topic.setdefault(message.topic, []).append((index, message))
            # Topics are independent streams: send them concurrently.
            await asyncio.gather(
                *(self._send_topic(topic, items, results) for topic, items in by_topic.items())
            )
            return [
                r
                if r is not None
                else PublishResult(PublishOutcome.TRANSIENT, error="not sent", event_id=m.id)
                for r, m in zip(results, messages, strict=True)
            ]
        except Exception as exc:  # never raises: everything stays in the outbox
            logger.opt(exception=exc).error("batch not published: unexpected error")
            return [
                PublishResult(PublishOutcome.TRANSIENT, error=repr(exc), event_id=m.id)
                for m in messages
            ]

    def _use_bulk(self, count: int) -> bool:
        if self._bulk_mode == "never" or count < 2:
            return False
        return not (self._bulk_mode == "auto" and self._bulk_unsupported)

    async def _send_topic(
        self,
        topic: str,
        items: list[tuple[int, OutgoingEvent]],
        results: list[PublishResult | None],
    ) -> None:
        run = _TopicRun()
        if not self._use_bulk(len(items)):
            await self._send_singles(topic, items, results, run)
            return
        for wave in _waves(items):
            pending = self._skip_blocked(wave, results, run)
            if not pending:
                continue
            if not self._use_bulk(len(pending)):  # one event left in the wave: single publish
                await self._send_singles(topic, pending, results, run)
            else:
                for chunk in _chunks(pending):
                    await self._send_bulk_chunk(
                        topic, self._skip_blocked(chunk, results, run), results, run
                    )

    @staticmethod
    def _skip_blocked(
        items: list[tuple[int, OutgoingEvent]],
        results: list[PublishResult | None],
        run: _TopicRun,
    ) -> list[tuple[int, OutgoingEvent]]:
        """Items still to send; the others get the result of what stopped them."""
        pending = []
        for index, message in items:
            cause = run.abort or run.blocked.get(message.key)
            if cause is None:
                pending.append((index, message))
            else:
                results[index] = PublishResult(
                    cause.outcome,
                    error=f"not sent: an earlier event failed ({cause.error})",
                    event_id=message.id,
                )
        return pending

    def _settle(
        self, message: OutgoingEvent, result: PublishResult, run: _TopicRun, *, single: bool
    ) -> None:
        """Records a result: a failure blocks the key; some failures stop the whole topic."""
        if result.ok:
            run.failures_in_a_row = 0
            return
        run.blocked[message.key] = result
        run.failures_in_a_row += 1
        if (
            result.dapr_status is None
            or result.dapr_status in _TOPIC_WIDE
            or (single and run.failures_in_a_row >= _MAX_FAILURES_IN_A_ROW)
        ):
            run.abort = result

    async def _send_singles(
        self,
        topic: str,
        items: list[tuple[int, OutgoingEvent]],
        results: list[PublishResult | None],
        run: _TopicRun,
    ) -> None:
        for index, message in items:
            if self._skip_blocked([(index, message)], results, run):
                result = await self._post_single(
                    topic, message.key, message.body.encode(), message.id
                )
                fields = _LogFields.of_body(message.body, message.id, message.key)
                self._log(result, topic, fields, None)
                results[index] = result
                self._settle(message, result, run, single=True)

    async def _send_bulk_chunk(
        self,
        topic: str,
        chunk: list[tuple[int, OutgoingEvent]],
        results: list[PublishResult | None],
        run: _TopicRun,
    ) -> None:
        if not chunk:
            return
        if self._bulk_mode == "auto" and self._bulk_unsupported:
            await self._send_singles(topic, chunk, results, run)
            return
        answer = await self._post_bulk(topic, [m for _, m in chunk])
        if answer.route_missing:
            if self._bulk_mode == "always":
                error = (
                    f"{answer.error}: the sidecar has no bulk publish API "
                    "(DAPR_BULK_PUBLISH=always; use auto or upgrade Dapr)"
                )
                failure = PublishResult(PublishOutcome.CONFIG_ERROR, answer.status, error)
                self._log_bulk(topic, chunk, failure, failed=len(chunk))
                for index, message in chunk:
                    results[index] = PublishResult(
                        failure.outcome, failure.dapr_status, failure.error, message.id
                    )
                run.abort = failure
                return
            await self._send_singles(topic, chunk, results, run)
            sent = [results[i] for i, _ in chunk]
            if any(r is not None and r.ok for r in sent):
                # Single publish works where bulk does not: an older sidecar. Remember it.
                self._bulk_unsupported = True
                logger.bind(topic=topic).info(
                    "the Dapr sidecar has no bulk publish API; using single publish"
                )
            return
        if answer.status == 400:
            # A malformed entry spoils the whole request: send one by one to isolate it.
            await self._send_singles(topic, chunk, results, run)
            return
        if answer.status is not None and 200 <= answer.status < 300:
            for index, message in chunk:
                results[index] = PublishResult(
                    PublishOutcome.DELIVERED, answer.status, event_id=message.id
                )
            self._log_bulk(
                topic, chunk, PublishResult(PublishOutcome.DELIVERED, answer.status), failed=0
            )
            return
        outcome = (
            PublishOutcome.TRANSIENT if answer.status is None else classify_status(answer.status)
        )
        failed_ids = answer.failed if answer.failed else None
        failed = 0
        for index, message in chunk:
            if failed_ids is not None and message.id not in failed_ids:
                results[index] = PublishResult(
                    PublishOutcome.DELIVERED, answer.status, event_id=message.id
                )
                continue
            entry_error = (failed_ids or {}).get(message.id) or answer.error
            result = PublishResult(outcome, answer.status, entry_error, message.id)
            results[index] = result
            self._settle(message, result, run, single=False)
            failed += 1
        summary = PublishResult(outcome, answer.status, answer.error)
        if failed_ids is None and (answer.status is None or answer.status in _TOPIC_WIDE):
            run.abort = summary
        self._log_bulk(topic, chunk, summary, failed=failed)

    # --- HTTP ----------------------------------------------------------------------------------

    def _client(self) -> SidecarTransport:
        if self._injected is not None:
            return self._injected
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                # A client's pooled connections belong to the loop that opened them; those of
                # loops that have ended can only be let go.
                for old in [lp for lp in self._clients if lp.is_closed()]:
                    self._clients.pop(old).abandon()
                # The sidecar is local plain HTTP: no proxy, no TLS, one origin.
                client = SidecarClient(
                    self._base,
                    timeout=self._timeout,
                    max_connections=16,
                    max_idle=8,
                    keepalive_expiry=30.0,
                )
                self._clients[loop] = client
            return client

    def _single_path(self, topic: str, key: str | None) -> str:
        path = f"{_SINGLE_PATH}/{self._pubsub}/{quote(topic, safe='')}"
        if key:
            # The Kafka component partitions by this metadata, not by the CE partitionkey.
            path += f"?metadata.partitionKey={quote(key, safe='')}"
        return path

    async def _request(
        self,
        method: str,
        path: str,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SidecarResponse:
        # The client bounds the whole call by the publish time-out (SidecarTimeout, T-016).
        return await self._client().request(method, path, content, headers)

    async def _post_single(
        self, topic: str, key: str | None, body: bytes, event_id: str | None
    ) -> PublishResult:
        try:
            response = await self._request(
                "POST", self._single_path(topic, key), body, self._headers
            )
        except TimeoutError:  # SidecarTimeout included
            return PublishResult(
                PublishOutcome.TRANSIENT,
                error=f"Dapr sidecar did not answer within {self._timeout}s",
                event_id=event_id,
            )
        except SidecarTransportError as exc:
            return PublishResult(
                PublishOutcome.TRANSIENT,
                error=f"cannot reach the Dapr sidecar at {self._base}: {exc!r}",
                event_id=event_id,
            )
        status = response.status_code
        outcome = classify_status(status)
        error = None if outcome is PublishOutcome.DELIVERED else _describe_answer(response)
        return PublishResult(outcome, status, error, event_id)

    async def _post_bulk(self, topic: str, messages: list[OutgoingEvent]) -> _BulkAnswer:
        # Entries embed the stored JSON text as is: no parse/serialise round trip per event.
        # Per-entry partitionKey; no request-level metadata, which would override it.
        body = (
            "["
            + ",".join(
                f'{{"entryId":{json.dumps(m.id)},"event":{m.body},'
                f'"contentType":"{CLOUDEVENTS_CONTENT_TYPE}",'
                f'"metadata":{{"partitionKey":{json.dumps(m.key)}}}}}'
                for m in messages
            )
            + "]"
        ).encode()
        headers = {**self._headers, "Content-Type": "application/json"}
        answer = _BulkAnswer(None)
        for index in range(self._bulk_path, len(_BULK_PATHS)):
            path = f"{_BULK_PATHS[index]}/{self._pubsub}/{quote(topic, safe='')}"
            try:
                response = await self._request("POST", path, body, headers)
            except TimeoutError:  # SidecarTimeout included
                return _BulkAnswer(
                    None, error=f"Dapr sidecar did not answer within {self._timeout}s"
                )
            except SidecarTransportError as exc:
                return _BulkAnswer(
                    None, error=f"cannot reach the Dapr sidecar at {self._base}: {exc!r}"
                )
            status = response.status_code
            if status in _ROUTE_MISSING and not self._is_pubsub_not_found(response):
                answer = _BulkAnswer(status, error=_describe_answer(response), route_missing=True)
                continue
            self._bulk_path = index
            if 200 <= status < 300:
                return _BulkAnswer(status)
            return _BulkAnswer(status, _failed_entries(response), _describe_answer(response))
        return answer

    def _is_pubsub_not_found(self, response: SidecarResponse) -> bool:
        """True when a 404 is Dapr's "pubsub not found" for our pubsub (a config error).

        A pre-1.17 sidecar answers the stable bulk path with "pubsub bulk not found" (it routes
        it as a single publish to a pubsub named "bulk"): a missing route, not a config error.
        """
        try:
            payload = response.json()
        except ValueError:
            return False
        if not isinstance(payload, dict) or payload.get("errorCode") != "ERR_PUBSUB_NOT_FOUND":
            return False
        return self._settings.dapr_pubsub_name in str(payload.get("message", "")).split()

    async def check_ready(self) -> bool:
        """Sidecar readiness: `GET /v1.0/healthz/outbound` answers 204 (never raises).

        False when publishing is disabled (no HTTP call is made then).
        """
        if not self.enabled:
            return False
        try:
            response = await self._request("GET", _READY_PATH)
        except Exception as exc:
            logger.bind(dapr_status=None).debug("Dapr sidecar not ready: {!r}", exc)
            return False
        return response.status_code == 204

    async def aclose(self) -> None:
        """Closes the pooled client of the running loop (an injected client is left open)."""
        with self._lock:
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            client = self._clients.pop(loop, None) if loop is not None else None
            for old in [lp for lp in self._clients if lp.is_closed()]:
                self._clients.pop(old).abandon()
        if client is not None:
            await client.aclose()

    # --- logging (T-015) -----------------------------------------------------------------------

    def _log(
        self,
        result: PublishResult,
        topic: str | None,
        fields: _LogFields | None,
        event: CloudEvent | None,
    ) -> None:
        f = fields or (_LogFields.of_event(event) if event is not None else _LogFields())
        log = logger.bind(
            event_type=f.event_type,
            topic=topic,
            task_id=f.task_id,
            user_id=f.user_id,
            correlation_id=f.correlation_id,
            event_id=f.event_id,
            dapr_status=result.dapr_status,
            outcome=result.outcome.value,
        )
        match result.outcome:
            case PublishOutcome.DELIVERED:
                log.info("event published")
            case PublishOutcome.DISABLED:
                # Contract §4: with DAPR_ENABLED=false events are only logged, at DEBUG.
                payload = event.to_dict() if event is not None else None
                log.bind(event=payload).debug("publishing disabled (DAPR_ENABLED=false)")
            case PublishOutcome.TRANSIENT if result.dapr_status is None:
                log.warning("event not published, will be retried: {}", result.error)
            case PublishOutcome.TRANSIENT:
                log.error("event not published, will be retried: {}", result.error)
            case _:
                log.error("event not published: {}", result.error)

    def _log_bulk(
        self,
        topic: str,
        chunk: list[tuple[int, OutgoingEvent]],
        summary: PublishResult,
        *,
        failed: int,
    ) -> None:
        keys = list(dict.fromkeys(m.key for _, m in chunk))
        log = logger.bind(
            topic=topic,
            task_ids=keys[:_MAX_LOGGED_IDS],
            event_ids=[m.id for _, m in chunk][:_MAX_LOGGED_IDS],
            count=len(chunk),
            failed=failed,
            dapr_status=summary.dapr_status,
            outcome=summary.outcome.value,
            bulk=True,
        )
        if failed == 0:
            log.info("{} events published (bulk)", len(chunk))
        elif summary.outcome is PublishOutcome.TRANSIENT and summary.dapr_status is None:
            log.warning(
                "{} of {} events not published, will be retried: {}",
                failed,
                len(chunk),
                summary.error,
            )
        else:
            log.error("{} of {} events not published: {}", failed, len(chunk), summary.error)


def _failed_entries(response: SidecarResponse) -> dict[str, str] | None:
    """`failedEntries` of a Dapr bulk answer as {entryId: error}; None when absent."""
    try:
        payload = response.json()
    except ValueError:
        return None
    entries = payload.get("failedEntries") if isinstance(payload, dict) else None
    if not isinstance(entries, list) or not entries:
        return None
    failed: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict) and entry.get("entryId") is not None:
            failed[str(entry["entryId"])] = str(entry.get("error") or "failed")
    return failed or None


def _waves(items: list[tuple[int, OutgoingEvent]]) -> list[list[tuple[int, OutgoingEvent]]]:
    """Splits a topic's batch so no wave holds two events of one key (or one id)."""
    waves: list[list[tuple[int, OutgoingEvent]]] = []
    next_wave: dict[str, int] = {}
    ids_in_wave: list[set[str]] = []
    for item in items:
        message = item[1]
        wave = next_wave.get(message.key, 0)
        while wave < len(waves) and message.id in ids_in_wave[wave]:
            wave += 1
        if wave == len(waves):
            waves.append([])
            ids_in_wave.append(set())
        waves[wave].append(item)
        ids_in_wave[wave].add(message.id)
        next_wave[message.key] = wave + 1
    return waves


def _chunks(items: list[tuple[int, OutgoingEvent]]) -> list[list[tuple[int, OutgoingEvent]]]:
    chunks: list[list[tuple[int, OutgoingEvent]]] = [[]]
    size = 0
    for item in items:
        length = len(item[1].body) + 200
        if chunks[-1] and (size + length > _MAX_BULK_BYTES or len(chunks[-1]) >= _MAX_BULK_ENTRIES):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += length
    return chunks


_publisher: EventPublisher | None = None
_publisher_lock = threading.Lock()


def get_event_publisher() -> EventPublisher:
    """The process's publisher, built from `get_settings()` (rebuilt when those change)."""
    global _publisher
    settings = get_settings()
    with _publisher_lock:
        if _publisher is None or _publisher.settings is not settings:
            _publisher = EventPublisher(settings)
        return _publisher


def reset_event_publisher() -> None:
    """Forgets the cached publisher (tests). Close it first with `aclose()` where it was used."""
    global _publisher
    with _publisher_lock:
        _publisher = None
