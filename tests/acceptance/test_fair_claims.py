"""Attempts charged fairly: a run claimed ahead of a free slot is reserved until its worker
reports that its handler started (on its next claim or heartbeat). SIGKILL a worker that holds
runs claimed ahead of its slots: those go back without spending an attempt and complete, while
the runs whose handlers had started spend theirs (``max_attempts=1``: they end failed). A handler
that kills its own worker ends failed after its attempts, never loops: a run claimed into a free
slot counts as started from its claim (and a reserved one gets at most 3 free returns:
``tests/integration/test_reserved_runs.py``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest
from claims_app import QUEUE, SCRIPT
from support.processes import worker_process
from support.side_tables import open_gate, side_connection
from support.waiting import wait_all_finished, wait_finished, wait_for

from durable import Client, FailureReason, Fixed, RunState, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

ARGS = ("--claim-timeout", "1", "--poll-interval", "0.1")


def starts_of(path: Path) -> list[tuple[uuid.UUID, int]]:
    """The handler starts the app noted: (task_id, attempt)."""
    if not path.exists():
        return []
    return [
        (uuid.UUID(task_id), int(attempt))
        for task_id, attempt in (line.split() for line in path.read_text().splitlines())
    ]


async def test_runs_claimed_ahead_of_a_slot_survive_a_sigkill_without_spending_an_attempt(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    starts = tmp_path / "starts.txt"
    env = {"CLAIMS_STARTS": str(starts)}
    async with side_connection(dsn, create_tables=True) as side:
        once = SpawnOptions(max_attempts=1)
        tasks = [(await client.spawn(QUEUE, "gated", {"i": i}, once)).task_id for i in range(4)]
        async with worker_process(
            SCRIPT,
            dsn,
            tmp_path / "a.log",
            "worker-a",
            "-c",
            "2",
            *ARGS,
            env={**env, "CLAIMS_AHEAD_FULL": "1"},
        ) as a:
            # two handlers run (their starts reported by the heartbeat), two runs wait ahead
            async def held() -> dict[bool, list[uuid.UUID]] | None:
                rows = await side.fetch(
                    "select task_id, reserved from durable.runs"
                    " where state = 'running' and claimed_by = 'worker-a'"
                )
                split = {
                    flag: [r["task_id"] for r in rows if r["reserved"] is flag]
                    for flag in (True, False)
                }
                return split if len(split[True]) == 2 and len(split[False]) == 2 else None

            split = await wait_for(held, timeout=20, what="2 runs started and 2 claimed ahead")
            a.kill()
            assert await a.wait(timeout=10) < 0, a.log_text()
        started, ahead = split[False], split[True]
        assert sorted(task for task, _ in starts_of(starts)) == sorted(started)
        for task_id in tasks:
            await open_gate(side, task_id)
        async with worker_process(
            SCRIPT, dsn, tmp_path / "b.log", "worker-b", "-c", "4", *ARGS, env=env
        ):
            records = await wait_all_finished(client, tasks, timeout=30)

    by_id = {r.task_id: r for r in records}
    for task_id in started:  # its handler ran: the crash spent its only attempt
        record = by_id[task_id]
        assert (record.state, record.attempt) == (TaskState.FAILED, 1)
        [run] = record.runs
        assert (run.state, run.failure_reason, run.reserved) == (
            RunState.FAILED,
            FailureReason.CRASH,
            False,
        )
    for task_id in ahead:  # never started: back to pending, attempt 1 runs and completes
        record = by_id[task_id]
        assert (record.state, record.attempt) == (TaskState.COMPLETED, 1)
        first, second = record.runs
        assert (first.state, first.attempt, first.claimed_by) == (RunState.RELEASED, 1, "worker-a")
        assert (first.failure_reason, first.reserved) == (FailureReason.CRASH, True)
        assert first.error is not None
        assert first.error["reserved"] is True
        assert (second.state, second.attempt, second.claimed_by) == (
            RunState.COMPLETED,
            1,
            "worker-b",
        )
    # every attempt charged belongs to a run whose handler started
    assert sorted(starts_of(starts)) == sorted([(t, 1) for t in started] + [(t, 1) for t in ahead])


async def test_a_handler_that_kills_its_worker_ends_failed_after_its_attempts(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    starts = tmp_path / "starts.txt"
    twice = SpawnOptions(max_attempts=2, retry=Fixed(0))
    task_id = (await client.spawn(QUEUE, "kills_its_worker", {}, twice)).task_id
    workers = 0
    record = await client.get_task(QUEUE, task_id)
    with anyio.fail_after(90):
        while not record.state.finished:
            workers += 1
            assert workers <= 8, "the task keeps killing workers: an endless loop"
            async with worker_process(
                SCRIPT,
                dsn,
                tmp_path / f"w{workers}.log",
                f"w{workers}",
                "-c",
                "1",
                *ARGS,
                env={"CLAIMS_STARTS": str(starts)},
            ) as worker:
                # the worker dies by its task's hand, or the task ended meanwhile
                while worker.returncode is None:
                    record = await client.get_task(QUEUE, task_id)
                    if record.state.finished:
                        break
                    await anyio.sleep(0.1)
            record = await client.get_task(QUEUE, task_id)
    record = await wait_finished(client, task_id, timeout=5)

    assert (record.state, record.attempt) == (TaskState.FAILED, 2)
    # claimed into a free slot, each run counted as started from its claim: both attempts spent
    assert [(r.state, r.attempt, r.failure_reason, r.reserved) for r in record.runs] == [
        (RunState.FAILED, 1, FailureReason.CRASH, False),
        (RunState.FAILED, 2, FailureReason.CRASH, False),
    ]
    assert len(starts_of(starts)) == 2
