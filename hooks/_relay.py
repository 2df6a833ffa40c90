"""The outbox relay: reads committed outbox rows in sequence order, sends them, deletes them.

Issue 8 / T-016. Runs as a task in the API's event loop (or alone, `pakaura relay`); requests
never wait for it and never see its errors.

A round: [reading thread] pick the next batch, read only; [event loop] send it, one
transport call per topic, concurrently; [writing thread] record the results: one DELETE for
the sent rows, one executemany UPDATE for the failed ones. The next batch is read while one
is on the wire, and results are recorded off the path from commit to sidecar.

Ordering: a batch holds, per (topic, partition key), only the key's *first* row in the outbox,
and only if it is due; keys with a row being sent or not yet recorded are left out. So two
events of one key are never in flight together and a key's later events wait behind an
earlier one that failed; bulk publishing (no order inside a request) cannot reorder a key.
Rows of other keys are not held up.

Failures are charged to the narrowest cause:
- nothing in the round got through (sidecar down, hung, misconfigured): the relay pauses as a
  whole (capped exponential back-off with jitter) and retries the same head rows afterwards;
  it does not walk the backlog against a dead sidecar. A readiness probe during the pause ends
  it early once a sidecar that was seen unready answers again.
- every message of a topic was refused as a configuration error (401/403/404…): that topic
  pauses (it stops being scanned), the other topics keep flowing.
- otherwise the failed row itself is due again after its own back-off (by its `attempts`).
No event is ever dropped; every failure increments `attempts` and records `last_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from loguru import logger

from hooks._leader import Leadership, leadership_for, psycopg_conninfo
from hooks._metrics import RelayMetrics
from hooks._outbox import DEFAULT_NOTIFY_CHANNEL  # the channel the writer NOTIFYs on
from hooks._signal import WakeSignal
from hooks._sqltypes import utc_now
from hooks._types import HooksError, Message, Outcome, SendResult, Transport

__all__ = [
    "RETRY_NOTIFY_PAYLOAD",
    "OutboxRelay",
    "RelayConfigError",
    "RelayState",
    "RelayStatus",
]

# `outbox_retry` sends this payload on the channel: the leader forgets its pauses at once.
RETRY_NOTIFY_PAYLOAD = "retry"

_T = TypeVar("_T")
# Latency observations per transport call at most (see `_deliver`).
LATENCY_SAMPLES = 32


class RelayConfigError(HooksError, ValueError):
    """A relay parameter is out of range; the message names it."""


class RelayState(enum.StrEnum):
    STARTING = "starting"
    WAITING_FOR_SIDECAR = "waiting_for_sidecar"
    STANDBY = "standby"
    LEADER = "leader"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """A snapshot for /health and logs. Backlog figures are refreshed every few seconds."""

    state: RelayState
    backlog: int | None
    oldest_pending_age_seconds: float | None
    published: int
    failed: int
    backing_off_seconds: float | None
    paused_topics: tuple[str, ...]
    last_error: str | None

    @property
    def leader(self) -> bool:
        return self.state is RelayState.LEADER

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "leader": self.leader,
            "backlog": self.backlog,
            "oldest_pending_age_seconds": self.oldest_pending_age_seconds,
            "published": self.published,
            "failed": self.failed,
            "backing_off_seconds": self.backing_off_seconds,
            "paused_topics": list(self.paused_topics),
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    message: Message
    attempts: int
    created_at: datetime


@dataclass(slots=True)
class _Picked:
    rows: list[_Row]
    # The scan stopped early (batch full, scan limit): more rows may be sendable now.
    more: bool = False
    # Keys with a row left out because an earlier row of theirs is being sent or settling:
    # look again once that is recorded.
    held_back: set[tuple[str, str]] = field(default_factory=set)
    stats: tuple[int, datetime | None] | None = None


@dataclass(slots=True)
class _Skip:
    """Scan state kept between rounds: when the earliest waiting row falls due (wake up
    then), and the topics paused for this scan.

    Every scan starts from the outbox head. A scan that resumed further down would miss a
    row committed late with a lower sequence number (PostgreSQL hands out sequence numbers at
    INSERT, rows become visible at COMMIT), and the same key's next row, committed after it,
    would be sent first.
    """

    until: datetime | None = None
    paused: frozenset[str] = frozenset()


@dataclass(slots=True)
class _Results:
    """What a round's sends mean for the table: rows to delete, rows to mark as failed."""

    delete: list[int] = field(default_factory=list)
    retry: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delete or self.retry)


class _SeqList:
    """`seq IN (...)` / `NOT IN` with one bound parameter however long the list.

    SQLAlchemy renders an expanding IN anew for every list length, which costs more CPU per
    event than the rest of the relay: PostgreSQL gets an array, SQLite a JSON text.
    """

    def __init__(self, column: sa.ColumnElement[int], name: str, dialect: str) -> None:
        self.name = name
        self.encode: Callable[[list[int]], Any] = list
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            # Text "1,2,3" split by the server: the driver's array dumper costs ~10 µs a value.
            array = sa.cast(
                sa.func.string_to_array(sa.bindparam(name, type_=sa.Text()), ","),
                ARRAY(sa.BigInteger()),
            )
            self.member: sa.ColumnElement[bool] = column == sa.any_(array)
            self.not_member: sa.ColumnElement[bool] = column != sa.all_(array)
            self.encode = _csv
        elif dialect == "sqlite":
            values = sa.func.json_each(sa.bindparam(name, type_=sa.Text())).table_valued("value")
            self.member = column.in_(sa.select(values.c.value))
            self.not_member = column.not_in(sa.select(values.c.value))
            self.encode = json.dumps
        else:
            self.member = column.in_(sa.bindparam(name, expanding=True))
            self.not_member = column.not_in(sa.bindparam(name, expanding=True))

    def params(self, seqs: Sequence[int]) -> dict[str, Any]:
        return {self.name: self.encode(list(seqs))}


class _Store:
    """The relay's SQL, on one connection inside one transaction per call."""

    def __init__(self, table: sa.Table) -> None:
        t = self.table = table
        # next_attempt_at only for rows not due yet (NULL otherwise): most rows are due, and
        # converting a timestamp per row is a good part of the scan's cost.
        self._now = sa.bindparam("now", type_=t.c.next_attempt_at.type)
        waiting_until = sa.type_coerce(
            sa.case((t.c.next_attempt_at <= self._now, sa.null()), else_=t.c.next_attempt_at),
            t.c.next_attempt_at.type,
        )
        self._columns = (
            t.c.seq,
            t.c.event_id,
            t.c.topic,
            t.c.partition_key,
            t.c.payload,
            t.c.attempts,
            waiting_until,
            t.c.created_at,
        )
        self._lists: dict[str, tuple[_SeqList, _SeqList, sa.Delete]] = {}
        self._retry = (
            sa.update(t)
            .where(t.c.seq == sa.bindparam("b_seq"))
            .values(
                attempts=t.c.attempts + 1,
                last_error=sa.bindparam("b_error", type_=t.c.last_error.type),
                next_attempt_at=sa.bindparam("b_next", type_=t.c.next_attempt_at.type),
            )
        )
        self._count = sa.select(sa.func.count()).select_from(t)
        self._oldest = sa.select(t.c.created_at).order_by(t.c.seq).limit(1)

    def _sql(self, conn: sa.Connection) -> tuple[_SeqList, _SeqList, sa.Delete]:
        """(sent rows, rows in flight, DELETE of the sent rows) for this connection's dialect."""
        dialect = conn.dialect.name
        found = self._lists.get(dialect)
        if found is None:
            sent = _SeqList(self.table.c.seq, "sent", dialect)
            flying = _SeqList(self.table.c.seq, "in_flight", dialect)
            found = self._lists[dialect] = (sent, flying, sa.delete(self.table).where(sent.member))
        return found

    def apply(self, conn: sa.Connection, results: _Results | None) -> None:
        if not results:
            return
        if results.delete:
            sent, _, delete = self._sql(conn)
            conn.execute(delete, sent.params(results.delete))
        if results.retry:
            conn.execute(self._retry, results.retry)

    def stats(self, conn: sa.Connection) -> tuple[int, datetime | None]:
        count = conn.execute(self._count).scalar_one()
        oldest = conn.execute(self._oldest).scalar() if count else None
        return int(count), oldest

    def pick_batch(
        self,
        conn: sa.Connection,
        *,
        now: datetime,
        batch_size: int,
        scan_limit: int,
        skip: _Skip,
        in_flight: frozenset[tuple[str, str]],
        in_flight_seqs: Sequence[int],
        want_stats: bool,
    ) -> _Picked:
        picked = self.pick(
            conn,
            now=now,
            batch_size=batch_size,
            scan_limit=scan_limit,
            skip=skip,
            in_flight=in_flight,
            in_flight_seqs=in_flight_seqs,
        )
        if want_stats:
            picked.stats = self.stats(conn)
        return picked

    def pick(
        self,
        conn: sa.Connection,
        *,
        now: datetime,
        batch_size: int,
        scan_limit: int,
        skip: _Skip,
        in_flight: frozenset[tuple[str, str]] = frozenset(),
        in_flight_seqs: Sequence[int] = (),
    ) -> _Picked:
        """The batch: per (topic, key) the first row in sequence order, if due.

        Pages through the outbox from its head until the batch is full, the table ends or
        `scan_limit` rows were read: bounded time and memory with any backlog. Keys
        `in_flight` (being sent, or sent and not recorded yet) are left alone. Lowers
        `skip.until` to the earliest retry time of the waiting rows it passed.
        """
        t = self.table
        base = sa.select(*self._columns).order_by(t.c.seq)
        params: dict[str, Any] = {"now": now}
        if skip.paused:
            base = base.where(t.c.topic.not_in(sorted(skip.paused)))
        if in_flight_seqs:  # don't read (the payloads of) the batch being sent
            flying = self._sql(conn)[1]
            base = base.where(flying.not_member)
            params.update(flying.params(in_flight_seqs))
        page = max(batch_size, 200)
        blocked: set[tuple[str, str]] = set()
        seen: set[tuple[str, str]] = set()
        held_back: set[tuple[str, str]] = set()
        rows: list[_Row] = []
        scanned = 0
        after: int | None = None
        while True:
            stmt = base if after is None else base.where(t.c.seq > after)
            chunk = conn.execute(stmt.limit(page), params).all()
            for seq, event_id, topic, key, payload, attempts, waiting_until, created in chunk:
                ident = (topic, key)
                if ident in blocked:
                    continue
                if ident in in_flight or ident in seen:  # an earlier row is being sent
                    held_back.add(ident)
                    continue
                seen.add(ident)
                if waiting_until is None:
                    rows.append(
                        _Row(seq, Message(event_id, topic, key, payload), attempts, created)
                    )
                    if len(rows) >= batch_size:
                        return _Picked(rows, True, held_back)
                else:
                    blocked.add(ident)
                    if skip.until is None or waiting_until < skip.until:
                        skip.until = waiting_until
            scanned += len(chunk)
            if len(chunk) < page or scanned >= scan_limit:
                return _Picked(rows, len(chunk) == page, held_back)
            after = chunk[-1][0]


class _Settling:
    """Rows being sent, or sent with their results not yet recorded in the outbox.

    Plain sets: a key is in at most one batch at a time (reads leave settling keys out).
    """

    def __init__(self) -> None:
        self.keys: set[tuple[str, str]] = set()
        self.seqs: set[int] = set()

    def add(self, rows: list[_Row]) -> None:
        self.keys.update((row.message.topic, row.message.key) for row in rows)
        self.seqs.update(row.seq for row in rows)

    def remove(self, rows: list[_Row]) -> None:
        self.keys.difference_update((row.message.topic, row.message.key) for row in rows)
        self.seqs.difference_update(row.seq for row in rows)


def _csv(seqs: list[int]) -> str:
    return ",".join(map(str, seqs))


def _positive(name: str, value: float, *, zero_ok: bool = False) -> float:
    if value < 0 or (value == 0 and not zero_ok):
        raise RelayConfigError(f"{name} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return value


class OutboxRelay:
    """Delivers the outbox `table` of `engine` through `transport`. See the module docstring.

    `engine` is a synchronous `Engine`; the relay reads on one thread and records results on
    another, each with one pooled connection kept between calls.
    `wake` is the signal the commit hooks fire; on PostgreSQL the relay also LISTENs on
    `notify_channel` (None: don't) and polls every `poll_interval` seconds as a fallback.
    After a wake-up it waits `linger` seconds before reading (0: at once), so the process that
    committed can finish its request first and commits close together share one round.
    `ready` (e.g. the sidecar's /v1.0/healthz/outbound) is awaited before the first send.
    Only the leader sends (`leadership`, by default chosen from the engine's URL).
    """

    def __init__(
        self,
        engine: sa.Engine,
        table: sa.Table,
        transport: Transport,
        *,
        wake: WakeSignal | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        linger: float = 0.0,
        max_backoff: float = 30.0,
        base_backoff: float = 0.1,
        drain_timeout: float = 5.0,
        send_timeout: float = 60.0,
        ready: Callable[[], Awaitable[bool]] | None = None,
        ready_interval: float = 1.0,
        notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
        leadership: Leadership | None = None,
        standby_interval: float = 1.0,
        metrics: RelayMetrics | None = None,
        stats_interval: float = 5.0,
        scan_limit: int | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if batch_size < 1:
            raise RelayConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        self._poll_interval = _positive("poll_interval", poll_interval)
        if not 0.0 <= linger <= 1.0:
            raise RelayConfigError(f"linger must be between 0 and 1 second, got {linger!r}")
        self._linger = linger
        self._max_backoff = _positive("max_backoff", max_backoff)
        self._base_backoff = min(_positive("base_backoff", base_backoff), self._max_backoff)
        self._drain_timeout = _positive("drain_timeout", drain_timeout, zero_ok=True)
        self._send_timeout = _positive("send_timeout", send_timeout)
        self._ready_interval = _positive("ready_interval", ready_interval)
        self._standby_interval = _positive("standby_interval", standby_interval)
        self._stats_interval = _positive("stats_interval", stats_interval)
        self._batch_size = batch_size
        self._scan_limit = scan_limit if scan_limit is not None else max(20 * batch_size, 10_000)

        if not isinstance(engine, sa.Engine):
            raise RelayConfigError(
                f"engine must be a synchronous sqlalchemy Engine, got {type(engine).__name__}"
            )
        self._engine = engine
        url = self._engine.url
        self._table = table
        self._store = _Store(table)
        self._transport = transport
        self._wake = wake or WakeSignal()
        self._ready = ready
        is_pg = url.get_backend_name() == "postgresql"
        self._listen_to = notify_channel if is_pg else None
        self._conninfo = psycopg_conninfo(url) if is_pg else None
        self._leadership = leadership or leadership_for(url, table.name)
        self.metrics = metrics or RelayMetrics()
        self._clock = clock
        self._random = random.Random()

        self._state = RelayState.STOPPED
        self._task: asyncio.Task[None] | None = None
        # Reading and writing SQL threads, each with its connection (used on that thread only).
        self._executors: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._conns: dict[bool, sa.Connection | None] = {False: None, True: None}
        self._stopping = False
        self._drain_deadline = 0.0
        # Created in `run()`: an asyncio.Event belongs to the loop that first waits on it.
        self._stop_event: asyncio.Event | None = None
        self._kick: asyncio.Event | None = None
        # Whole-relay pause (nothing got through) and per-topic pauses (monotonic deadlines).
        self._pause_until = 0.0
        self._pause_streak = 0
        self._saw_unready = False
        self._topic_pause: dict[str, tuple[float, int]] = {}
        self._skip = _Skip()
        # Held-back keys still settling: their recording wakes the loop (see `_watch`).
        self._waiting_on: set[tuple[str, str]] = set()
        # Set when the relay wakes itself (a held-back key settled): no linger then.
        self._resume_now = False
        self._next_stats = 0.0
        self._stats: tuple[int, datetime | None, datetime] | None = None
        self._published = 0
        self._failed = 0
        self._last_error: str | None = None

    # --- public surface -----------------------------------------------------------------

    @property
    def state(self) -> RelayState:
        return self._state

    def status(self) -> RelayStatus:
        backlog = age = None
        if self._stats is not None:
            backlog, oldest, taken = self._stats
            if oldest is not None:  # as of the last refresh: the oldest may be gone since
                age = round(max(0.0, (taken - oldest).total_seconds()), 3)
        now = time.monotonic()
        pause = self._pause_until - now
        return RelayStatus(
            state=self._state,
            backlog=backlog,
            oldest_pending_age_seconds=age,
            published=self._published,
            failed=self._failed,
            backing_off_seconds=round(pause, 3) if pause > 0 else None,
            paused_topics=tuple(sorted(t for t, (u, _) in self._topic_pause.items() if u > now)),
            last_error=self._last_error,
        )

    async def start(self) -> None:
        """Runs the relay as a background task of the running loop (returns at once)."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Drains for at most `drain_timeout` seconds, then stops; unsent rows stay."""
        task = self._task
        self._request_stop()
        if task is None or task.done() or task is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self._drain_timeout + 1.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Relays until `stop()`; never raises (except for cancellation)."""
        self._task = asyncio.current_task()
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._kick = asyncio.Event()
        self._state = RelayState.STARTING
        self._wake.attach()
        self._executors = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-relay-read"),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-relay-write"),
        )
        try:
            await self._wait_until_ready()
            while not self._stopping:
                if not await self._leadership.acquire():
                    self._set_state(RelayState.STANDBY)
                    await self._refresh_stats_if_due()
                    await self._sleep(self._standby_interval)
                    continue
                self._set_state(RelayState.LEADER)
                try:
                    await self._lead()
                except Exception as exc:  # a bug must not end delivery: log, pause, go on
                    self._note_error(f"{type(exc).__name__}: {exc}")
                    logger.opt(exception=exc).error("outbox relay loop failed; restarting it")
                    await self._sleep(self._poll_interval)
                finally:
                    self.metrics.leader.set(0)
                    await self._leadership.release()
        finally:
            self._state = RelayState.STOPPED
            self._wake.detach()
            with contextlib.suppress(Exception):
                await self._leadership.release()
            for write, executor in enumerate(self._executors):
                executor.submit(self._close_connection, bool(write))
                executor.shutdown(wait=False)
            logger.info("outbox relay stopped")

    # --- main loop ----------------------------------------------------------------------

    async def _lead(self) -> None:
        self._skip = _Skip()  # another leader may have changed the outbox meanwhile
        listener = self._start_listener()
        # While one batch is on the wire the next one is read, so database and HTTP time
        # overlap; results are recorded (DELETE / UPDATE) on a second connection, off the
        # path from commit to sidecar. Until its results are recorded a sent row is
        # "settling": reads leave its key alone, so a key never has two rows in flight.
        settling = _Settling()
        sending: asyncio.Task[_Results] | None = None
        sending_rows: list[_Row] = []
        recordings: set[asyncio.Future[None]] = set()
        confirm_at = 0.0
        try:
            while True:
                if self._stopping and time.monotonic() >= self._drain_deadline:
                    break
                if time.monotonic() >= confirm_at:  # also when idle: status stays true
                    if not await self._leadership.confirm():
                        logger.warning("outbox relay is no longer the leader; standing by")
                        break
                    confirm_at = time.monotonic() + self._standby_interval
                if sending is None and self._pause_until > time.monotonic():
                    if self._stopping:  # draining into a dead sidecar helps nobody
                        break
                    await self._wait_in_pause()
                    continue
                picked = await self._pick(settling)
                if sending is not None:
                    self._record(await sending, sending_rows, settling, recordings)
                    sending, sending_rows = None, []
                if picked is None:  # database error, already paused
                    continue
                if picked.stats is not None:
                    self._set_stats(*picked.stats)
                if picked.rows and self._pause_until <= time.monotonic():
                    if not await self._leadership.confirm():  # checked before every send
                        logger.warning("outbox relay is no longer the leader; standing by")
                        break
                    sending_rows = picked.rows
                    settling.add(sending_rows)
                    sending = asyncio.create_task(self._deliver(sending_rows))
                    self._watch(picked.held_back, settling)
                    if picked.more:
                        continue  # a backlog: read the next batch while this one is sent
                    self._record(await sending, sending_rows, settling, recordings)
                    sending, sending_rows = None, []
                    if self._pause_until > time.monotonic():
                        continue  # that batch failed as a whole: sit out the pause
                elif picked.rows:  # the last batch paused the relay: these wait for the retry
                    continue
                else:
                    self._watch(picked.held_back, settling)
                if self._stopping:
                    break
                await self._wait_for_work()
        finally:
            if sending is not None:
                if sending.done() and not sending.cancelled():
                    self._record(sending.result(), sending_rows, settling, recordings)
                else:  # outcome unknown: the rows stay and are sent again later
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
            if recordings:
                await asyncio.gather(*recordings, return_exceptions=True)
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener

    async def _pick(self, settling: _Settling) -> _Picked | None:
        """The next batch (read only); None, and a pause, on a database error."""
        try:
            return await self._db(
                partial(
                    self._store.pick_batch,
                    now=self._clock(),
                    batch_size=self._batch_size,
                    scan_limit=self._scan_limit,
                    skip=self._current_skip(),
                    in_flight=frozenset(settling.keys),
                    in_flight_seqs=list(settling.seqs),
                    want_stats=self._stats_due(),
                ),
                write=False,
            )
        except Exception as exc:  # never leave the loop on a DB error
            self._database_failed(exc)
            return None

    def _record(
        self,
        results: _Results,
        rows: list[_Row],
        settling: _Settling,
        recordings: set[asyncio.Future[None]],
    ) -> None:
        """Queues one DELETE (sent) and one UPDATE (failed); `rows` settle once it is done."""
        if not results:  # nothing known (sending cancelled): the rows simply stay
            settling.remove(rows)
            return
        recording = asyncio.ensure_future(
            self._db(partial(self._store.apply, results=results), write=True)
        )
        recordings.add(recording)

        def done(future: asyncio.Future[None]) -> None:
            recordings.discard(future)
            settling.remove(rows)
            if future.cancelled():
                return
            exc = future.exception()
            if exc is not None:  # the rows stay: sent again later (consumers de-duplicate)
                self._database_failed(exc)
            elif any((r.message.topic, r.message.key) in self._waiting_on for r in rows):
                self._wake_without_linger()  # a key's next row waited for this: look again

        recording.add_done_callback(done)

    def _watch(self, held_back: set[tuple[str, str]], settling: _Settling) -> None:
        """Makes sure held-back rows are looked at again once their keys have settled."""
        self._waiting_on = {key for key in held_back if key in settling.keys}
        if len(self._waiting_on) < len(held_back):  # settled while we were reading
            self._wake_without_linger()

    def _wake_without_linger(self) -> None:
        """The relay's own wake-up (a held-back key settled): the linger is for commits."""
        self._resume_now = True
        self._wake.notify()

    def _database_failed(self, exc: BaseException) -> None:
        self._skip = _Skip()
        self._note_error(f"database: {type(exc).__name__}: {exc}")
        logger.bind(error=self._last_error).error("outbox relay database error")
        self._pause_streak += 1
        self._pause(self._backoff(self._pause_streak))

    async def _deliver(self, rows: list[_Row]) -> _Results:
        groups: dict[str, list[_Row]] = {}
        for row in rows:
            groups.setdefault(row.message.topic, []).append(row)
        sending = asyncio.gather(
            *(self._send_topic(topic, group) for topic, group in groups.items())
        )
        if not await self._finish_before_drain_deadline(sending):
            # Shutting down and out of time: outcome unknown, so the rows stay as they are
            # and are sent again by the next leader (consumers de-duplicate on id).
            return _Results()
        answers = sending.result()
        now = self._clock()
        mono = time.monotonic()
        results = _Results()
        failures: list[tuple[_Row, SendResult]] = []
        refused_topics: set[str] = set()
        for (topic, group), answer in zip(groups.items(), answers, strict=True):
            topic_failures: list[tuple[_Row, SendResult]] = []
            delivered: list[_Row] = []
            for row, result in zip(group, answer, strict=True):
                if result.outcome is Outcome.OK:
                    results.delete.append(row.seq)
                    delivered.append(row)
                else:
                    topic_failures.append((row, result))
            sent = len(delivered)
            if sent:
                self.metrics.published.labels(topic).inc(sent)
                # A histogram observation costs more than the rest of an event's delivery:
                # big batches (a backlog draining) are sampled, LATENCY_SAMPLES per call.
                step = max(1, sent // LATENCY_SAMPLES)
                for row in delivered[::step]:
                    self.metrics.latency.observe(max(0.0, (now - row.created_at).total_seconds()))
                self._topic_pause.pop(topic, None)
            elif all(r.outcome is Outcome.PERMANENT for _, r in topic_failures):
                refused_topics.add(topic)
            failures.extend(topic_failures)
        self._published += len(results.delete)
        if results.delete and self._pause_streak:
            logger.bind(failed_rounds=self._pause_streak).info("outbox delivery resumed")
            self._pause_streak = 0
        if not failures:
            return results

        self._failed += len(failures)
        self._note_error(failures[-1][1].error or failures[-1][1].outcome.value)
        # A topic whose every message was refused as a configuration error pauses (others
        # keep flowing); if nothing at all got through, the whole relay pauses. Rows of a
        # paused topic or relay stay due; other failed rows back off one by one.
        for topic in refused_topics:
            _, streak = self._topic_pause.get(topic, (0.0, 0))
            self._topic_pause[topic] = (mono + self._backoff(streak + 1), streak + 1)
        if results.delete:
            charged = refused_topics
        else:
            self._pause_streak += 1
            self._pause(self._backoff(self._pause_streak))
            charged = set(groups)
        for row, result in failures:
            delay = 0.0 if row.message.topic in charged else self._backoff(row.attempts + 1)
            next_attempt = now + timedelta(seconds=delay)
            results.retry.append(
                {"b_seq": row.seq, "b_error": _describe(result), "b_next": next_attempt}
            )
            if delay and (self._skip.until is None or next_attempt < self._skip.until):
                self._skip.until = next_attempt  # wake up for the retry, even when idle
            self.metrics.failed.labels(row.message.topic, result.outcome.value).inc()
        self._log_failures(failures)
        return results

    async def _finish_before_drain_deadline(self, sending: asyncio.Future[Any]) -> bool:
        """Awaits `sending`; once a stop is requested, only until the drain deadline."""
        assert self._stop_event is not None
        while not sending.done():
            if self._stopping:
                remaining = self._drain_deadline - time.monotonic()
                if remaining > 0:
                    await asyncio.wait({sending}, timeout=remaining)
                if not sending.done():
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
                    return False
            else:
                stop = asyncio.ensure_future(self._stop_event.wait())
                try:
                    await asyncio.wait({sending, stop}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
        return not sending.cancelled()

    async def _send_topic(self, topic: str, group: list[_Row]) -> Sequence[SendResult]:
        messages = [row.message for row in group]
        timeout = self._send_timeout
        if self._stopping:
            timeout = max(0.01, min(timeout, self._drain_deadline - time.monotonic()))
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(self._transport.send(messages), timeout)
        except TimeoutError:
            answer = [SendResult(Outcome.TRANSIENT, f"no answer within {timeout:g} s")] * len(group)
        except Exception as exc:  # a transport must not raise; treat as transient
            error = f"transport raised {type(exc).__name__}: {exc}"
            answer = [SendResult(Outcome.TRANSIENT, error)] * len(group)
        finally:
            self.metrics.send_duration.observe(time.perf_counter() - started)
        if len(answer) != len(group):
            logger.bind(topic=topic, expected=len(group), got=len(answer)).error(
                "transport returned a wrong number of results; treating the batch as failed"
            )
            answer = [SendResult(Outcome.TRANSIENT, "transport result count mismatch")] * len(group)
        return answer

    # --- waiting ------------------------------------------------------------------------

    async def _wait_for_work(self) -> None:
        """Until a commit, the next blocked row falls due, a topic pause ends, or the poll."""
        timeout = self._poll_interval
        until = self._skip.until
        if until is not None:
            timeout = min(timeout, max(0.0, (until - self._clock()).total_seconds()) + 0.001)
        if self._topic_pause:
            now = time.monotonic()
            ends = [end - now for end, _ in self._topic_pause.values() if end > now]
            if ends:
                timeout = min(timeout, min(ends) + 0.001)
        woken = await self._wake.wait(timeout)
        resume_now, self._resume_now = self._resume_now, False
        if woken and self._linger and not resume_now:
            # Woken by a commit, usually in this process: let the request that committed
            # finish (its response, its thread) before this round takes the CPU, and let
            # commits that follow within the window share the round (issue 8).
            await asyncio.sleep(self._linger)

    async def _wait_in_pause(self) -> None:
        """Sleeps out the relay-wide pause; ends it early when the sidecar comes back."""
        remaining = self._pause_until - time.monotonic()
        if self._ready is None:
            await self._sleep(remaining)
            return
        await self._sleep(min(remaining, self._ready_interval))
        if self._stopping or self._pause_until <= time.monotonic():
            return
        if not await self._probe_ready():
            self._saw_unready = True
        elif self._saw_unready:
            self._saw_unready = False
            self._pause_until = 0.0
            logger.info("sidecar is ready again; outbox relay retries now")

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, interrupted by `stop()` or a retry request; commits do not interrupt it."""
        if seconds <= 0 or self._stopping or self._stop_event is None or self._kick is None:
            return
        stop = asyncio.ensure_future(self._stop_event.wait())
        kick = asyncio.ensure_future(self._kick.wait())
        try:
            await asyncio.wait({stop, kick}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            kick.cancel()
            self._kick.clear()

    async def _wait_until_ready(self) -> None:
        if self._ready is None:
            return
        self._set_state(RelayState.WAITING_FOR_SIDECAR)
        announced = False
        while not self._stopping:
            if await self._probe_ready():
                if announced:
                    logger.info("sidecar is ready; outbox relay starts")
                return
            if not announced:
                logger.info("outbox relay waits for the sidecar to be ready")
                announced = True
            await self._sleep(self._ready_interval)

    async def _probe_ready(self) -> bool:
        assert self._ready is not None
        try:
            return bool(await asyncio.wait_for(self._ready(), max(2.0, self._ready_interval)))
        except Exception:  # unready, whatever the reason
            return False

    def _request_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._drain_deadline = time.monotonic() + self._drain_timeout
            if self._state is not RelayState.STOPPED:
                self._state = RelayState.STOPPING
        if self._stop_event is not None:
            self._stop_event.set()
        self._wake.notify()

    def request_retry(self) -> None:
        """Forgets every pause: waiting events are tried at once (`pakaura outbox retry`)."""
        self._pause_until = 0.0
        self._pause_streak = 0
        self._topic_pause.clear()
        self._skip = _Skip()
        if self._kick is not None:
            self._kick.set()
        self._wake.notify()

    # --- LISTEN/NOTIFY ------------------------------------------------------------------

    def _start_listener(self) -> asyncio.Task[None] | None:
        if self._listen_to is None or self._conninfo is None:
            return None
        return asyncio.create_task(self._listen(self._conninfo, self._listen_to))

    async def _listen(self, conninfo: str, channel: str) -> None:
        """Turns NOTIFYs from any process's commits into wake-ups; reconnects on failure."""
        import psycopg
        from psycopg import sql

        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, application_name="pakaura-relay-listen"
                )
                try:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    delay = 0.5
                    self._wake.notify()  # commits while we were not listening
                    async with contextlib.aclosing(conn.notifies()) as notes:
                        async for note in notes:
                            if note.payload == RETRY_NOTIFY_PAYLOAD:
                                self.request_retry()
                            else:
                                self._wake.notify()
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling covers the gap
                logger.bind(channel=channel, error=f"{type(exc).__name__}: {exc}").warning(
                    "outbox relay lost its LISTEN connection; reconnecting"
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # --- helpers ------------------------------------------------------------------------

    async def _db(self, fn: Callable[[sa.Connection], _T], *, write: bool) -> _T:
        """Runs `fn(connection)` on the relay's reading or writing SQL thread; each thread
        keeps one pooled connection and runs its calls in submission order."""
        assert self._executors is not None, "the relay is not running"
        executor = self._executors[1 if write else 0]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._on_connection, fn, write)

    def _on_connection(self, fn: Callable[[sa.Connection], _T], write: bool) -> _T:
        # A kept connection: no checkout (and pre-ping) per round.
        conn = self._conns[write]
        if conn is None or conn.closed or conn.invalidated:
            conn = self._engine.connect()
            if not write:
                # Reads need no transaction: on SQLite this keeps them from taking the write
                # lock (every transaction there is BEGIN IMMEDIATE, see hooks/_sqlite.py).
                conn.execution_options(isolation_level="AUTOCOMMIT")
            self._conns[write] = conn
        try:
            if write:
                with conn.begin():
                    return fn(conn)
            try:
                return fn(conn)
            finally:
                conn.rollback()  # autocommit: only ends SQLAlchemy's logical transaction
        except BaseException:
            self._close_connection(write)
            raise

    def _close_connection(self, write: bool) -> None:
        conn, self._conns[write] = self._conns[write], None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if not write and conn.dialect.name == "sqlite":
                # The driver's reset after AUTOCOMMIT would undo the savepoint fix on this
                # connection: do not hand it back to the application's pool.
                conn.invalidate()
            conn.close()

    def _backoff(self, attempt: int) -> float:
        """Capped exponential back-off with jitter: in [d/2, d], d = base * 2^(attempt-1)."""
        ceiling = min(self._max_backoff, self._base_backoff * 2 ** min(attempt - 1, 60))
        return self._random.uniform(ceiling / 2, ceiling)

    def _pause(self, seconds: float) -> None:
        self._pause_until = time.monotonic() + seconds

    def _paused_topics(self) -> frozenset[str]:
        if not self._topic_pause:
            return frozenset()
        now = time.monotonic()
        return frozenset(t for t, (until, _) in self._topic_pause.items() if until > now)

    def _current_skip(self) -> _Skip:
        """The scan state for the next read: a retry time that has passed is found anew."""
        skip = self._skip
        if skip.until is not None and self._clock() >= skip.until:
            skip.until = None
        skip.paused = self._paused_topics()
        return skip

    def _stats_due(self) -> bool:
        return time.monotonic() >= self._next_stats

    def _set_stats(self, backlog: int, oldest: datetime | None) -> None:
        now = self._clock()
        self._stats = (backlog, oldest, now)
        self._next_stats = time.monotonic() + self._stats_interval
        self.metrics.backlog.set(backlog)
        age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        self.metrics.oldest_age.set(age)

    async def _refresh_stats_if_due(self) -> None:
        if not self._stats_due():
            return
        try:
            self._set_stats(*await self._db(self._store.stats, write=False))
        except Exception as exc:  # stats are best effort
            self._next_stats = time.monotonic() + self._stats_interval
            logger.bind(error=str(exc)).debug("outbox relay could not read the backlog")

    def _set_state(self, state: RelayState) -> None:
        if self._stopping or state is self._state:
            return
        self._state = state
        self.metrics.leader.set(1 if state is RelayState.LEADER else 0)
        logger.bind(relay_state=state.value).info(f"outbox relay is {state.value}")

    def _note_error(self, error: str) -> None:
        self._last_error = error[:500]

    def _log_failures(self, failures: list[tuple[_Row, SendResult]]) -> None:
        """One line per (topic, outcome, status), not per event: an outage must not flood logs."""
        groups: dict[tuple[str, Outcome, int | None], list[tuple[_Row, SendResult]]] = {}
        for row, result in failures:
            groups.setdefault((row.message.topic, result.outcome, result.status), []).append(
                (row, result)
            )
        for (topic, outcome, status), items in groups.items():
            row, result = items[0]
            log = logger.bind(
                topic=topic,
                task_id=row.message.key,
                event_type=_event_type(row.message.body),
                event_id=row.message.id,
                outcome=outcome.value,
                dapr_status=status,
                count=len(items),
                attempts=max(r.attempts for r, _ in items) + 1,
                backing_off_seconds=round(max(0.0, self._pause_until - time.monotonic()), 3),
                error=result.error,
            )
            if outcome is Outcome.PERMANENT:
                log.error("sidecar refused events (configuration error); kept for retry")
            else:
                log.warning("event delivery failed; kept for retry with back-off")


def _describe(result: SendResult) -> str:
    text = result.error or result.outcome.value
    if result.status is not None:
        text = f"HTTP {result.status}: {text}"
    return text[:1000]


def _event_type(body: str) -> str | None:
    try:
        value = json.loads(body).get("type")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
