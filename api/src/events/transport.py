"""`DaprTransport`: the hooks relay's `Transport`, delivering outbox messages through Dapr.

`hooks` knows nothing of Dapr; the relay calls `send(messages)` with messages whose body is
the CloudEvent JSON written at commit time, and gets one `SendResult` per message, in order.
Classification (contract §3): 2xx → OK; connection error, time-out, 5xx → TRANSIENT;
400/401/403/404 → PERMANENT (configuration error, logged at ERROR). Never raises.
"""

from __future__ import annotations

from collections.abc import Sequence

from hooks import Message, Outcome, SendResult
from src.events.publisher import (
    EventPublisher,
    PublishOutcome,
    PublishResult,
    get_event_publisher,
)

__all__ = ["DaprTransport", "to_send_result"]

_OUTCOMES = {
    PublishOutcome.DELIVERED: Outcome.OK,
    PublishOutcome.TRANSIENT: Outcome.TRANSIENT,
    PublishOutcome.CONFIG_ERROR: Outcome.PERMANENT,
    PublishOutcome.INVALID: Outcome.PERMANENT,
    # Publishing switched off with events still waiting: keep them (nothing is dropped).
    PublishOutcome.DISABLED: Outcome.TRANSIENT,
}


def to_send_result(result: PublishResult) -> SendResult:
    error = result.error
    if result.outcome is PublishOutcome.DISABLED:
        error = "publishing disabled (DAPR_ENABLED=false)"
    return SendResult(outcome=_OUTCOMES[result.outcome], error=error, status=result.dapr_status)


class DaprTransport:
    """Sends relay batches with `EventPublisher.publish_batch()` (bulk where allowed)."""

    def __init__(self, publisher: EventPublisher | None = None) -> None:
        self._publisher = publisher if publisher is not None else get_event_publisher()

    @property
    def publisher(self) -> EventPublisher:
        return self._publisher

    async def send(self, messages: Sequence[Message], /) -> Sequence[SendResult]:
        if not messages:
            return []
        try:
            results = await self._publisher.publish_batch(messages)
            return [to_send_result(r) for r in results]
        except Exception as exc:  # the protocol promises no exceptions
            return [SendResult(Outcome.TRANSIENT, error=repr(exc)) for _ in messages]

    async def check_ready(self) -> bool:
        return await self._publisher.check_ready()

    async def aclose(self) -> None:
        await self._publisher.aclose()
