"""SIGKILL a worker inside a step: the run is reaped as ``crash`` and a second worker resumes it.

Checkpointed steps are not executed again: only the step that was running when the worker died.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.processes import worker_process
from support.side_tables import open_gate, side_connection, wait_entered
from support.waiting import wait_finished
from worker_app import QUEUE, SCRIPT

from durable import Client, FailureReason, Fixed, RunState, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("task_name", ["three_steps", "three_steps_sync"])
async def test_sigkill_mid_step_is_reaped_as_crash_and_resumed_without_rerunning_steps(
    dsn: str, client: Client, tmp_path: Path, task_name: str
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        info = await client.spawn(
            QUEUE, task_name, {}, SpawnOptions(max_attempts=3, retry=Fixed(0))
        )
        task_id = info.task_id
        worker_args = ("--claim-timeout", "1", "--poll-interval", "0.1")
        async with worker_process(SCRIPT, dsn, tmp_path / "a.log", "worker-a", *worker_args) as a:
            await wait_entered(side, task_id, "two", timeout=20, what="worker A to enter step two")
            checkpoints = await client.get_checkpoints(QUEUE, task_id)
            assert [c.step_name for c in checkpoints] == ["one"]
            a.kill()
            assert await a.wait(timeout=10) < 0, a.log_text()

        await open_gate(side, task_id)
        async with worker_process(SCRIPT, dsn, tmp_path / "b.log", "worker-b", *worker_args) as b:
            record = await wait_finished(client, task_id, timeout=20)
            assert record.state is TaskState.COMPLETED, b.log_text()

        executed = await side.fetch(
            "select step, pid from step_exec where task_id = $1 order by at", task_id
        )
        done = await side.fetch("select run_id, pid from done_exec where task_id = $1", task_id)

    # step one ran once (in A); step two ran in A (killed inside it) and again in B; three once
    assert [(r["step"], r["pid"]) for r in executed] == [
        ("one", a.pid),
        ("two", a.pid),
        ("two", b.pid),
        ("three", b.pid),
    ]
    first, second = record.runs
    assert (first.attempt, first.state, first.claimed_by) == (1, RunState.FAILED, "worker-a")
    assert first.failure_reason is FailureReason.CRASH
    assert first.error is not None
    assert first.error["type"] == "WorkerCrashed"
    assert (second.attempt, second.state, second.claimed_by) == (2, RunState.COMPLETED, "worker-b")
    assert record.attempt == 2
    assert record.result == {
        "steps": [1, "gate-opened", 3],
        "run_id": str(second.run_id),
        "attempt": 2,
        "pid": b.pid,
    }
    assert [(r["run_id"], r["pid"]) for r in done] == [(second.run_id, b.pid)]
    checkpoints = await client.get_checkpoints(QUEUE, task_id)
    assert {c.step_name: c.run_id for c in checkpoints} == {
        "one": first.run_id,
        "two": second.run_id,
        "three": second.run_id,
    }
