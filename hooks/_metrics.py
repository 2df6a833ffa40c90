"""Prometheus instruments of the outbox relay (issue 8).

Each `RelayMetrics` registers on the registry it is given (a fresh one by default), so several
relays or app instances in one process (tests) never hit duplicate-registration errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["LATENCY_BUCKETS", "RelayMetrics"]

# Commit-to-sidecar latency: milliseconds when healthy, up to minutes across an outage.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class RelayMetrics:
    """Counters, gauges and histograms of one relay, on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.published = Counter(
            "outbox_events_published",
            "Events the sidecar accepted and the relay deleted from the outbox.",
            ["topic"],
            registry=reg,
        )
        self.failed = Counter(
            "outbox_events_failed",
            "Failed delivery attempts (the event stays in the outbox and is retried).",
            ["topic", "outcome"],
            registry=reg,
        )
        self.backlog = Gauge("outbox_backlog_events", "Events waiting in the outbox.", registry=reg)
        self.oldest_age = Gauge(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest waiting event (0 when the outbox is empty).",
            registry=reg,
        )
        self.latency = Histogram(
            "outbox_publish_latency_seconds",
            "Time from the event's outbox write to the sidecar accepting it "
            "(large batches sampled: at most 32 observations per transport call).",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.send_duration = Histogram(
            "outbox_send_duration_seconds",
            "Duration of one transport call (one topic's batch).",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.leader = Gauge(
            "outbox_relay_leader",
            "1 while this process is the active relay, 0 on standby.",
            registry=reg,
        )
