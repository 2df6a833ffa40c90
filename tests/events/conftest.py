"""Fixtures for the event tests: an emulated Dapr sidecar, publishers pointed at it, logs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from loguru import logger
from src.config import Settings
from src.events import EventPublisher, reset_event_publisher

from tests.support.cloudevents_conformance import assert_conforms
from tests.support.dapr_emulator import CLOUDEVENTS_JSON, DaprEmulator


@pytest.fixture
def dapr() -> Iterator[DaprEmulator]:
    """A fresh emulated sidecar. Afterwards, every event it received must conform (§2)."""
    with DaprEmulator(pubsubs={"pubsub-kafka"}) as emulator:
        yield emulator
        for delivery in emulator.received:
            if delivery.content_type == CLOUDEVENTS_JSON:
                assert_conforms(delivery.raw)


@pytest.fixture
def settings_for(dapr: DaprEmulator) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "dapr_enabled": True,
            "dapr_host": "127.0.0.1",
            "dapr_http_port": dapr.port,
            "dapr_publish_timeout": 2.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def publisher_for(settings_for: Callable[..., Settings]) -> Callable[..., EventPublisher]:
    def make(**overrides: Any) -> EventPublisher:
        return EventPublisher(settings_for(**overrides))

    return make


@pytest.fixture(autouse=True)
def _fresh_publisher() -> Iterator[None]:
    reset_event_publisher()
    yield
    reset_event_publisher()


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record emitted during the test (level, message, extra fields)."""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append(
            {
                "level": record["level"].name,
                "message": record["message"],
                "extra": dict(record["extra"]),
                "exception": record["exception"],
            }
        )

    handler = logger.add(sink, level="DEBUG", format="{message}")
    yield records
    logger.remove(handler)
