"""The outbox relay loop: wait, pick a batch, send it, record the results (T-016).

Runs as a task in the API's event loop (or alone, `pakaura relay`); requests never wait for it
and never see its errors. docs/relay.md, "What it does", describes a round, the ordering
rule (a batch holds per (topic, key) only the key's first row) and adaptive batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from loguru import logger

from hooks._leader import Leadership, leadership_for
from hooks._metrics import RelayMetrics
from hooks._outbox import DEFAULT_NOTIFY_CHANNEL
from hooks._schedule import RelayConfigError, Schedule, Settlement, positive
from hooks._sqltypes import utc_now
from hooks._store import OutboxRow, OutboxStore, Pick
from hooks._types import Outcome, SendResult, Transport
from hooks._wakeups import NotifyListener, WakeSignal

__all__ = ["OutboxRelay", "RelayConfigError", "RelayState", "RelayStatus"]

# Latency observations per round at most: an observation costs more than an event's delivery.
LATENCY_SAMPLES = 32
# Sent rows are deleted with the next round's pick when a commit comes within this many
# seconds (one database hop per round under load), else alone.
RECORD_DELAY = 0.05
# Adaptive batching: under load a round starts no sooner than the last round's duration after
# it, at least `linger`, at most MAX_WINDOW (which bounds the latency it adds).
MAX_WINDOW = 0.01
# Rows tried after a round where nothing got through (a failed attempt costs per row).
PROBE_BATCH = 16


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
        fields = asdict(self)
        return {
            **fields,
            "state": self.state.value,
            "leader": self.leader,
            "paused_topics": list(self.paused_topics),
        }


class OutboxRelay:
    """Delivers the outbox `table` of the synchronous `engine` through `transport`.

    `wake` is the commit hooks' signal; on PostgreSQL the relay also LISTENs on `notify_channel`
    (None: don't). `ready` (the sidecar's /v1.0/healthz/outbound) is awaited before the first
    send and probed during pauses; `destination` names it in logs and `describe_leader()`."""

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
        destination: str | None = None,
        notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
        leadership: Leadership | None = None,
        standby_interval: float = 1.0,
        metrics: RelayMetrics | None = None,
        stats_interval: float = 5.0,
    ) -> None:
        if not isinstance(engine, sa.Engine):
            raise RelayConfigError(
                f"engine must be a synchronous sqlalchemy Engine, got {type(engine).__name__}"
            )
        if batch_size < 1:
            raise RelayConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        if not 0.0 <= linger <= 1.0:
            raise RelayConfigError(f"linger must be between 0 and 1 second, got {linger!r}")
        self._batch_size = batch_size
        self._scan_limit = max(20 * batch_size, 10_000)
        self._poll_interval = positive("poll_interval", poll_interval)
        self._linger = linger
        self._drain_timeout = positive("drain_timeout", drain_timeout, zero_ok=True)
        self._send_timeout = positive("send_timeout", send_timeout)
        self._ready_interval = positive("ready_interval", ready_interval)
        self._standby_interval = positive("standby_interval", standby_interval)
        self._stats_interval = positive("stats_interval", stats_interval)
        self._schedule = Schedule(base=base_backoff, cap=max_backoff)
        self._engine = engine
        self._store = OutboxStore(engine, table)
        self._transport = transport
        self._wake = wake or WakeSignal()
        self._ready = ready
        self._destination = destination or "the sidecar"
        is_pg = engine.url.get_backend_name() == "postgresql"
        self._channel = notify_channel if is_pg else None
        self._leadership = leadership or leadership_for(engine, table.name)
        self.metrics = metrics or RelayMetrics()

        self._state = RelayState.STOPPED
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._drain_deadline = 0.0
        self._stop_event: asyncio.Event | None = None  # created in run(): bound to its loop
        self._kick: asyncio.Event | None = None
        self._saw_unready = False
        self._next_due: datetime | None = None
        self._last_round = -1e9  # monotonic start of the last round
        self._window = linger  # the current adaptive-batching window (see MAX_WINDOW)
        self._next_stats = 0.0
        self._stats: tuple[int, datetime | None, datetime] | None = None
        self._published = 0
        self._failed = 0
        self._last_error: str | None = None

    # --- public surface -------------------------------------------------------------------

    @property
    def state(self) -> RelayState:
        return self._state

    def status(self) -> RelayStatus:
        backlog = age = None
        if self._stats is not None:
            backlog, oldest, taken = self._stats
            if oldest is not None:
                age = round(max(0.0, (taken - oldest).total_seconds()), 3)
        pause = self._schedule.paused_for()
        return RelayStatus(
            state=self._state,
            backlog=backlog,
            oldest_pending_age_seconds=age,
            published=self._published,
            failed=self._failed,
            backing_off_seconds=round(pause, 3) if pause > 0 else None,
            paused_topics=tuple(sorted(self._schedule.paused_topics())),
            last_error=self._last_error,
        )

    async def start(self) -> None:
        """Runs the relay as a background task of the running loop (returns at once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="outbox-relay")

    async def stop(self) -> None:
        """Drains for at most `drain_timeout` seconds, then stops; unsent rows stay."""
        task = self._task
        if not self._stopping:
            self._stopping = True
            self._drain_deadline = time.monotonic() + self._drain_timeout
            if self._state is not RelayState.STOPPED:
                self._state = RelayState.STOPPING
        if self._stop_event is not None:
            self._stop_event.set()
        self._wake.notify()
        if task is None or task.done() or task is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self._drain_timeout + 1.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def request_retry(self) -> None:
        """Forgets every pause: waiting events are tried at once (`pakaura outbox retry`)."""
        self._schedule.resume()
        self._next_due = None
        if self._kick is not None:
            self._kick.set()
        self._wake.notify()

    async def run(self) -> None:
        """Relays until `stop()`; never raises (except for cancellation)."""
        self._task = asyncio.current_task()
        self._stopping = False
        self._stop_event, self._kick = asyncio.Event(), asyncio.Event()
        self._state = RelayState.STARTING
        self._wake.attach()
        self._store.open()
        try:
            while not self._stopping:
                if not await self._leadership.acquire():
                    self._set_state(RelayState.STANDBY)
                    await self._refresh_stats()
                    await self._sleep(self._standby_interval)
                    continue
                try:
                    if await self._wait_until_ready():
                        self._set_state(RelayState.LEADER)
                        await self._lead()
                except Exception as exc:  # a bug must not end delivery: log, pause, go on
                    self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                    logger.opt(exception=exc).error("outbox relay loop failed; restarting it")
                    await self._sleep(self._poll_interval)
                finally:
                    self.metrics.leader.set(0)
                    await self._leadership.release()
        finally:
            self._state = RelayState.STOPPED
            self._wake.detach()
            self._store.close()
            logger.info("outbox relay stopped")

    # --- the loop -------------------------------------------------------------------------

    async def _lead(self) -> None:
        listener = None
        if self._channel is not None:
            loop = asyncio.get_running_loop()

            def retry_soon() -> None:  # from the listener's thread
                loop.call_soon_threadsafe(self.request_retry)

            listener = NotifyListener(self._engine, self._channel, self._wake, retry_soon)
            listener.start()
            await asyncio.to_thread(listener.listening.wait, 5.0)
        pending = Settlement()  # sent, results not recorded yet
        # A backlog: the next batch is read while this one is on the wire (its keys are left
        # out of that read, so a key never has two events in flight).
        flying: asyncio.Task[Settlement] | None = None
        busy: list[OutboxRow] = []
        confirm_at = 0.0
        try:
            while not (self._stopping and time.monotonic() >= self._drain_deadline):
                if time.monotonic() >= confirm_at:  # also when idle: status stays true
                    if not await self._still_leader():
                        break
                    confirm_at = time.monotonic() + self._standby_interval
                if flying is None and self._schedule.paused_for() > 0:
                    pending = await self._record(pending)
                    if self._stopping:  # draining into a dead sidecar helps nobody
                        break
                    await self._wait_in_pause()
                    continue
                if flying is None:
                    self._last_round = time.monotonic()
                pick = await self._round(pending, pick=True, busy=busy)
                if pick is not None:
                    pending = Settlement()
                had_flying = flying is not None
                if flying is not None:
                    pending = pending.merged(await flying)
                    flying, busy = None, []
                if pick is None:  # database error: paused
                    continue
                self._next_due = pick.next_due
                await self._refresh_stats()
                if pick.rows and self._schedule.paused_for() == 0:
                    if not await self._still_leader():  # checked before every send
                        break
                    sending = asyncio.ensure_future(self._deliver(pick.rows))
                    if pick.more:  # a backlog: read on while this batch is sent
                        flying = sending
                        busy = pick.rows
                        continue
                    pending = pending.merged(await sending)
                    took = time.monotonic() - self._last_round
                    self._window = max(self._linger, min(took, MAX_WINDOW))
                    if self._schedule.paused_for() > 0:
                        continue
                elif pick.rows or (pick.more and had_flying):
                    continue  # paused meanwhile, or keys that were on the wire: look again
                if self._stopping:
                    break
                pending = await self._wait_for_work(pending)
        finally:
            if flying is not None:
                with contextlib.suppress(Exception):
                    pending = pending.merged(await flying)
            with contextlib.suppress(Exception):
                await self._record(pending)
            if listener is not None:
                listener.stop()

    async def _round(
        self, results: Settlement, *, pick: bool, busy: Sequence[OutboxRow] = ()
    ) -> Pick | None:
        """Records `results`, then (with `pick`) picks the next batch leaving out the `busy`
        keys: one hop to the database thread. None on a database error (the results are
        recorded later; a failed pick pauses the relay)."""
        try:
            future = self._store.submit(
                self._store.round,
                results.delete,
                results.retry,
                now=utc_now() if pick else None,
                # After a round where nothing got through, a small batch tries the waters.
                batch_size=min(self._batch_size, PROBE_BATCH)
                if self._schedule.streak
                else self._batch_size,
                scan_limit=self._scan_limit,
                paused=self._schedule.paused_topics(),
                busy=busy,
            )
            return await asyncio.wrap_future(future) or Pick()
        except Exception as exc:  # never leave the loop on a database error
            self._last_error = f"database: {type(exc).__name__}: {exc}"[:500]
            logger.bind(error=self._last_error).error("outbox relay database error")
            if pick:
                self._next_due = None
                self._schedule.pause()
            return None

    async def _record(self, results: Settlement) -> Settlement:
        """Records `results` now; returns what is still to record (all of it on an error)."""
        if (results.delete or results.retry) and await self._round(results, pick=False) is None:
            return results
        return Settlement()

    async def _deliver(self, rows: list[OutboxRow]) -> Settlement:
        messages = [row.message for row in rows]
        timeout = self._send_timeout
        if self._stopping:
            timeout = max(0.01, min(timeout, self._drain_deadline - time.monotonic()))
        started = time.perf_counter()
        sending = asyncio.ensure_future(asyncio.wait_for(self._transport.send(messages), timeout))
        try:
            answer: Sequence[SendResult] = await self._until_drain_deadline(sending)
        except asyncio.CancelledError:
            if not sending.cancelled():
                raise
            return Settlement()  # out of time while stopping: outcome unknown, the rows stay
        except TimeoutError:
            answer = [SendResult(Outcome.TRANSIENT, f"no answer within {timeout:g} s")] * len(rows)
        except Exception as exc:  # a transport must not raise; treat as transient
            error = f"transport raised {type(exc).__name__}: {exc}"
            answer = [SendResult(Outcome.TRANSIENT, error)] * len(rows)
        finally:
            self.metrics.send_duration.observe(time.perf_counter() - started)
        if len(answer) != len(rows):
            logger.bind(expected=len(rows), got=len(answer)).error(
                "transport returned a wrong number of results; treating the batch as failed"
            )
            answer = [SendResult(Outcome.TRANSIENT, "transport result count mismatch")] * len(rows)
        streak = self._schedule.streak
        now = utc_now()
        settled = self._schedule.settle(rows, answer, now)
        self._count(settled, now)
        if settled.delivered and streak:
            logger.bind(failed_rounds=streak).info("outbox delivery resumed")
        return settled

    async def _until_drain_deadline(self, sending: asyncio.Future[Any]) -> Any:
        """Awaits `sending`; once a stop is requested, only until the drain deadline."""
        assert self._stop_event is not None
        if not self._stopping:
            stop = asyncio.ensure_future(self._stop_event.wait())
            try:
                await asyncio.wait({sending, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
        if not sending.done():
            await asyncio.wait({sending}, timeout=max(0.0, self._drain_deadline - time.monotonic()))
        if not sending.done():
            sending.cancel()
        return await sending

    def _count(self, settled: Settlement, now: datetime) -> None:
        per_topic = Counter(row.message.topic for row in settled.delivered)
        for topic, count in per_topic.items():
            self.metrics.published.labels(topic).inc(count)
        if settled.delivered:  # one line per round, not per event (T-015)
            keys = list(dict.fromkeys(r.message.key for r in settled.delivered))[:20]
            logger.bind(topics=dict(per_topic), task_ids=keys, outcome="ok").info(
                "{} events published", len(settled.delivered)
            )
        step = max(1, len(settled.delivered) // LATENCY_SAMPLES)
        for row in settled.delivered[::step]:
            age = (now - self._store.created_at(row)).total_seconds()
            self.metrics.latency.observe(max(0.0, age))
        self._published += len(settled.delivered)
        if not settled.failures:
            return
        self._failed += len(settled.failures)
        last = settled.failures[-1][1]
        self._last_error = (last.error or last.outcome.value)[:500]
        for row, result in settled.failures:
            self.metrics.failed.labels(row.message.topic, result.outcome.value).inc()
        # Wake up for the earliest retry, even when idle.
        due = [r["b_next"] for r in settled.retry if r["b_next"] > now]
        if self._next_due is not None:
            due.append(self._next_due)
        self._next_due = min(due, default=None)
        self._log_failures(settled.failures)

    # --- waiting --------------------------------------------------------------------------

    async def _wait_for_work(self, pending: Settlement) -> Settlement:
        """Until a commit, the next waiting row falls due, a topic pause ends, or the poll.

        The last batch's results ride with the next pick when a commit comes within
        RECORD_DELAY (under load: one database hop per round); otherwise they are recorded
        alone then. Returns what is still to record."""
        timeout = self._poll_interval
        if self._next_due is not None:
            due = (self._next_due - utc_now()).total_seconds()
            timeout = min(timeout, max(0.0, due) + 0.001)
        resume = self._schedule.next_topic_resume()
        if resume is not None:
            timeout = min(timeout, resume + 0.001)
        deadline = time.monotonic() + timeout
        while True:
            wait = deadline - time.monotonic()
            if pending.delete or pending.retry:
                wait = min(wait, RECORD_DELAY)
            if await self._wake.wait(max(0.0, wait)):
                break
            if not (pending.delete or pending.retry) or self._stopping:
                return pending
            pending = await self._record(pending)
            if pending.delete or pending.retry:  # database error: the loop pauses
                return pending
        # Under load, the commits within the window share one round; after a quiet spell the
        # window has passed and the round starts at once.
        left = self._last_round + self._window - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)
        return pending

    async def _wait_in_pause(self) -> None:
        """Sleeps out the relay-wide pause, probing the sidecar's readiness: while it says it
        is not ready the pause goes on (no sends into a dead sidecar), and it ends at once
        when a sidecar seen unready answers again."""
        remaining = self._schedule.paused_for()
        if self._ready is None:
            await self._sleep(remaining)
            return
        await self._sleep(min(remaining, self._ready_interval))
        if self._stopping:
            return
        if await self._probe_ready():
            if self._saw_unready:
                self._saw_unready = False
                self._schedule.pause_until = 0.0
                logger.info("sidecar is ready again; outbox relay retries now")
            return
        self._saw_unready = True
        until = time.monotonic() + self._ready_interval
        self._schedule.pause_until = max(self._schedule.pause_until, until)

    async def _wait_until_ready(self) -> bool:
        """As leader, waits for `ready`, saying what it waits for (in logs, repeated on a
        back-off, and in `describe_leader`); False when stopped meanwhile."""
        if self._ready is None or await self._probe_ready():
            return not self._stopping
        self._set_state(RelayState.WAITING_FOR_SIDECAR)
        note = f"waiting for the sidecar at {self._destination}"
        await self._leadership.announce(note)
        started = time.monotonic()
        next_log = started
        while not self._stopping:
            if time.monotonic() >= next_log:
                waited = round(time.monotonic() - started)
                logger.bind(destination=self._destination, waited_seconds=waited).info(
                    f"outbox relay is {note} (GET /v1.0/healthz/outbound not ready yet)"
                )
                next_log = time.monotonic() + min(60.0, max(1.0, 2 * (next_log - started)))
            await self._sleep(self._ready_interval)
            if await self._probe_ready():
                await self._leadership.announce("")
                logger.bind(destination=self._destination).info(
                    "sidecar is ready; outbox relay starts"
                )
                return not self._stopping
            if not await self._leadership.confirm():
                return False
        return False

    async def _probe_ready(self) -> bool:
        assert self._ready is not None
        try:
            return bool(await asyncio.wait_for(self._ready(), max(2.0, self._ready_interval)))
        except Exception:  # unready, whatever the reason
            return False

    async def _sleep(self, seconds: float) -> None:
        """Sleeps, interrupted by `stop()` or a retry request; commits do not interrupt it."""
        if seconds <= 0 or self._stopping or self._stop_event is None or self._kick is None:
            return
        waits = {asyncio.ensure_future(e.wait()) for e in (self._stop_event, self._kick)}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            self._kick.clear()

    # --- bookkeeping ----------------------------------------------------------------------

    async def _still_leader(self) -> bool:
        if await self._leadership.confirm():
            return True
        logger.warning("outbox relay is no longer the leader; standing by")
        return False

    async def _refresh_stats(self) -> None:
        if time.monotonic() < self._next_stats:
            return
        self._next_stats = time.monotonic() + self._stats_interval
        try:
            backlog, oldest = await asyncio.wrap_future(self._store.submit(self._store.stats))
        except Exception as exc:  # stats are best effort
            logger.bind(error=str(exc)).debug("outbox relay could not read the backlog")
            return
        now = utc_now()
        self._stats = (backlog, oldest, now)
        self.metrics.backlog.set(backlog)
        self.metrics.oldest_age.set(0.0 if oldest is None else (now - oldest).total_seconds())

    def _set_state(self, state: RelayState) -> None:
        if self._stopping or state is self._state:
            return
        self._state = state
        self.metrics.leader.set(1 if state is RelayState.LEADER else 0)
        logger.bind(relay_state=state.value).info(f"outbox relay is {state.value}")

    def _log_failures(self, failures: list[tuple[OutboxRow, SendResult]]) -> None:
        """One line per (topic, outcome, status), not per event: an outage must not flood logs."""
        groups: dict[tuple[str, Outcome, int | None], list[tuple[OutboxRow, SendResult]]] = {}
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
                backing_off_seconds=round(self._schedule.paused_for(), 3),
                error=result.error,
            )
            if outcome is Outcome.PERMANENT:
                log.error("sidecar refused events (configuration error); kept for retry")
            else:
                log.warning("event delivery failed; kept for retry with back-off")


def _event_type(body: str) -> str | None:
    try:
        value = json.loads(body).get("type")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
