"""The load generator: several users, REST and MCP, valid and invalid writes, all recorded.

One asyncio worker per user issues one request at a time on that user's own tasks, so the
client order of mutations on a task is their commit order (what the verifier's order check
relies on). Every attempted write becomes a `Mutation` with its outcome as the client saw it
and the events a commit of it must produce (contract §2, computed here independently from the
worker's model of its tasks). Each request carries `X-Request-ID: <op id>`, which the events
carry back as `correlationid`.

After an answer-less request (connection refused or dropped, 5xx, time-out) the worker marks
the mutation unknown, waits until the API answers again and re-reads its tasks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.reliability._mcp_client import McpCallError, call_tool
from bench.reliability._verifier import ExpectedEvent, Mutation, Outcome

__all__ = ["LoadConfig", "LoadReport", "MutationLog", "expected_for_change", "run_load"]

TASK_EVENTS, TASK_UPDATES, REMINDERS = "task-events", "task-updates", "reminders"
_DUES = [datetime(2031 + i, 1 + i, 1, 9, 0, tzinfo=UTC) for i in range(5)]
_UNREACHABLE = (httpx.TransportError, McpCallError)


@dataclass
class LoadConfig:
    users: int = 4
    duration: float = 15.0
    mcp_share: float = 0.3
    invalid_share: float = 0.1
    seed: int = 0
    request_timeout: float = 30.0
    max_tasks_per_user: int = 25
    user_prefix: str = "load"
    # Pause between requests of one worker (0: as fast as the API answers).
    think_time: float = 0.0


class MutationLog:
    """Every attempted write of a run (single event loop, or guarded by the GIL for appends)."""

    def __init__(self) -> None:
        self.mutations: list[Mutation] = []
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def add(self, mutation: Mutation) -> None:
        self.mutations.append(mutation)

    def extend(self, mutations: Sequence[Mutation]) -> None:
        self.mutations.extend(mutations)


@dataclass
class LoadReport:
    operations: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "rest 201", "mcp ok", ...
    # Answers the harness did not expect: a 500, a 4xx for a valid request, ...
    surprises: list[str] = field(default_factory=list)
    unknown: int = 0
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for key, n in self.statuses.items() if key.split()[-1] in {"500", "502"})


@dataclass
class _Task:
    title: str
    description: str | None
    due_date: datetime | None
    completed: bool


def _parse_due(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _from_json(task: dict[str, Any]) -> _Task:
    return _Task(
        task["title"], task["description"], _parse_due(task["due_date"]), task["completed"]
    )


def expected_for_change(
    task_id: int | None, before: _Task | None, after: _Task | None
) -> tuple[ExpectedEvent, ...]:
    """The events contract §2 requires for one row going from `before` to `after` (None:
    absent). Due dates here are always in the future, so "uncompleted with a future due date"
    always schedules."""

    def trio(action: str, reminder: str | None) -> tuple[ExpectedEvent, ...]:
        events = [
            ExpectedEvent(TASK_EVENTS, f"task.{action}", task_id),
            ExpectedEvent(TASK_UPDATES, "task.sync", task_id, action),
        ]
        if reminder is not None:
            events.append(ExpectedEvent(REMINDERS, f"reminder.{reminder}", task_id, reminder))
        return tuple(events)

    if before is None and after is not None:
        return trio("created", "scheduled" if after.due_date and not after.completed else None)
    if before is not None and after is None:
        open_due = before.due_date is not None and not before.completed
        return trio("deleted", "cancelled" if open_due else None)
    assert before is not None and after is not None
    if before == after:
        return ()  # a no-op emits nothing
    if not before.completed and after.completed:
        return trio("completed", "cancelled" if before.due_date else None)
    if before.completed and not after.completed:
        return trio("uncompleted", "scheduled" if after.due_date else None)
    reminder = None
    if not after.completed and before.due_date != after.due_date:
        reminder = "scheduled" if after.due_date else "cancelled"
    return trio("updated", reminder)


class _Worker:
    def __init__(
        self,
        user: str,
        token: str,
        clients: Callable[[], Sequence[httpx.AsyncClient]],
        config: LoadConfig,
        log: MutationLog,
        report: LoadReport,
        deadline: float,
    ) -> None:
        self.user = user
        self.token = token
        self.clients = clients
        self.config = config
        self.log = log
        self.report = report
        self.deadline = deadline
        self.rng = random.Random(f"{config.seed}-{user}")
        self.tasks: dict[int, _Task] = {}
        self.counter = 0
        self.auth = {"Authorization": f"Bearer {token}"}

    # --- plumbing -------------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        return self.rng.choice(self.clients())

    def new_op_id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.user}-{self.counter}-{kind}-{self.rng.getrandbits(32):08x}"

    async def resync(self, give_up_after: float = 90.0) -> None:
        """Re-reads the user's tasks once the API answers again (after an unknown outcome)."""
        stop = time.monotonic() + give_up_after
        while True:
            try:
                response = await self.client().get(
                    f"/api/{self.user}/tasks", params={"limit": 500}, headers=self.auth
                )
                if response.status_code == 200:
                    self.tasks = {t["id"]: _from_json(t) for t in response.json()}
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > stop:
                raise RuntimeError(f"{self.user}: the API did not come back in {give_up_after}s")
            await asyncio.sleep(0.1)

    def record(
        self,
        op_id: str,
        kind: str,
        via: str,
        outcome: Outcome,
        expected: tuple[ExpectedEvent, ...],
        status: int | None,
    ) -> None:
        self.log.add(
            Mutation(op_id, self.user, kind, via, outcome, expected, self.log.next_seq(), status)
        )
        self.report.operations += 1

    async def rest(
        self, op_id: str, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response | None:
        headers = {**self.auth, "X-Request-ID": op_id}
        try:
            response = await self.client().request(
                method, f"/api/{self.user}/tasks{path}", json=body, headers=headers
            )
        except httpx.TransportError as exc:
            self.report.statuses[f"rest {type(exc).__name__}"] += 1
            return None
        self.report.statuses[f"rest {response.status_code}"] += 1
        if response.status_code >= 500 and response.status_code != 503:
            self.report.surprises.append(f"{method} {path} ({op_id}): {response.status_code}")
        return response

    async def mcp(self, op_id: str, tool: str, arguments: dict[str, Any]) -> Any:
        """The tool's structured result; "rejected" for a tool error; None when unanswered."""
        try:
            result = await call_tool(
                self.client(), tool, arguments, token=self.token, request_id=op_id
            )
        except _UNREACHABLE as exc:
            status = getattr(exc, "status", None)
            self.report.statuses[f"mcp {status or type(exc).__name__}"] += 1
            if status is not None and 400 <= status < 500:
                return "rejected"
            if status is not None and status != 503:
                self.report.surprises.append(f"mcp {tool} ({op_id}): HTTP {status}")
            return None
        if result.is_error:
            self.report.statuses["mcp tool-error"] += 1
            # "database unavailable, nothing was changed": treated as unknown all the same,
            # since the commit itself may be what failed.
            return None if "unavailable" in result.text else "rejected"
        self.report.statuses["mcp ok"] += 1
        return result.structured

    async def attempt(
        self,
        kind: str,
        expected: tuple[ExpectedEvent, ...],
        via: str,
        call: Callable[[str], Awaitable[tuple[Outcome, int | None, Any]]],
        *,
        valid: bool = True,
    ) -> Any:
        op_id = self.new_op_id(kind)
        outcome, status, payload = await call(op_id)
        if outcome is Outcome.REJECTED and valid:
            self.report.surprises.append(f"{kind} via {via} ({op_id}) refused: {status}")
        if outcome is Outcome.COMMITTED and not valid:
            self.report.surprises.append(f"invalid {kind} via {via} ({op_id}) accepted")
        self.record(op_id, kind, via, outcome, expected, status)
        if outcome is Outcome.UNKNOWN:
            self.report.unknown += 1
            await self.resync()
        elif outcome is Outcome.REJECTED and valid:
            await self.resync()
        return payload if outcome is Outcome.COMMITTED else None

    def _rest_call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, answer: bool = True
    ) -> Callable[[str], Awaitable[tuple[Outcome, int | None, Any]]]:
        async def call(op_id: str) -> tuple[Outcome, int | None, Any]:
            response = await self.rest(op_id, method, path, body)
            outcome, status = self.classify(response)
            payload = None
            if outcome is Outcome.COMMITTED and response is not None:
                payload = response.json() if answer else True
            return outcome, status, payload

        return call

    def classify(self, response: httpx.Response | None) -> tuple[Outcome, int | None]:
        if response is None:
            return Outcome.UNKNOWN, None
        if response.status_code < 300:
            return Outcome.COMMITTED, response.status_code
        if response.status_code >= 500:
            return Outcome.UNKNOWN, response.status_code
        return Outcome.REJECTED, response.status_code

    # --- operations -----------------------------------------------------------------------------

    def _new_values(self) -> _Task:
        due = self.rng.choice([None, None, *_DUES])
        description = self.rng.choice([None, "", "notes", f"d{self.rng.randrange(1000)}"])
        return _Task(f"task {self.rng.randrange(10**6)}", description, due, False)

    async def create(self) -> None:
        values = self._new_values()
        via = self.via()
        expected = expected_for_change(None, None, values)
        if via == "rest":
            body: dict[str, Any] = {"title": values.title, "description": values.description}
            if values.due_date is not None:
                body["due_date"] = values.due_date.isoformat()

            call = self._rest_call("POST", "", body)

            created = await self.attempt("create", expected, via, call)
            if created is not None:
                self.tasks[created["id"]] = _from_json(created)
                self._fix_task_id(created["id"])
            return
        args: dict[str, Any] = {"title": values.title}
        if values.description is not None:
            args["description"] = values.description
        if values.due_date is not None:
            args["due_date"] = values.due_date.isoformat()
        result = await self.attempt("create", expected, via, self._mcp_call("add_task", args))
        if result is not None:
            # MCP stores an omitted description as None, like REST.
            self.tasks[result["task_id"]] = values
            self._fix_task_id(result["task_id"])

    def _fix_task_id(self, task_id: int) -> None:
        """The create's answer gives the id its expected events lacked."""
        last = self.log.mutations[-1]
        fixed = tuple(ExpectedEvent(e.topic, e.type, task_id, e.action) for e in last.expected)
        self.log.mutations[-1] = Mutation(
            last.op_id,
            last.user_id,
            last.kind,
            last.via,
            last.outcome,
            fixed,
            last.seq,
            last.status,
        )

    def _mcp_call(
        self, tool: str, args: dict[str, Any]
    ) -> Callable[[str], Awaitable[tuple[Outcome, int | None, Any]]]:
        async def call(op_id: str) -> tuple[Outcome, int | None, Any]:
            result = await self.mcp(op_id, tool, args)
            if result is None:
                return Outcome.UNKNOWN, None, None
            if result == "rejected":
                return Outcome.REJECTED, None, None
            return Outcome.COMMITTED, 200, result

        return call

    def via(self) -> str:
        return "mcp" if self.rng.random() < self.config.mcp_share else "rest"

    def pick(self, predicate: Callable[[_Task], bool] = lambda t: True) -> int | None:
        ids = [i for i, t in self.tasks.items() if predicate(t)]
        return self.rng.choice(ids) if ids else None

    async def update(self) -> None:
        task_id = self.pick()
        if task_id is None:
            return await self.create()
        before = self.tasks[task_id]
        after = _Task(before.title, before.description, before.due_date, before.completed)
        via = self.via()
        body: dict[str, Any] = {}
        for name in self.rng.sample(["title", "description", "due_date"], self.rng.randint(1, 2)):
            if name == "title":
                # Sometimes the same value: a no-op that must emit nothing.
                after.title = (
                    before.title
                    if self.rng.random() < 0.2
                    else f"renamed {self.rng.randrange(10**6)}"
                )
                body["title"] = after.title
            elif name == "description":
                value = self.rng.choice(["", "more notes", f"d{self.rng.randrange(1000)}"])
                # MCP's update_task documents "" as "remove the description" (None).
                after.description = (value or None) if via == "mcp" else value
                body["description"] = value
            else:
                after.due_date = self.rng.choice([None, *_DUES])
                if after.due_date is not None:
                    body["due_date"] = after.due_date.isoformat()
                elif via == "mcp":
                    body["clear_due_date"] = True  # null means "keep" for MCP
                else:
                    body["due_date"] = None
        expected = expected_for_change(task_id, before, after)
        if via == "rest":
            method = self.rng.choice(["PUT", "PATCH"])

            call = self._rest_call(method, f"/{task_id}", body)

            updated = await self.attempt("update", expected, via, call)
            if updated is not None:
                self.tasks[task_id] = _from_json(updated)
            return
        result = await self.attempt(
            "update", expected, via, self._mcp_call("update_task", {"task_id": task_id, **body})
        )
        if result is not None:
            self.tasks[task_id] = after

    async def set_completed(self, completed: bool) -> None:
        # Mostly tasks in the other state; sometimes a repeat, which must emit nothing.
        wanted = (
            (lambda t: t.completed != completed) if self.rng.random() < 0.85 else (lambda t: True)
        )
        task_id = self.pick(wanted)
        if task_id is None:
            return await self.create()
        before = self.tasks[task_id]
        after = _Task(before.title, before.description, before.due_date, completed)
        expected = expected_for_change(task_id, before, after)
        kind = "complete" if completed else "uncomplete"
        via = self.via()
        if via == "rest":
            call = self._rest_call("PATCH", f"/{task_id}/{kind}")

            done = await self.attempt(kind, expected, via, call)
            if done is not None:
                self.tasks[task_id] = _from_json(done)
            return
        result = await self.attempt(
            kind, expected, via, self._mcp_call(f"{kind}_task", {"task_id": task_id})
        )
        if result is not None:
            self.tasks[task_id] = after

    async def delete(self) -> None:
        task_id = self.pick()
        if task_id is None:
            return await self.create()
        expected = expected_for_change(task_id, self.tasks[task_id], None)
        via = self.via()
        if via == "rest":
            call = self._rest_call("DELETE", f"/{task_id}", answer=False)

            done = await self.attempt("delete", expected, via, call)
        else:
            done = await self.attempt(
                "delete", expected, via, self._mcp_call("delete_task", {"task_id": task_id})
            )
        if done is not None:
            self.tasks.pop(task_id, None)

    async def clear_completed(self) -> None:
        doomed = sorted(i for i, t in self.tasks.items() if t.completed)
        expected: tuple[ExpectedEvent, ...] = ()
        for task_id in doomed:
            expected += expected_for_change(task_id, self.tasks[task_id], None)
        via = self.via()
        if via == "rest":
            call = self._rest_call("DELETE", "/completed")

            result = await self.attempt("clear_completed", expected, via, call)
        else:
            result = await self.attempt(
                "clear_completed", expected, via, self._mcp_call("clear_completed", {})
            )
        if result is not None:
            if result.get("deleted") != len(doomed):
                self.report.surprises.append(
                    f"clear_completed deleted {result.get('deleted')}, expected {len(doomed)}"
                )
            for task_id in doomed:
                self.tasks.pop(task_id, None)

    async def invalid(self) -> None:
        """A request that must be refused and must emit nothing."""
        task_id = self.pick()
        choices: list[tuple[str, str, str, dict[str, Any] | None]] = [
            ("rest", "POST", "", {"title": "   "}),
            ("rest", "POST", "", {"title": "x" * 201}),
            ("rest", "POST", "", {"title": "no offset", "due_date": "2031-01-01T09:00:00"}),
            ("rest", "POST", "", {"title": "smuggled", "user_id": "someone-else"}),
            ("rest", "PATCH", "/2000000000/complete", None),
            ("mcp", "add_task", "", {"title": ""}),
            ("mcp", "add_task", "", {"title": "not mine", "user_id": "someone-else"}),
            ("mcp", "complete_task", "", {"task_id": 2_000_000_000}),
        ]
        if task_id is not None:
            choices += [
                ("rest", "PUT", f"/{task_id}", {"title": ""}),
                ("rest", "PATCH", f"/{task_id}", {"description": "y" * 1001}),
                ("rest", "PUT", f"/{task_id}", {"title": "ok", "completed": None}),
                ("mcp", "update_task", "", {"task_id": task_id, "title": "z" * 201}),
            ]
        via, method, path, body = self.rng.choice(choices)
        if via == "rest":
            call = self._rest_call(method, path, body, answer=False)

            await self.attempt("invalid", (), via, call, valid=False)
        else:
            await self.attempt("invalid", (), via, self._mcp_call(method, body or {}), valid=False)

    async def run(self) -> None:
        await self.resync()
        while time.monotonic() < self.deadline:
            roll = self.rng.random()
            if roll < self.config.invalid_share:
                await self.invalid()
            elif len(self.tasks) < 3:
                await self.create()
            elif len(self.tasks) >= self.config.max_tasks_per_user:
                await (self.clear_completed() if self.rng.random() < 0.3 else self.delete())
            else:
                op = self.rng.choices(
                    ["create", "update", "complete", "uncomplete", "delete", "clear"],
                    weights=[25, 30, 18, 10, 12, 2],
                )[0]
                if op == "create":
                    await self.create()
                elif op == "update":
                    await self.update()
                elif op in ("complete", "uncomplete"):
                    await self.set_completed(op == "complete")
                elif op == "delete":
                    await self.delete()
                else:
                    await self.clear_completed()
            if self.config.think_time:
                await asyncio.sleep(self.config.think_time)


async def run_load(
    base_urls: Sequence[str] | Callable[[], Sequence[str]],
    token_for: Callable[[str], str],
    config: LoadConfig,
    log: MutationLog,
) -> LoadReport:
    """Runs `config.users` workers for `config.duration` seconds; every attempted write lands
    in `log`. Each request goes to one of `base_urls` at random (a callable: the URLs live
    now, for replicas taken out of the routing while they are killed)."""
    report = LoadReport()
    started = time.monotonic()
    deadline = started + config.duration
    live = base_urls if callable(base_urls) else (lambda: base_urls)
    limits = httpx.Limits(max_connections=config.users * 2, max_keepalive_connections=config.users)
    clients = {
        url: httpx.AsyncClient(base_url=url, timeout=config.request_timeout, limits=limits)
        for url in live()
    }

    def current() -> list[httpx.AsyncClient]:
        return [clients[url] for url in live() if url in clients] or list(clients.values())

    try:
        users = [f"{config.user_prefix}-{i}" for i in range(config.users)]
        workers = [
            _Worker(user, token_for(user), current, config, log, report, deadline) for user in users
        ]
        await asyncio.gather(*(worker.run() for worker in workers))
    finally:
        for client in clients.values():
            await client.aclose()
    report.seconds = time.monotonic() - started
    return report


def due_in_future(days: int = 400) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)
