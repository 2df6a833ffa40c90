"""SQLAlchemy ORM event hooks that turn committed row changes into outbox messages.

Generic: it knows nothing of tasks, FastAPI or Dapr. The application gives it a rule
(`RowChange` -> `Message`s) and a `Transport`:

    hooks.track(Model, rule, sink_factory=lambda session: hooks.OutboxSink(outbox_table))
    relay = hooks.OutboxRelay(engine, outbox_table, transport, wake=hooks.WakeSignal())

See docs/hooks.md for the write paths covered and the transaction semantics.
"""

from hooks._capture import Tracker
from hooks._metrics import RelayMetrics
from hooks._outbox import DEFAULT_NOTIFY_CHANNEL, OutboxSink
from hooks._outbox_admin import outbox_retry, outbox_status
from hooks._outbox_table import DEFAULT_OUTBOX_TABLE, build_outbox_table
from hooks._relay import OutboxRelay, RelayState, RelayStatus
from hooks._schedule import RelayConfigError
from hooks._sink import Sink, SinkFactory
from hooks._sqlite import install_sqlite_transaction_fix
from hooks._sqltypes import UTCDateTime, utc_now
from hooks._track import is_tracked, track, untrack
from hooks._transaction import AfterCommitSink, CommitHandler, MemorySink, defer_until_commit
from hooks._types import (
    ChangeKind,
    ChangeRule,
    HooksError,
    Message,
    Outcome,
    RowChange,
    SendResult,
    Transport,
    UnsupportedWritePath,
)
from hooks._wakeups import WakeSignal

__all__ = [
    "DEFAULT_NOTIFY_CHANNEL",
    "DEFAULT_OUTBOX_TABLE",
    "AfterCommitSink",
    "ChangeKind",
    "ChangeRule",
    "CommitHandler",
    "HooksError",
    "MemorySink",
    "Message",
    "OutboxRelay",
    "OutboxSink",
    "Outcome",
    "RelayConfigError",
    "RelayMetrics",
    "RelayState",
    "RelayStatus",
    "RowChange",
    "SendResult",
    "Sink",
    "SinkFactory",
    "Tracker",
    "Transport",
    "UTCDateTime",
    "UnsupportedWritePath",
    "WakeSignal",
    "build_outbox_table",
    "defer_until_commit",
    "install_sqlite_transaction_fix",
    "is_tracked",
    "outbox_retry",
    "outbox_status",
    "track",
    "untrack",
    "utc_now",
]
