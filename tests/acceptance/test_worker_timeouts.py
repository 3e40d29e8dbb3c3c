"""Timeouts: a blocked event loop, a task's ``timeout``, a task's ``heartbeat_timeout``.

The blocked loop needs real processes (the worker's liveness thread must outlive its lease); the
task-level timeouts run an in-process worker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.in_process import running_worker
from support.processes import wait_event, worker_process
from support.side_tables import side_connection
from support.waiting import wait_finished, wait_for
from worker_app import QUEUE, SCRIPT

from durable import (
    Client,
    Durable,
    FailureReason,
    Fixed,
    RunState,
    SpawnOptions,
    SyncTaskContext,
    TaskContext,
    TaskFailed,
    TaskState,
)

pytestmark = pytest.mark.anyio

BLOCK_S = 4.0


async def test_blocked_event_loop_is_reaped_as_heartbeat_timeout_and_its_late_write_refused(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    args = ("--claim-timeout", "1", "--poll-interval", "0.1")
    async with (
        side_connection(dsn, create_tables=True) as side,
        worker_process(SCRIPT, dsn, tmp_path / "w1.log", "worker-1", *args) as w1,
        worker_process(SCRIPT, dsn, tmp_path / "w2.log", "worker-2", *args) as w2,
    ):
        # both run before the task exists, so that whichever claims it, the other one is ready
        # to reap it: no process start-up on the way from the lapsed lease to the retry
        for worker in (w1, w2):
            await wait_event(worker, "worker.started", timeout=20)
        info = await client.spawn(
            QUEUE, "block_loop", {"block_s": BLOCK_S}, SpawnOptions(max_attempts=2, retry=Fixed(0))
        )
        task_id = info.task_id

        async def blocked_pid() -> int | None:
            pid: int | None = await side.fetchval(
                "select pid from step_exec where task_id = $1", task_id
            )
            return pid

        pid = await wait_for(blocked_pid, timeout=10, what="a worker to block its event loop")
        blocked, other = (w1, w2) if pid == w1.pid else (w2, w1)
        record = await wait_finished(client, task_id, timeout=BLOCK_S + 10)
        assert record.state is TaskState.COMPLETED, other.log_text()
        first, second = record.runs
        # the other worker finished the retry while the blocked one was still asleep
        assert blocked.events("run.completed") == []
        assert blocked.events("lease.lost") == []
        # the blocked worker wakes up, finishes its handler, and is refused: the run is not its
        await wait_event(blocked, "lease.lost", timeout=BLOCK_S + 10, run_id=str(first.run_id))
        assert blocked.returncode is None, blocked.log_text()
        assert blocked.events("run.completed") == []
        assert other.events("lease.lost") == []
        done = await side.fetch("select run_id, pid from done_exec where task_id = $1", task_id)

    assert (first.attempt, first.state) == (1, RunState.FAILED)
    assert first.claimed_by == blocked.worker_id
    assert first.failure_reason is FailureReason.HEARTBEAT_TIMEOUT
    assert first.error is not None
    assert first.error["type"] == "HeartbeatTimeout"
    assert (second.attempt, second.state) == (2, RunState.COMPLETED)
    assert second.claimed_by == other.worker_id
    # nothing the blocked worker wrote after waking changed the task: its result is the retry's
    after = await client.get_task(None, task_id)
    assert after.state is TaskState.COMPLETED
    assert [(r.run_id, r.state) for r in after.runs] == [
        (first.run_id, RunState.FAILED),
        (second.run_id, RunState.COMPLETED),
    ]
    assert after.result == {"run_id": str(second.run_id), "attempt": 2, "pid": other.pid}
    # the retry's side effect happened once; the stale run's (a table of its own) at most once
    assert [r["pid"] for r in done if r["run_id"] == second.run_id] == [other.pid]
    assert [r["pid"] for r in done if r["run_id"] != second.run_id] in ([], [blocked.pid])


# --- task-level timeouts, in-process ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_job_timeout(dsn: str, kind: str) -> None:
    app = Durable(dsn)

    if kind == "async":

        @app.task(name="sleeps_too_long", timeout=0.5, max_attempts=1)
        async def sleeps_too_long(ctx: TaskContext, params: Any) -> str:
            await anyio.sleep(5)
            return "unreachable"

    else:

        @app.task(name="sleeps_too_long", timeout=0.5, max_attempts=1)
        def sleeps_too_long_sync(ctx: SyncTaskContext, params: Any) -> str:
            time.sleep(5)
            return "unreachable"

    sleeps_too_long_task = app.registry["sleeps_too_long"]

    async with running_worker(app):
        started = anyio.current_time()
        handle = await sleeps_too_long_task.spawn(None)
        with pytest.raises(TaskFailed) as failed:
            await handle.result(timeout=10)
        assert anyio.current_time() - started < 4
        record = await app.get_task(handle.task_id)

    assert failed.value.failure is not None
    assert failed.value.failure.reason is FailureReason.JOB_TIMEOUT
    assert record.state is TaskState.FAILED
    [run] = record.runs
    assert (run.state, run.failure_reason) == (RunState.FAILED, FailureReason.JOB_TIMEOUT)
    assert run.error is not None
    assert run.error["type"] == "JobTimeout"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_heartbeat_timeout_and_a_task_that_keeps_heartbeating(dsn: str, kind: str) -> None:
    app = Durable(dsn)

    if kind == "async":

        @app.task(name="silent", heartbeat_timeout=0.5, max_attempts=1)
        async def silent(ctx: TaskContext, params: Any) -> str:
            await anyio.sleep(5)
            return "unreachable"

        @app.task(name="chatty", heartbeat_timeout=0.5, max_attempts=1)
        async def chatty(ctx: TaskContext, params: Any) -> int:
            beats = 0
            with anyio.move_on_after(1.5):
                while True:
                    await ctx.heartbeat()
                    beats += 1
                    await anyio.sleep(0.1)
            return beats

    else:

        @app.task(name="silent", heartbeat_timeout=0.5, max_attempts=1)
        def silent_sync(ctx: SyncTaskContext, params: Any) -> str:
            time.sleep(5)
            return "unreachable"

        @app.task(name="chatty", heartbeat_timeout=0.5, max_attempts=1)
        def chatty_sync(ctx: SyncTaskContext, params: Any) -> int:
            beats = 0
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                ctx.heartbeat()
                beats += 1
                time.sleep(0.1)
            return beats

    async with running_worker(app):
        started = anyio.current_time()
        silent_handle = await app.registry["silent"].spawn(None)
        chatty_handle = await app.registry["chatty"].spawn(None)
        with pytest.raises(TaskFailed) as failed:
            await silent_handle.result(timeout=10)
        assert anyio.current_time() - started < 4
        chatty_result = await chatty_handle.result(timeout=10)
        silent_record = await app.get_task(silent_handle.task_id)
        chatty_record = await app.get_task(chatty_handle.task_id)

    assert failed.value.failure is not None
    assert failed.value.failure.reason is FailureReason.HEARTBEAT_TIMEOUT
    [run] = silent_record.runs
    assert (run.state, run.failure_reason) == (RunState.FAILED, FailureReason.HEARTBEAT_TIMEOUT)
    assert run.error is not None
    assert run.error["type"] == "HeartbeatTimeout"

    assert chatty_result.state is TaskState.COMPLETED
    assert chatty_result.result >= 10  # it ran its 1.5 s, three times its heartbeat timeout
    [run] = chatty_record.runs
    assert (run.state, run.failure_reason) == (RunState.COMPLETED, None)
