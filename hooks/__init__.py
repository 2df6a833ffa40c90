"""SQLAlchemy ORM event hooks that turn committed row changes into outbox messages.

Generic: it knows nothing of tasks, FastAPI or Dapr. The application gives it a rule
(`RowChange` -> `Message`s) and a `Transport`.
"""

from hooks._outbox_table import DEFAULT_OUTBOX_TABLE, build_outbox_table
from hooks._sqltypes import UTCDateTime, utc_now
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

__all__ = [
    "DEFAULT_OUTBOX_TABLE",
    "ChangeKind",
    "ChangeRule",
    "HooksError",
    "Message",
    "Outcome",
    "RowChange",
    "SendResult",
    "Transport",
    "UTCDateTime",
    "UnsupportedWritePath",
    "build_outbox_table",
    "utc_now",
]
