"""A task's unsuccessful end, with real worker processes: cancelling a parent stops its children's
handlers on the workers that run them (``parking_app.py``), and the ``on_discard`` hook runs for
every kind of end, even when no worker is alive at the end or the worker running the hook is
SIGKILLed (``scheduling_app.py``).
"""

from __future__ import annotations

import functools
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import parking_app
import pytest
import scheduling_app
from scheduling_app import ALWAYS_FAILS, ALWAYS_FAILS_ATTEMPTS, DISCARD_STEP, GATED, PARENT
from support.processes import WorkerProcess, wait_event, worker_process
from support.side_tables import (
    done_count,
    open_gate,
    side_connection,
    steps_of,
    wait_entered,
)
from support.waiting import wait_finished, wait_for, wait_task
from worker_app import QUEUE

from durable import Cancellation, Client, RunState, SpawnOptions, TaskRecord, TaskState
from durable.runtime.executor import DISCARD_TASK

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


# --- on_discard on every unsuccessful end ------------------------------------------------------


async def _discard_rows(side: asyncpg.Connection, task_id: uuid.UUID) -> list[str]:
    return [s for s in await steps_of(side, task_id) if s.startswith(f"{DISCARD_STEP}:")]


async def _hook_ran(side: asyncpg.Connection, task_id: uuid.UUID) -> list[str]:
    async def probe() -> list[str] | None:
        return await _discard_rows(side, task_id) or None

    rows: list[str] = await wait_for(probe, timeout=WAIT_S, what=f"the hook of {task_id}")
    return rows


def _options(name: str, **options: Any) -> SpawnOptions:
    return scheduling_app.app.registry[name].options(**options)


async def test_on_discard_runs_once_for_every_kind_of_unsuccessful_end(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        _worker(scheduling_app.SCRIPT, dsn, tmp_path, "worker") as worker,
    ):

        async def spawn(name: str, note: str, **options: Any) -> uuid.UUID:
            info = await client.spawn(QUEUE, name, {"note": note}, _options(name, **options))
            return info.task_id

        exhausted = await spawn(ALWAYS_FAILS, "exhausted")
        dependent = await spawn(GATED, "dependent", depends_on=[exhausted])
        policy = await spawn(GATED, "policy", cancellation=Cancellation(max_duration=1))
        discarded = await spawn(GATED, "discarded")
        parent = await spawn(PARENT, "parent")
        for task_id in (discarded, policy):
            await wait_entered(side, task_id, "start", timeout=WAIT_S)
        await wait_task(
            client,
            parent,
            lambda r: r.state is TaskState.SLEEPING,
            timeout=WAIT_S,
            what="the parent to wait for its child",
        )
        [child] = await _children(side, parent)
        await wait_entered(side, child, "start", timeout=WAIT_S)

        await client.discard(QUEUE, discarded)  # running: cancelled, for good
        await client.cancel(QUEUE, parent)  # parked: its running child goes with it
        hooks = {
            t: await _hook_ran(side, t)
            for t in (exhausted, dependent, policy, discarded, parent, child)
        }
        called = worker.events("task.on_discard_called")
        logs = worker.log_text()

    assert hooks == {
        exhausted: [
            f"{DISCARD_STEP}:exhausted:RuntimeError:failed attempt {ALWAYS_FAILS_ATTEMPTS}"
            ":exhausted"
        ],
        dependent: [
            f"{DISCARD_STEP}:dependency_failed:DependencyFailed:dependency {exhausted} ended "
            "failed:dependent"
        ],
        policy: [
            f"{DISCARD_STEP}:cancellation_policy:CancellationPolicy:ran longer than max_duration"
            " 1s:policy"
        ],
        discarded: [f"{DISCARD_STEP}:discarded:Discarded:discarded by an operator:discarded"],
        parent: [f"{DISCARD_STEP}:cancelled:None:None:parent"],
        child: [f"{DISCARD_STEP}:parent_cancelled:ParentCancelled:parent task {parent} was "
                "cancelled:child"],
    }, logs  # fmt: skip
    assert sorted(e["task_id"] for e in called) == sorted(str(t) for t in hooks)


async def _hook_task(side: asyncpg.Connection, task_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await side.fetchrow(
        "select task_id, state from durable.tasks where task_name = $1 and params->>'task_id' = $2",
        DISCARD_TASK,
        str(task_id),
    )
    return row


async def test_no_worker_death_loses_a_hook_and_a_hook_whose_worker_died_runs_again(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    """The last attempt fails on worker A and A runs the hook, which blocks: A is SIGKILLed.
    Meanwhile a task is cancelled with no worker alive. Worker B runs both hooks; each completes
    once."""
    async with side_connection(dsn, create_tables=True) as side:
        failing = await client.spawn(
            QUEUE, ALWAYS_FAILS, {"hook_gate": True, "note": "n"}, _options(ALWAYS_FAILS)
        )
        async with _worker(scheduling_app.SCRIPT, dsn, tmp_path, "worker-a") as a:
            ended = await wait_finished(client, failing.task_id, timeout=WAIT_S)
            # the end and its hook committed together
            hook_task = await _hook_task(side, failing.task_id)
            await wait_entered(side, failing.task_id, "hook-start", timeout=WAIT_S)
            a.kill()
            assert await a.wait(timeout=10) < 0

        # no worker is alive: a cancel now still gets its hook
        orphan = await client.spawn(QUEUE, GATED, {"note": "orphan"}, _options(GATED))
        await client.cancel(QUEUE, orphan.task_id)

        async with _worker(scheduling_app.SCRIPT, dsn, tmp_path, "worker-b") as b:
            # B reaps A's hook run once its lease lapsed, and runs the hook again
            await wait_entered(side, failing.task_id, "hook-start", timeout=WAIT_S, times=2)
            await open_gate(side, failing.task_id)
            rows = {t: await _hook_ran(side, t) for t in (failing.task_id, orphan.task_id)}
            assert hook_task is not None
            hook_record = await wait_finished(client, hook_task["task_id"], timeout=WAIT_S)
            await wait_event(b, "task.on_discard_called", timeout=10, task_id=str(orphan.task_id))
            logs = b.log_text()

    assert ended.state is TaskState.FAILED
    assert rows == {
        failing.task_id: [f"{DISCARD_STEP}:exhausted:RuntimeError:failed attempt 2:n"],
        orphan.task_id: [f"{DISCARD_STEP}:cancelled:None:None:orphan"],
    }, logs
    assert hook_record.state is TaskState.COMPLETED  # once: A's run crashed, B's completed
    assert [(r.state, r.failure_reason) for r in hook_record.runs][-1] == (
        RunState.COMPLETED,
        None,
    )
    assert [r.failure_reason for r in hook_record.runs if r.state is RunState.FAILED] == ["crash"]
    assert _claimed_by(hook_record) == ["worker-a", "worker-b"]


def _claimed_by(record: TaskRecord) -> list[str | None]:
    return [r.claimed_by for r in record.runs if r.claimed_by is not None]
