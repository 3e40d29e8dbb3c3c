"""SIGTERM drains a worker: running tasks get the grace period, the rest are released at once."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from support.processes import wait_event, worker_process
from support.side_tables import open_gate, side_connection
from support.waiting import wait_finished, wait_for
from worker_app import QUEUE, SCRIPT

from durable import Client, RunState, TaskState

pytestmark = pytest.mark.anyio

GRACE_S = 1.0


async def test_sigterm_finishes_within_grace_and_releases_the_rest_for_another_worker(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        slow = (await client.spawn(QUEUE, "slow_unless_gated", {"sleep_s": 10})).task_id
        fast = (await client.spawn(QUEUE, "gated", {})).task_id

        async def both_started() -> bool | None:
            n = await side.fetchval(
                "select count(distinct task_id) from step_exec where step = 'start'"
            )
            return True if n == 2 else None

        args = ("--claim-timeout", "2", "--grace-period", str(GRACE_S), "--poll-interval", "0.1")
        async with worker_process(SCRIPT, dsn, tmp_path / "a.log", "worker-a", *args) as a:
            await wait_for(both_started, timeout=20, what="worker A to start both tasks")
            a.terminate()
            signalled = anyio.current_time()
            # the fast task finishes while the worker drains, within the grace period
            await wait_event(a, "worker.draining", timeout=GRACE_S)
            await open_gate(side, fast)
            assert await a.wait(timeout=5) == 0, a.log_text()
            assert anyio.current_time() - signalled < 5
            order = [(e["event"], e.get("task_id")) for e in a.events()]
            assert order.index(("worker.draining", None)) < order.index(
                ("run.completed", str(fast))
            )
            released = a.events("run.released")
            assert [e["task_id"] for e in released] == [str(slow)], a.log_text()
            assert a.events("worker.stopped") != []

        fast_record = await client.get_task(None, fast)
        assert fast_record.state is TaskState.COMPLETED
        [run] = fast_record.runs
        assert (run.state, run.claimed_by) == (RunState.COMPLETED, "worker-a")

        # the slow task's run was released, not failed: the same attempt is claimable at once
        record = await client.get_task(None, slow)
        assert record.state is TaskState.PENDING
        first, second = record.runs
        assert (first.state, first.failure_reason, first.attempt) == (RunState.RELEASED, None, 1)
        assert (second.state, second.attempt) == (RunState.PENDING, 1)
        assert first.finished_at is not None
        assert second.available_at <= first.finished_at
        assert record.attempt == 1

        # a second worker takes it; the gate makes the handler short this time
        await open_gate(side, slow)
        async with worker_process(SCRIPT, dsn, tmp_path / "b.log", "worker-b", *args) as b:
            record = await wait_finished(client, slow, timeout=20)
            assert record.state is TaskState.COMPLETED, b.log_text()

        starts = await side.fetch(
            "select pid from step_exec where task_id = $1 and step = 'start' order by at", slow
        )
        done = await side.fetch("select task_id, run_id, pid from done_exec order by at")

    first, second = record.runs
    assert (first.state, second.state) == (RunState.RELEASED, RunState.COMPLETED)
    assert (second.attempt, second.claimed_by) == (1, "worker-b")
    assert record.result == {"run_id": str(second.run_id), "attempt": 1, "pid": b.pid}
    assert [r["pid"] for r in starts] == [a.pid, b.pid]
    assert [(r["task_id"], r["run_id"], r["pid"]) for r in done] == [
        (fast, fast_record.runs[0].run_id, a.pid),
        (slow, second.run_id, b.pid),
    ]
