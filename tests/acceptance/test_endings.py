"""A task's unsuccessful end, with real worker processes: cancelling a parent stops its children's
handlers on the workers that run them (``parking_app.py``).
"""

from __future__ import annotations

import functools
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import asyncpg
import parking_app
import pytest
from support.processes import WorkerProcess, worker_process
from support.side_tables import done_count, open_gate, side_connection, wait_entered
from support.waiting import wait_finished, wait_for, wait_task
from worker_app import QUEUE

from durable import Client, RunState, TaskState

pytestmark = pytest.mark.anyio

#: Short leases: a worker renews them (and learns of a cancel) every third of a second.
WORKER_ARGS = ("--claim-timeout", "1", "--poll-interval", "0.1")
WAIT_S = 20.0


def _worker(
    script: Path, dsn: str, tmp_path: Path, worker_id: str
) -> AbstractAsyncContextManager[WorkerProcess]:
    """A worker subprocess of the app ``script`` (``worker_id`` names its log file too)."""
    return worker_process(script, dsn, tmp_path / f"{worker_id}.log", worker_id, *WORKER_ARGS)


async def _children(side: asyncpg.Connection, parent: uuid.UUID) -> list[uuid.UUID]:
    rows = await side.fetch(
        "select task_id from durable.tasks where parent_task_id = $1 order by created_at", parent
    )
    return [r["task_id"] for r in rows]


# --- cancellation reaches children -------------------------------------------------------------


async def test_cancelling_a_parent_stops_its_children_and_spares_the_abandoned_one(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    """family -> branch -> leaf are cancelled together; family's abandoned child runs on."""
    async with (
        side_connection(dsn, create_tables=True) as side,
        _worker(parking_app.SCRIPT, dsn, tmp_path, "worker-a") as a,
        _worker(parking_app.SCRIPT, dsn, tmp_path, "worker-b") as b,
    ):
        family = (await client.spawn(QUEUE, "family", {})).task_id
        await wait_task(
            client,
            family,
            lambda r: r.state is TaskState.SLEEPING,
            timeout=WAIT_S,
            what="the family task to wait for its branch",
        )
        branch, loose = await _children(side, family)
        await wait_entered(side, branch, "branch-gate", timeout=WAIT_S)
        [leaf] = await _children(side, branch)
        for gated_child in (leaf, loose):
            await wait_entered(side, gated_child, "child-gate", timeout=WAIT_S)

        await client.cancel(QUEUE, family)
        # one transaction: the whole tree ended with the cancel, before any worker noticed
        records = {t: await client.get_task(None, t) for t in (family, branch, leaf, loose)}

        # the workers running branch and leaf stop their handlers at their next renewal
        for task_id in (branch, leaf):
            await wait_for(
                functools.partial(_lost_by_either, a, b, task_id),
                timeout=10,
                what=f"the worker of {task_id} to stop it",
            )
        for task_id in (branch, leaf):
            await open_gate(side, task_id)  # too late: their handlers are gone
        await open_gate(side, loose)
        abandoned = await wait_finished(client, loose, timeout=WAIT_S)
        ran_on = {t: await done_count(side, t) for t in (family, branch, leaf, loose)}

    assert [records[t].state for t in (family, branch, leaf, loose)] == [
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.CANCELLED,
        TaskState.RUNNING,
    ]
    for task_id, parent in ((branch, family), (leaf, branch)):
        failure = records[task_id].failure
        assert failure is not None
        assert failure.error == {
            "type": "ParentCancelled",
            "message": f"parent task {parent} was cancelled",
            "parent": str(parent),
        }
        assert records[task_id].runs[-1].state is RunState.CANCELLED
    assert abandoned.state is TaskState.COMPLETED
    assert ran_on == {family: 0, branch: 0, leaf: 0, loose: 1}


async def _lost_by_either(a: WorkerProcess, b: WorkerProcess, task_id: uuid.UUID) -> bool | None:
    events = a.events("lease.lost", task_id=str(task_id)) + b.events(
        "lease.lost", task_id=str(task_id)
    )
    return True if events else None
