"""Per-task order per topic must hold while the sidecar fails calls and bulk entries (issue 7).

Regression test of an order violation the verifier found (a later event of a task reached the
sidecar before an earlier one of the same task and topic): the relay's scan cursor could pass a
row in flight unseen, so when that send failed its key was not blocked and the key's next row
went first (fixed in hooks/_relay.py, `_before_in_flight`). It failed in every run before the
fix, with bulk publishing or without.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from bench.reliability import api_stack
from bench.reliability._load import _Task, expected_for_change
from bench.reliability._scenarios import _drain
from bench.reliability._verifier import Mutation, Outcome, ReceivedEvent, verify

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_per_task_order_holds_when_sidecar_calls_and_entries_fail(tmp_path: Path) -> None:
    with api_stack(tmp_path, log_level="WARNING") as stack:
        # Half of the calls answered 500; of the others, bulk calls fail half of their entries
        # (500 listing them; the rest were published), as Dapr does when the broker refuses
        # some messages.
        stack.emulator.fail_fraction(0.5)
        stack.emulator.fail_entries(0.5)
        user, mutations, seq = "orderly", [], 0
        with httpx.Client(base_url=stack.api.base_url, headers=stack.headers(user)) as client:
            states: dict[int, _Task] = {}
            for i in range(4):
                op = f"create-{i}"
                task = client.post(
                    f"/api/{user}/tasks", json={"title": f"t{i}"}, headers={"X-Request-ID": op}
                ).json()
                states[task["id"]] = _Task(task["title"], None, None, False)
                seq += 1
                mutations.append(
                    Mutation(op, user, "create", "rest", Outcome.COMMITTED,
                             expected_for_change(task["id"], None, states[task["id"]]), seq)
                )  # fmt: skip
            deadline = time.monotonic() + 3
            i = 0
            while time.monotonic() < deadline:
                for task_id, before in list(states.items()):
                    i += 1
                    op = f"update-{i}"
                    after = _Task(f"title {i}", before.description, before.due_date, False)
                    response = client.put(
                        f"/api/{user}/tasks/{task_id}",
                        json={"title": after.title},
                        headers={"X-Request-ID": op},
                    )
                    assert response.status_code == 200
                    seq += 1
                    mutations.append(
                        Mutation(op, user, "update", "rest", Outcome.COMMITTED,
                                 expected_for_change(task_id, before, after), seq)
                    )  # fmt: skip
                    states[task_id] = after
        stack.emulator.reset_faults()
        _drain(stack, timeout=60)
        received = [ReceivedEvent(d.topic, d.event) for d in stack.emulator.received]
    verdict = verify(mutations, received)
    assert verdict.lost == [] and verdict.phantom == []
    assert verdict.order_violations == [], "\n".join(verdict.order_violations[:10])
