"""Parked tasks with real worker processes: durable sleep, events and child tasks, including a
SIGKILL of every worker while a task is parked (or right after it spawned a child).

The tasks are in ``parking_app.py``; every step body they execute is a ``step_exec`` row (task,
step, worker pid), so "not re-run" is counted across processes.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import parking_app
import pytest
from support.processes import WorkerProcess, worker_process
from support.side_tables import executed, open_gate, side_connection, wait_entered
from support.waiting import wait_finished, wait_for, wait_task
from worker_app import QUEUE

from durable import (
    Client,
    Durable,
    FailureReason,
    Fixed,
    RunState,
    SpawnOptions,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

#: Short leases so a killed worker's runs are reaped within a second or two.
WORKER_ARGS = ("--claim-timeout", "1", "--poll-interval", "0.1")
OPTIONS = SpawnOptions(max_attempts=3, retry=Fixed(0))
SLEEP_S = 1.5
WAIT_S = 20.0


def parking_worker(
    dsn: str, tmp_path: Path, worker_id: str, *args: str
) -> AbstractAsyncContextManager[WorkerProcess]:
    """A worker subprocess of ``parking_app`` (``worker_id`` names its log file too)."""
    return worker_process(
        parking_app.SCRIPT, dsn, tmp_path / f"{worker_id}.log", worker_id, *WORKER_ARGS, *args
    )


async def spawn(client: Client, task_name: str, params: Any) -> uuid.UUID:
    return (await client.spawn(QUEUE, task_name, params, OPTIONS)).task_id


async def wait_parked(client: Client, task_id: uuid.UUID, *, waits: int = 0) -> TaskRecord:
    """The task once it is ``sleeping`` (and has ``waits`` entries in ``waiting_for``)."""
    return await wait_task(
        client,
        task_id,
        lambda record: record.state is TaskState.SLEEPING and len(record.waiting_for) == waits,
        timeout=WAIT_S,
        what=f"task {task_id} to be parked",
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


# --- durable sleep --------------------------------------------------------------------------------


async def test_sleep_parks_the_run_frees_the_slot_and_resumes_without_rerunning_steps(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        parking_worker(dsn, tmp_path, "worker-a", "-c", "1") as worker,
    ):
        task_id = await spawn(client, "sleeper", {"sleep_s": SLEEP_S})
        parked = await wait_parked(client, task_id)
        first, sleeping = parked.runs
        assert (first.state, first.attempt, first.claimed_by) == (RunState.SUSPENDED, 1, "worker-a")
        assert (sleeping.state, sleeping.attempt) == (RunState.SLEEPING, 1)
        assert first.finished_at is not None
        wake_at = sleeping.available_at
        assert wake_at >= first.finished_at + timedelta(seconds=SLEEP_S - 0.5)

        # concurrency 1: another task runs while the sleeper is parked
        other = await wait_finished(client, await spawn(client, "quick", {}), timeout=WAIT_S)
        assert other.state is TaskState.COMPLETED, worker.log_text()
        assert other.runs[0].finished_at is not None
        assert other.runs[0].finished_at < wake_at

        record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)
        checkpoints = await client.get_checkpoints(QUEUE, task_id)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.attempt == 1
    suspended, resumed = record.runs
    assert (suspended.run_id, suspended.state) == (first.run_id, RunState.SUSPENDED)
    assert (resumed.run_id, resumed.state, resumed.attempt) == (
        sleeping.run_id,
        RunState.COMPLETED,
        1,
    )
    assert resumed.started_at is not None
    assert resumed.started_at >= wake_at
    assert record.result == {
        "steps": ["A", "B"],
        "run_id": str(resumed.run_id),
        "attempt": 1,
        "pid": worker.pid,
    }
    assert steps == [("a", worker.pid), ("b", worker.pid)]  # a ran once, before the sleep
    assert [c.step_name for c in checkpoints] == ["a", "nap", "b"]


async def test_sleep_until_wakes_at_the_given_time(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        parking_worker(dsn, tmp_path, "worker-a") as worker,
    ):
        past = datetime.now(UTC) - timedelta(seconds=1)
        past_id = await spawn(client, "sleeper", {"until": past.isoformat()})
        until = datetime.now(UTC) + timedelta(seconds=SLEEP_S)
        task_id = await spawn(client, "sleeper", {"until": until.isoformat()})
        parked = await wait_parked(client, task_id)
        assert [r.state for r in parked.runs] == [RunState.SUSPENDED, RunState.SLEEPING]
        assert parked.runs[1].available_at == until
        record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)
        not_parked = await wait_finished(client, past_id, timeout=WAIT_S)

    # a time already passed does not park the run
    assert not_parked.state is TaskState.COMPLETED, worker.log_text()
    assert [r.state for r in not_parked.runs] == [RunState.COMPLETED]
    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert [r.state for r in record.runs] == [RunState.SUSPENDED, RunState.COMPLETED]
    started = record.runs[1].started_at
    assert started is not None
    assert started >= until
    assert record.result is not None
    assert record.result["steps"] == ["A", "B"]
    assert steps == [("a", worker.pid), ("b", worker.pid)]


async def test_a_sleeping_task_survives_the_sigkill_of_every_worker(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with parking_worker(dsn, tmp_path, "worker-a") as a:
            task_id = await spawn(client, "sleeper", {"sleep_s": SLEEP_S})
            parked = await wait_parked(client, task_id)
            await killed(a)
        wake_at = parked.runs[1].available_at

        async def woken() -> bool | None:
            return True if await side.fetchval("select now() > $1", wake_at) else None

        await wait_for(woken, timeout=WAIT_S, what="the wake-up time to pass")
        # no worker ran meanwhile: the task still sleeps
        assert (await client.get_task(None, task_id)).state is TaskState.SLEEPING

        async with parking_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert record.attempt == 1
    suspended, resumed = record.runs
    assert (suspended.state, suspended.claimed_by) == (RunState.SUSPENDED, "worker-a")
    assert (resumed.state, resumed.claimed_by, resumed.attempt) == (
        RunState.COMPLETED,
        "worker-b",
        1,
    )
    assert record.result is not None
    assert (record.result["steps"], record.result["pid"]) == (["A", "B"], b.pid)
    # step a ran once, in A, before the sleep; b once, in B; nothing ran twice
    assert steps == [("a", a.pid), ("b", b.pid)]


# --- events ---------------------------------------------------------------------------------------


async def test_await_event_parks_until_the_event_and_returns_its_payload(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        parking_worker(dsn, tmp_path, "worker-a", "-c", "1") as worker,
        Durable(dsn) as app,
    ):
        task_id = await spawn(client, "event_waiter", {"event": "order.paid"})
        parked = await wait_parked(client, task_id, waits=1)
        assert [r.state for r in parked.runs] == [RunState.SUSPENDED, RunState.SLEEPING]
        (wait,) = parked.waiting_for
        assert (wait["event_name"], wait["step_name"]) == ("order.paid", "$event:order.paid")
        assert wait["child_task_id"] is None
        assert wait["timeout_at"] is None

        # its slot is free meanwhile (concurrency 1)
        other = await wait_finished(client, await spawn(client, "quick", {}), timeout=WAIT_S)
        assert other.state is TaskState.COMPLETED
        assert (await client.get_task(None, task_id)).state is TaskState.SLEEPING

        assert await app.emit_event("order.paid", {"order": 42}) == 1
        record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    assert record.result["payload"] == {"order": 42}
    assert record.result["steps"] == ["BEFORE", "AFTER"]
    assert [r.state for r in record.runs] == [RunState.SUSPENDED, RunState.COMPLETED]
    assert record.waiting_for == []
    assert steps == [("before", worker.pid), ("after", worker.pid)]


async def test_an_event_emitted_before_the_wait_is_received_at_once(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        parking_worker(dsn, tmp_path, "worker-a") as worker,
    ):
        assert await client.emit_event("early", ["stored", 1]) == 0  # nobody waits yet
        task_id = await spawn(client, "event_waiter", {"event": "early"})
        record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    assert record.result["payload"] == ["stored", 1]
    assert [r.state for r in record.runs] == [RunState.COMPLETED]  # never parked
    assert steps == [("before", worker.pid), ("after", worker.pid)]


async def test_every_task_waiting_for_an_event_wakes(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True),
        parking_worker(dsn, tmp_path, "worker-a", "-c", "2") as worker,
    ):
        # the third waits with a timeout it does not reach
        params: list[dict[str, Any]] = [{"event": "go"}, {"event": "go"}, {"event": "go"}]
        params[2]["timeout"] = 60
        task_ids = [await spawn(client, "event_waiter", p) for p in params]
        parked = [await wait_parked(client, task_id, waits=1) for task_id in task_ids]
        assert [r.waiting_for[0]["timeout_at"] is None for r in parked] == [True, True, False]
        assert await client.emit_event("go", {"n": 3}) == 3
        records = [await wait_finished(client, t, timeout=WAIT_S) for t in task_ids]

    for record in records:
        assert record.state is TaskState.COMPLETED, worker.log_text()
        assert record.result is not None
        assert record.result["payload"] == {"n": 3}


async def test_an_event_timeout_raises_event_timeout_inside_the_task(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        parking_worker(dsn, tmp_path, "worker-a") as worker,
    ):
        task_id = await spawn(client, "event_waiter", {"event": "never", "timeout": 0.5})
        record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)
        # the wait is over: a late event wakes nobody
        assert await client.emit_event("never", "late") == 0
        checkpoints = await client.get_checkpoints(QUEUE, task_id)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    assert record.result["timed_out"] == "$event:never"  # caught EventTimeout.step
    assert [r.state for r in record.runs] == [RunState.SUSPENDED, RunState.COMPLETED]
    assert steps == [("before", worker.pid)]  # the step after the wait never ran
    assert {c.step_name: c.value for c in checkpoints} == {
        "before": "BEFORE",
        "$event:never": {"timed_out": True},
    }


async def test_an_event_emitted_while_no_worker_runs_reaches_a_task_parked_before_a_sigkill(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with parking_worker(dsn, tmp_path, "worker-a") as a:
            task_id = await spawn(client, "event_waiter", {"event": "approved"})
            await wait_parked(client, task_id, waits=1)
            await killed(a)

        assert await client.emit_event("approved", {"by": "alice"}) == 1
        pending = await client.get_task(None, task_id)
        assert pending.state is TaskState.SLEEPING  # woken, but no worker runs
        assert pending.waiting_for == []

        async with parking_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, task_id, timeout=WAIT_S)
        steps = await executed(side, task_id)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert record.result is not None
    assert record.result["payload"] == {"by": "alice"}
    assert record.result["pid"] == b.pid
    assert [(r.state, r.claimed_by) for r in record.runs] == [
        (RunState.SUSPENDED, "worker-a"),
        (RunState.COMPLETED, "worker-b"),
    ]
    assert steps == [("before", a.pid), ("after", b.pid)]  # "before" was not re-run


# --- child tasks ----------------------------------------------------------------------------------


async def test_a_parent_gets_its_childs_result(dsn: str, client: Client, tmp_path: Path) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        parking_worker(dsn, tmp_path, "worker-a", "-c", "1") as worker,
    ):
        # concurrency 1: the child can only run once the waiting parent freed the slot
        parent_id = await spawn(client, "parent", {"child": {"x": 21}})
        record = await wait_finished(client, parent_id, timeout=WAIT_S)
        children = await children_of(side, parent_id)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    (child_id,) = children
    child = await client.get_task(None, child_id)
    assert (child.task_name, child.parent_task_id, child.state) == (
        "child_task",
        parent_id,
        TaskState.COMPLETED,
    )
    assert record.result is not None
    assert record.result["child"] == str(child_id)
    assert record.result["child_result"] == child.result
    assert child.result is not None
    assert child.result["doubled"] == 42
    assert child.idempotency_key == f"durable:child:{parent_id}:$spawn:child_task"
    assert [r.state for r in record.runs] == [RunState.SUSPENDED, RunState.COMPLETED]


async def test_a_failed_child_raises_task_failed_in_the_parent(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True),
        parking_worker(dsn, tmp_path, "worker-a") as worker,
    ):
        parent_id = await spawn(
            client, "parent", {"child": {"x": 7, "fail": True}, "child_attempts": 1}
        )
        record = await wait_finished(client, parent_id, timeout=WAIT_S)

    assert record.state is TaskState.COMPLETED, worker.log_text()
    assert record.result is not None
    child = await client.get_task(None, uuid.UUID(record.result["child"]))
    assert child.state is TaskState.FAILED
    assert child.parent_task_id == parent_id
    assert record.result["child_failed"] == {
        "state": "failed",
        "reason": str(FailureReason.ERRORED),
        "message": "ValueError: child refuses 7",
    }


async def test_a_parent_killed_after_spawning_finds_the_same_child_and_its_stored_result(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with parking_worker(dsn, tmp_path, "worker-a") as a:
            # the parent spawns, then waits on its gate; the child runs to its end meanwhile
            parent_id = await spawn(client, "parent", {"child": {"x": 5}, "gate": True})
            await wait_entered(side, parent_id, "gate", timeout=WAIT_S)
            (child_id,) = await children_of(side, parent_id)
            child_done = await wait_finished(client, child_id, timeout=WAIT_S)
            assert child_done.state is TaskState.COMPLETED, a.log_text()
            await killed(a)

        await open_gate(side, parent_id)
        async with parking_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, parent_id, timeout=WAIT_S)
        children = await children_of(side, parent_id)
        parent_steps = await executed(side, parent_id)
        child_steps = await executed(side, child_id)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert children == [child_id]  # the replayed spawn found the same child
    child = await client.get_task(None, child_id)
    assert child.parent_task_id == parent_id
    assert [r.state for r in child.runs] == [RunState.COMPLETED]
    assert child_steps == [("child", a.pid)]  # the child ran once, in A
    assert record.result is not None
    assert record.result["child"] == str(child_id)
    assert record.result["child_result"] == child.result  # A's stored result
    assert record.result["child_result"]["pid"] == a.pid
    assert record.result["pid"] == b.pid
    first, second = record.runs
    assert (first.state, first.failure_reason, first.claimed_by) == (
        RunState.FAILED,
        FailureReason.CRASH,
        "worker-a",
    )
    assert (second.state, second.attempt, second.claimed_by) == (
        RunState.COMPLETED,
        2,
        "worker-b",
    )
    # "spawned" ran once; the gate step was killed in A and ran again in B
    assert parent_steps == [("spawned", a.pid), ("gate", a.pid), ("gate", b.pid)]


async def test_a_parent_parked_on_its_child_survives_the_sigkill_of_the_childs_worker(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        # concurrency 1: the parent parks on ctx.result, which frees the slot for the child
        async with parking_worker(dsn, tmp_path, "worker-a", "-c", "1") as a:
            parent_id = await spawn(client, "parent", {"child": {"x": 8, "gate": True}})
            parked = await wait_parked(client, parent_id, waits=1)
            (child_id,) = await children_of(side, parent_id)
            assert parked.waiting_for[0]["child_task_id"] == str(child_id)
            await wait_entered(side, child_id, "child-gate", timeout=WAIT_S)
            await killed(a)

        await open_gate(side, child_id)
        async with parking_worker(dsn, tmp_path, "worker-b") as b:
            record = await wait_finished(client, parent_id, timeout=WAIT_S)
        children = await children_of(side, parent_id)
        parent_steps = await executed(side, parent_id)
        child_steps = await executed(side, child_id)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert children == [child_id]
    child = await client.get_task(None, child_id)
    assert [(r.state, r.claimed_by) for r in child.runs] == [
        (RunState.FAILED, "worker-a"),
        (RunState.COMPLETED, "worker-b"),
    ]
    assert child.runs[0].failure_reason is FailureReason.CRASH
    assert child_steps == [
        ("child", a.pid),
        ("child-gate", a.pid),
        ("child", b.pid),
        ("child-gate", b.pid),
    ]
    assert record.result is not None
    assert record.result["child_result"] == child.result
    assert record.result["child_result"]["pid"] == b.pid
    assert [(r.state, r.attempt, r.claimed_by) for r in record.runs] == [
        (RunState.SUSPENDED, 1, "worker-a"),
        (RunState.COMPLETED, 1, "worker-b"),
    ]
    assert parent_steps == [("spawned", a.pid)]  # not re-run after the crash


async def test_a_crash_while_parent_and_child_both_run_leaves_one_child_and_a_parked_parent(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with parking_worker(dsn, tmp_path, "worker-a") as a:
            # both block on their gates: the parent after spawning, the child inside its run
            parent_id = await spawn(
                client, "parent", {"child": {"x": 4, "gate": True}, "gate": True}
            )
            await wait_entered(side, parent_id, "gate", timeout=WAIT_S)
            (child_id,) = await children_of(side, parent_id)
            await wait_entered(side, child_id, "child-gate", timeout=WAIT_S)
            await killed(a)

        async with parking_worker(dsn, tmp_path, "worker-b") as b:
            # the parent's replay awaits the child while the child runs again: it parks
            await open_gate(side, parent_id)
            parked = await wait_parked(client, parent_id, waits=1)
            assert parked.waiting_for[0]["child_task_id"] == str(child_id)
            # the second time (the first was in A)
            await wait_entered(side, child_id, "child-gate", timeout=WAIT_S, times=2)
            assert (await client.get_task(None, child_id)).state is TaskState.RUNNING
            await open_gate(side, child_id)
            record = await wait_finished(client, parent_id, timeout=WAIT_S)
        children = await children_of(side, parent_id)
        parent_steps = await executed(side, parent_id)
        child_steps = await executed(side, child_id)

    assert record.state is TaskState.COMPLETED, b.log_text()
    assert children == [child_id]
    child = await client.get_task(None, child_id)
    assert child.state is TaskState.COMPLETED
    assert [r.claimed_by for r in child.runs] == ["worker-a", "worker-b"]
    assert record.result is not None
    assert record.result["child_result"] == child.result
    assert record.result["child_result"]["doubled"] == 8
    assert [(r.state, r.attempt, r.claimed_by) for r in record.runs] == [
        (RunState.FAILED, 1, "worker-a"),
        (RunState.SUSPENDED, 2, "worker-b"),
        (RunState.COMPLETED, 2, "worker-b"),
    ]
    assert parent_steps == [("spawned", a.pid), ("gate", a.pid), ("gate", b.pid)]
    assert child_steps == [
        ("child", a.pid),
        ("child-gate", a.pid),
        ("child", b.pid),
        ("child-gate", b.pid),
    ]
