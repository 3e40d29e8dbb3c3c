"""Long-running workflows with real worker processes: fan-out and fan-in (``ctx.gather``,
``app.batch``, ``ctx.dependency_results``), messages to one task (``app.send``, ``ctx.recv``,
``ctx.set_state``) and versioning in flight (``ctx.patched``, the code version of each run),
including a SIGKILL of the worker while a task waits in ``gather``, in ``recv`` and across a
patch.

The tasks are in ``workflow_app.py``; every step body they execute is a ``step_exec`` row (task,
step, worker pid), so "not re-run" is counted across processes.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import workflow_app
from support.processes import WorkerProcess, worker_process
from support.side_tables import executed, open_gate, side_connection, wait_entered
from support.waiting import wait_finished, wait_task, wait_until

from durable import (
    Client,
    Durable,
    FailureReason,
    RunState,
    SpawnOptions,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

QUEUE = "default"
#: Short leases so a killed worker's runs are reaped within a second or two.
WORKER_ARGS = ("--claim-timeout", "1", "--poll-interval", "0.1")
OPTIONS = SpawnOptions(max_attempts=3)
WAIT_S = 20.0


def workflow_worker(
    dsn: str, tmp_path: Path, worker_id: str, *args: str, version: str = "2"
) -> AbstractAsyncContextManager[WorkerProcess]:
    """A worker subprocess of ``workflow_app`` running code version ``version``."""
    return worker_process(
        workflow_app.SCRIPT,
        dsn,
        tmp_path / f"{worker_id}.log",
        worker_id,
        *WORKER_ARGS,
        *args,
        env={"APP_VERSION": version},
    )


async def spawn(client: Client, task_name: str, params: Any) -> uuid.UUID:
    return (await client.spawn(QUEUE, task_name, params, OPTIONS)).task_id


async def wait_parked(client: Client, task_id: uuid.UUID, **match: Any) -> TaskRecord:
    """The task once it is parked on a wait whose fields include ``match``."""

    def parked(record: TaskRecord) -> bool:
        return record.state is TaskState.SLEEPING and any(
            all(wait.get(k) == v for k, v in match.items()) for wait in record.waiting_for
        )

    return await wait_task(
        client, task_id, parked, timeout=WAIT_S, what=f"task {task_id} to wait for {match}"
    )


async def killed(worker: WorkerProcess) -> None:
    worker.kill()
    assert await worker.wait(timeout=10) < 0, worker.log_text()


async def children_of(side: asyncpg.Connection, parent_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await side.fetch(
        "select task_id from durable.tasks where parent_task_id = $1 order by created_at",
        parent_id,
    )
    return [r["task_id"] for r in rows]


# --- fan-out and fan-in ---------------------------------------------------------------------------


async def test_gather_parks_once_and_returns_every_result_in_order_failures_as_values(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    leaves: list[dict[str, Any]] = [{"x": x} for x in range(5)]
    leaves[3] = {"x": 3, "fail": True, "attempts": 1}
    async with (
        side_connection(dsn, create_tables=True) as side,
        # one slot: the children cannot end before the parent reaches gather (with two, under
        # load they did, and the parent never parked)
        workflow_worker(dsn, tmp_path, "worker-a", "-c", "1") as worker,
    ):
        parent_id = await spawn(client, "fan_out", {"leaves": leaves})
        record = await wait_finished(client, parent_id, timeout=WAIT_S)
        children = await children_of(side, parent_id)
        steps = await executed(side, parent_id)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    assert record.result["children"] == [str(c) for c in children]
    assert record.result["results"] == [
        {"state": "completed", "x": 0, "failure": None},
        {"state": "completed", "x": 10, "failure": None},
        {"state": "completed", "x": 20, "failure": None},
        {"state": "failed", "x": None, "failure": "ValueError: leaf 3 refuses"},
        {"state": "completed", "x": 40, "failure": None},
    ]
    # five children, one wait: parked once, woken once
    assert [r.state for r in record.runs] == [RunState.SUSPENDED, RunState.COMPLETED]
    assert steps == [("spawned", worker.pid)]
    checkpoints = [c.step_name for c in await client.get_checkpoints(QUEUE, parent_id)]
    assert checkpoints[-2:] == ["spawned", "$gather"]


async def test_a_worker_killed_while_a_task_waits_in_gather(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with workflow_worker(dsn, tmp_path, "worker-a", "-c", "3") as a:
            parent_id = await spawn(
                client, "fan_out", {"leaves": [{"x": 1}, {"x": 2, "gate": True}, {"x": 3}]}
            )
            parked = await wait_parked(client, parent_id, step_name="$gather")
            children = await children_of(side, parent_id)
            gated = children[1]
            await wait_entered(side, gated, "leaf-gate", timeout=WAIT_S)
            for child in (children[0], children[2]):
                assert (await wait_finished(client, child, timeout=WAIT_S)).state is (
                    TaskState.COMPLETED
                )
            assert parked.waiting_for[0]["child_task_ids"] == [str(c) for c in children]
            await killed(a)

        # the gated leaf is reaped as a crash and runs again; the parent still waits for it
        assert (await client.get_task(None, parent_id)).state is TaskState.SLEEPING
        await open_gate(side, gated)
        async with workflow_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, parent_id, timeout=WAIT_S)
        parent_steps = await executed(side, parent_id)
        gated_steps = await executed(side, gated)
        assert await children_of(side, parent_id) == children  # the replay spawned none

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert record.result is not None
    assert [r["x"] for r in record.result["results"]] == [10, 20, 30]
    assert record.result["pid"] == b.pid
    assert [(r.state, r.attempt, r.claimed_by) for r in record.runs] == [
        (RunState.SUSPENDED, 1, "worker-a"),
        (RunState.COMPLETED, 1, "worker-b"),
    ]
    assert parent_steps == [("spawned", a.pid)]  # not re-run, no second set of children
    assert gated_steps == [
        ("leaf", a.pid),
        ("leaf-gate", a.pid),
        ("leaf", b.pid),
        ("leaf-gate", b.pid),
    ]
    leaf = await client.get_task(None, gated)
    assert [r.failure_reason for r in leaf.runs] == [FailureReason.CRASH, None]


async def test_a_batch_runs_its_callback_once_with_the_counts(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True),
        workflow_worker(dsn, tmp_path, "worker-a", "-c", "4") as worker,
        Durable(dsn) as app,
    ):
        batch = await app.batch(
            [("leaf", {"x": x}) for x in range(4)] + [("leaf", {"x": 9, "fail": True})],
            on_complete="batch_done",
            on_exhausted="batch_done",
            callback_params={"report": "nightly"},
            queue=QUEUE,
        )
        members = [m.task_id for m in batch.members]
        records = [await wait_finished(client, m, timeout=WAIT_S) for m in members]

        async def settled() -> bool:
            return (await app.get_batch(batch.batch_id)).callback_task_id is not None

        await wait_until(settled, timeout=WAIT_S, what="the batch to settle")
        info = await app.get_batch(batch.batch_id)
        assert info.callback_task_id is not None
        callback = await wait_finished(client, info.callback_task_id, timeout=WAIT_S)

    assert [r.state for r in records] == [TaskState.COMPLETED] * 4 + [TaskState.FAILED]
    assert all(r.batch_ids == [batch.batch_id] for r in records)
    assert (info.total, info.pending) == (5, 0)
    assert info.counts == {"completed": 4, "failed": 1, "cancelled": 0}
    assert callback.state is TaskState.COMPLETED, worker.log_text()
    assert callback.result is not None
    assert callback.result["got"] == {
        "batch_id": str(batch.batch_id),
        "total": 5,
        "counts": {"completed": 4, "failed": 1, "cancelled": 0},
        "params": {"report": "nightly"},
    }
    async with Durable(dsn) as app:
        tasks = await app.client.queue_counts()
    assert sum(c.count for c in tasks) == 6  # five members and one callback


async def test_a_dependent_reads_its_dependencies_results(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True),
        workflow_worker(dsn, tmp_path, "worker-a") as worker,
        Durable(dsn) as app,
    ):
        first = await app.spawn("leaf", {"x": 1}, queue=QUEUE)
        second = await app.spawn("leaf", {"x": 2}, queue=QUEUE)
        dependent = await app.spawn(
            "load", None, queue=QUEUE, depends_on=[second.task_id, first.task_id]
        )
        record = await wait_finished(client, dependent.task_id, timeout=WAIT_S)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    inputs = record.result["inputs"]
    # in the order they were spawned, whatever the order depends_on names them
    assert [(name, state, result["x"]) for name, state, result in inputs] == [
        ("leaf", "completed", 10),
        ("leaf", "completed", 20),
    ]


# --- messages -------------------------------------------------------------------------------------


async def test_recv_parks_without_a_slot_and_gets_the_messages_in_order(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        workflow_worker(dsn, tmp_path, "worker-a", "-c", "1") as worker,
        Durable(dsn) as app,
    ):
        task_id = await spawn(client, "listener", {"count": 2})
        await wait_parked(client, task_id, topic="cmd")
        assert await app.get_state(task_id, "stage") == "listening"
        # its slot is free meanwhile (concurrency 1)
        other = await wait_finished(client, await spawn(client, "leaf", {"x": 1}), timeout=WAIT_S)
        assert other.state is TaskState.COMPLETED
        assert await app.send(task_id, "cmd", {"n": 1}) is True  # woke it
        await wait_parked(client, task_id, step_name="$recv:cmd#2")  # parked again
        assert await app.get_state(task_id, "stage") == "received 1"
        assert await app.send(task_id, "cmd", {"n": 2}) is True
        record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)
        stage = await app.get_state(task_id, "stage")

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    assert record.result["messages"] == [{"n": 1}, {"n": 2}]
    assert stage == "received 2"
    assert [s for s, _ in steps] == ["before", "after", "after#2"]  # none ran twice


async def test_a_worker_killed_while_a_task_waits_in_recv(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side, Durable(dsn) as app:
        async with workflow_worker(dsn, tmp_path, "worker-a") as a:
            task_id = await spawn(client, "listener", {})
            await wait_parked(client, task_id, topic="cmd")
            await killed(a)

        assert await app.send(task_id, "cmd", "while nobody runs") is True
        woken = await client.get_task(None, task_id)
        assert (woken.state, woken.waiting_for) == (TaskState.SLEEPING, [])

        async with workflow_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert record.result is not None
    assert (record.result["messages"], record.result["pid"]) == (["while nobody runs"], b.pid)
    assert [(r.state, r.claimed_by) for r in record.runs] == [
        (RunState.SUSPENDED, "worker-a"),
        (RunState.COMPLETED, "worker-b"),
    ]
    assert steps == [("before", a.pid), ("after", b.pid)]  # "before" was not re-run


async def test_a_message_received_before_a_sigkill_is_not_received_again(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side, Durable(dsn) as app:
        async with workflow_worker(dsn, tmp_path, "worker-a") as a:
            task_id = await spawn(client, "listener", {"count": 2, "gate": "after"})
            await app.send(task_id, "cmd", "first")
            await app.send(task_id, "cmd", "second")
            # it received "first", then blocks in step "after": killed there
            await wait_entered(side, task_id, "after", timeout=WAIT_S)
            await killed(a)

        await open_gate(side, task_id)
        async with workflow_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, task_id, timeout=WAIT_S)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert record.result is not None
    # the replay got "first" from its record; "second" was taken once, by the second receive
    assert record.result["messages"] == ["first", "second"]
    assert [r.failure_reason for r in record.runs] == [FailureReason.CRASH, None]
    checkpoints = {c.step_name: c.value for c in await client.get_checkpoints(QUEUE, task_id)}
    assert (checkpoints["$recv:cmd"], checkpoints["$recv:cmd#2"]) == (
        {"payload": "first"},
        {"payload": "second"},
    )


async def test_a_sync_handler_has_the_same_workflow_calls(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True),
        workflow_worker(dsn, tmp_path, "worker-a") as worker,
        Durable(dsn) as app,
    ):
        task_id = await spawn(client, "sync_workflow", None)
        await wait_parked(client, task_id, topic="cmd")
        assert await app.get_state(task_id, "stage") == "gathered"
        assert await app.send(task_id, "cmd", "from a plain def") is True
        record = await wait_finished(client, task_id, timeout=WAIT_S)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result == {
        "new": True,
        "xs": [10, 20],
        "message": "from a plain def",
        "dependencies": 0,
    }
    steps = [c.step_name for c in await client.get_checkpoints(QUEUE, task_id)]
    assert steps == [
        "$patch:sync-change",
        "$spawn:leaf-1",
        "$spawn:leaf-2",
        "$gather",
        "$recv:cmd",
    ]


# --- versioning in flight -------------------------------------------------------------------------


async def test_a_parked_task_finishes_on_the_old_path_after_the_handler_changed(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side, Durable(dsn) as app:
        async with workflow_worker(dsn, tmp_path, "worker-v1", version="1") as v1:
            old_id = await spawn(client, "versioned", {"event": "shipped:old"})
            await wait_parked(client, old_id, event_name="shipped:old")
            assert await v1.stop() == 0  # the deploy: version 1 drains and goes

        async with workflow_worker(dsn, tmp_path, "worker-v2", version="2") as v2:
            new_id = await spawn(client, "versioned", {"event": "shipped:new"})
            await wait_parked(client, new_id, event_name="shipped:new")
            await app.emit_event("shipped:old")
            await app.emit_event("shipped:new")
            old = await wait_finished(client, old_id, timeout=WAIT_S)
            new = await wait_finished(client, new_id, timeout=WAIT_S)
        old_steps = await executed(side, old_id)
        new_steps = await executed(side, new_id)

    assert old.state is TaskState.COMPLETED, v2.log_text()
    assert new.state is TaskState.COMPLETED, v2.log_text()
    assert old.result is not None
    assert new.result is not None
    # the old task, parked by version 1 past the patch's point, finished on version 2's old path
    assert (old.result["path"], old.result["pid"]) == ("old", v2.pid)
    assert old_steps == [("charge", v1.pid), ("ship", v2.pid)]
    assert [(r.state, r.code_version) for r in old.runs] == [
        (RunState.SUSPENDED, "v1"),
        (RunState.COMPLETED, "v2"),
    ]
    # the new one took the new path
    assert new.result["path"] == "new"
    assert new_steps == [("charge", v2.pid), ("pack", v2.pid), ("courier", v2.pid)]
    assert [r.code_version for r in new.runs] == ["v2", "v2"]
    decisions = {
        task_id: {c.step_name: c.value for c in await client.get_checkpoints(QUEUE, task_id)}
        for task_id in (old_id, new_id)
    }
    assert decisions[old_id]["$patch:courier"] is False
    assert decisions[new_id]["$patch:courier"] is True


async def test_a_worker_killed_across_a_patch_keeps_the_decision(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side, Durable(dsn) as app:
        async with workflow_worker(dsn, tmp_path, "worker-v1", version="1") as v1:
            old_id = await spawn(client, "versioned", {"event": "go", "gate": "ship"})
            await wait_parked(client, old_id, event_name="go")
            assert await v1.stop() == 0

        async with workflow_worker(dsn, tmp_path, "worker-a") as a:
            new_id = await spawn(client, "versioned", {"event": "go", "gate": "courier"})
            await wait_parked(client, new_id, event_name="go")
            await app.emit_event("go")  # both go on, and block in their last step
            await wait_entered(side, old_id, "ship", timeout=WAIT_S)
            await wait_entered(side, new_id, "courier", timeout=WAIT_S)
            await killed(a)

        for task_id in (old_id, new_id):
            await open_gate(side, task_id)
        async with workflow_worker(dsn, tmp_path, "worker-b") as b:
            old = await wait_finished(client, old_id, timeout=WAIT_S)
            new = await wait_finished(client, new_id, timeout=WAIT_S)
        old_steps = await executed(side, old_id)
        new_steps = await executed(side, new_id)

    assert old.result is not None, b.log_text()
    assert new.result is not None, b.log_text()
    assert (old.result["path"], new.result["path"]) == ("old", "new")
    # each replayed its recorded decision: nothing before the crash ran again
    assert old_steps == [("charge", v1.pid), ("ship", a.pid), ("ship", b.pid)]
    assert new_steps == [
        ("charge", a.pid),
        ("pack", a.pid),
        ("courier", a.pid),
        ("courier", b.pid),
    ]
    assert [r.failure_reason for r in new.runs] == [None, FailureReason.CRASH, None]


async def test_a_retired_patch_stops_a_task_that_took_the_old_path(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    # a task whose history went past the patch's point before the patch (as an old deploy's
    # run leaves it: a step recorded beyond it), decided through the protocol, then handed back
    old_id = (await client.spawn(QUEUE, "retired", None, SpawnOptions(max_attempts=1))).task_id
    (claim,) = await client.claim(QUEUE, "old-deploy", 30)
    await client.set_checkpoint(QUEUE, claim.run_id, "old-step", "done")
    assert await client.decide_patch(QUEUE, claim.run_id, "$patch:courier", []) is False
    await client.schedule_run(QUEUE, claim.run_id, 0)

    async with (
        side_connection(dsn, create_tables=True),
        workflow_worker(dsn, tmp_path, "worker-a") as worker,
    ):
        fresh_id = await spawn(client, "retired", None)
        fresh = await wait_finished(client, fresh_id, timeout=WAIT_S)
        old = await wait_finished(client, old_id, timeout=WAIT_S)
        failed = await client.failed_work(task_name="retired")

    assert (fresh.state, fresh.result) == (TaskState.COMPLETED, {"path": "new"}), worker.log_text()
    assert old.state is TaskState.FAILED
    assert old.failure is not None
    assert old.failure.error is not None
    assert old.failure.error["type"] == "PatchRetired"
    assert "ctx.patched('courier')" in old.failure.error["message"]
    assert [(row.task_id, str(row.reason_class), row.retryable) for row in failed] == [
        (old_id, "validation", False)
    ]
