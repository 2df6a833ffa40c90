"""Per-request context that code far from the request (ORM hooks, logs) can read."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["correlation_id"]

# Set by the request middleware from `X-Request-ID` (or generated); copied into the worker
# threads that run sync endpoints, so the ORM hooks see it at flush time.
correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
