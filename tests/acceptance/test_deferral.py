"""A worker that claims a task its code does not know hands it back due now and skips its name
while the deferral lasts; a worker that knows the name gets it at once (issue 18, item 8)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from support.in_process import running_worker
from support.waiting import wait_all_finished, wait_for

from durable import Durable, RunState, TaskContext, TaskRecord, TaskState

pytestmark = pytest.mark.anyio

QUEUE = "default"
DEFER_S = 60.0


async def test_a_worker_skips_a_name_it_deferred_and_one_that_knows_it_runs_it_at_once(
    dsn: str,
) -> None:
    old = Durable(dsn)  # a worker of the code before the deploy: "added_later" is unknown

    @old.task
    async def known(ctx: TaskContext, params: Any) -> str:
        return "ok"

    new = Durable(dsn)

    @new.task(name="added_later")
    async def added_later(ctx: TaskContext, params: Any) -> int:
        return int(params["i"])

    async with old:
        first = [await old.spawn("added_later", {"i": i}, queue=QUEUE) for i in range(6)]
    async with running_worker(old, unknown_task_defer=DEFER_S, worker_id="old") as old_worker:

        async def deferred() -> list[TaskRecord] | None:
            records = [await old.get_task(h.task_id) for h in first]
            return records if any(len(r.runs) == 2 for r in records) else None

        await wait_for(deferred, timeout=10, what="the old worker to defer the unknown tasks")
        # the old worker claims on (polling every 0.1 s, and runs what it knows) but never
        # takes the name it deferred again, although its runs are due now
        assert (await (await known.spawn()).result(timeout=10)).result == "ok"
        await anyio.sleep(1.0)  # a negative check: ten polls' worth of claims
        assert old_worker.status().claiming
        bounced = 0
        for record in [await old.get_task(h.task_id) for h in first]:
            states = [r.state for r in record.runs]
            assert states in ([RunState.PENDING], [RunState.RELEASED, RunState.PENDING])
            if len(states) == 2:
                bounced += 1
                released, pending = record.runs
                assert released.finished_at is not None
                assert pending.available_at <= released.finished_at  # due at once
        assert bounced >= 1

        # both workers up: the new one takes the deferred tasks at once, and the new spawns
        # bounce off the old worker at most once each
        started = time.monotonic()
        async with running_worker(new, worker_id="new"):
            more = [await new.spawn("added_later", {"i": i}, queue=QUEUE) for i in range(20)]
            records = await wait_all_finished(
                new.client, [h.task_id for h in first + more], timeout=15
            )
        elapsed = time.monotonic() - started

    assert elapsed < 10, f"the tasks waited {elapsed:.1f}s for the worker that knows them"
    for record in records:
        assert (record.state, record.attempt) == (TaskState.COMPLETED, 1)
        *bounces, last = record.runs
        assert (last.state, last.claimed_by) == (RunState.COMPLETED, "new")
        assert [(r.state, r.claimed_by) for r in bounces] in ([], [(RunState.RELEASED, "old")])
    # a bounce is a hand-back: no attempt spent, no failure recorded
    assert all(r.failure_reason is None for record in records for r in record.runs)
