"""Per-transaction buffering: hand work over only after the outermost commit.

Messages parked with `defer_until_commit` belong to the innermost *real* transaction of the
session (a savepoint, else the root; the ORM's internal flush subtransactions are skipped):

- a savepoint that is released merges its buffer into the enclosing transaction;
- a savepoint or transaction that is rolled back, or ended by `close()` without commit,
  discards its buffer;
- the outermost commit hands every buffered batch to its handler, in write order.

`before_commit`/`after_commit` also fire when a savepoint is released and `after_rollback`
for savepoint rollbacks, so state is keyed on `SessionTransaction` objects rather than on
the session. `after_commit` runs after the database committed: nothing here may raise there.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

from loguru import logger
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction

from hooks._types import HooksError, Message

__all__ = [
    "AfterCommitSink",
    "CommitHandler",
    "MemorySink",
    "defer_until_commit",
    "install_transaction_listeners",
]


class CommitHandler(Protocol):
    """Gets the messages it parked once their outermost transaction has committed.

    Must not raise (it runs inside `Session.commit()` after the database commit); errors are
    caught and logged anyway.
    """

    def on_commit(self, messages: list[Message], /) -> None: ...


# handler -> messages, in the order the handlers first wrote (dicts keep insertion order).
_Buffer = dict[CommitHandler, list[Message]]

_buffers: weakref.WeakKeyDictionary[SessionTransaction, _Buffer] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
_installed = False


def _current(session: Session) -> SessionTransaction | None:
    return session.get_nested_transaction() or session.get_transaction()


def _enclosing(tx: SessionTransaction) -> SessionTransaction | None:
    """The real transaction a savepoint belongs to (skipping flush subtransactions)."""
    parent = tx.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


def defer_until_commit(
    session: Session, handler: CommitHandler, messages: Sequence[Message] = ()
) -> None:
    """Parks `messages` for `handler` until the outermost commit of the current transaction.

    With no messages the handler is still called once on commit (e.g. to wake a relay).
    """
    tx = _current(session)
    if tx is None:
        raise HooksError("defer_until_commit() needs a session inside a transaction")
    buffer = _buffers.get(tx)
    if buffer is None:
        buffer = _buffers[tx] = {}
    parked = buffer.get(handler)
    if parked is None:
        buffer[handler] = list(messages)
    else:
        parked.extend(messages)


def _merge(into: _Buffer, buffer: _Buffer) -> None:
    for handler, messages in buffer.items():
        parked = into.get(handler)
        if parked is None:
            into[handler] = messages
        else:
            parked.extend(messages)


def _deliver(buffer: _Buffer) -> None:
    for handler, messages in buffer.items():
        try:
            handler.on_commit(messages)
        except Exception:  # commit() must never fail after the database committed
            logger.opt(exception=True).bind(handler=repr(handler)).error(
                "after-commit handler failed; its {} message(s) were committed but not handed over",
                len(messages),
            )


def _after_commit(session: Session) -> None:
    try:
        if not _buffers:
            return
        tx = _current(session)  # still the committing transaction: close() comes after
        if tx is None:
            return
        buffer = _buffers.pop(tx, None)
        if not buffer:
            return
        if tx.nested:
            parent = _enclosing(tx)
            if parent is None:  # pragma: no cover - a savepoint always has a parent
                return
            target = _buffers.get(parent)
            if target is None:
                _buffers[parent] = buffer
            else:
                _merge(target, buffer)
        else:
            _deliver(buffer)
    except Exception:  # never raise out of after_commit
        logger.opt(exception=True).error("after-commit hand-over failed")


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Committed buffers were popped in after_commit; what is left was rolled back or closed.
    if _buffers:
        _buffers.pop(transaction, None)


def install_transaction_listeners() -> None:
    """Registers the listeners on the `Session` class, once (every session, sync or async)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_transaction_end", _after_transaction_end)
        _installed = True


class AfterCommitSink:
    """A sink that hands each committed transaction's messages to `deliver`, in order.

    Nothing reaches `deliver` for a rolled-back transaction or savepoint. One call per
    outermost commit (all flushes and statements of the transaction together).
    """

    def __init__(self, deliver: Callable[[list[Message]], None]) -> None:
        self._deliver = deliver
        install_transaction_listeners()

    def write(
        self, session: Session, connection: Connection, messages: Sequence[Message], /
    ) -> None:
        if messages:
            defer_until_commit(session, self, messages)

    def on_commit(self, messages: list[Message], /) -> None:
        if messages:
            self._deliver(messages)


class MemorySink(AfterCommitSink):
    """Collects committed messages in `messages` (tests, tools)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        super().__init__(self._append)

    def _append(self, messages: list[Message]) -> None:
        with self._lock:
            self.messages.extend(messages)

    def take(self) -> list[Message]:
        """Returns and forgets what was collected so far."""
        with self._lock:
            taken, self.messages = self.messages, []
        return taken
