"""Flow control with real worker subprocesses (``flow_app.py``): cancellation policies and
``cancel_by``, tags and progress, dependencies, partition fairness, and the cluster-wide limits.

The tasks note what they execute in the side tables of :mod:`support.side_tables` (``step_exec``
rows carry the database's time), so a test sees which handlers ran, when, and in which process.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import flow_app
import pytest
from flow_app import GLOBAL_LIMIT, LIMITS_QUEUE, RATE, RATE_PERIOD_S, RATED_QUEUE
from support.processes import WorkerProcess, wait_event, worker_process
from support.side_tables import done_count, open_gate, side_connection, steps_of, wait_entered
from support.waiting import wait_finished, wait_for
from worker_app import QUEUE

from durable import (
    Cancellation,
    Client,
    Durable,
    FailureReason,
    InvalidArgument,
    RunState,
    SpawnOptions,
    TaskRecord,
    TaskState,
    Unique,
)

pytestmark = pytest.mark.anyio

#: Short leases (heartbeats every third of a second) and a quick poll.
WORKER_ARGS = ("--claim-timeout", "1", "--poll-interval", "0.1")


@contextlib.asynccontextmanager
async def flow_worker(
    dsn: str, tmp_path: Path, worker_id: str, *args: str
) -> AsyncIterator[WorkerProcess]:
    """A worker subprocess of ``flow_app.app`` (``args`` override :data:`WORKER_ARGS`)."""
    log_path = tmp_path / f"{worker_id}.log"
    async with worker_process(
        flow_app.SCRIPT, dsn, log_path, worker_id, *WORKER_ARGS, *args
    ) as worker:
        yield worker


async def spawn(
    client: Client, task_name: str, params: Any = None, *, queue: str = QUEUE, **options: Any
) -> uuid.UUID:
    info = await client.spawn(queue, task_name, params or {}, SpawnOptions(**options))
    assert info.created
    return info.task_id


async def run_to_completion(client: Client, task_name: str, **options: Any) -> None:
    """Spawn a task and wait until it completed: the worker claims what is claimable."""
    task_id = await spawn(client, task_name, **options)
    record = await wait_finished(client, task_id, timeout=15)
    assert record.state is TaskState.COMPLETED


def error_type(record: TaskRecord) -> str | None:
    assert record.failure is not None
    assert record.failure.error is not None
    error_type: str | None = record.failure.error.get("type")
    return error_type


# --- cancellation policies and cancel_by ---------------------------------------------------------


async def test_max_delay_cancels_a_task_not_started_in_time_and_its_handler_never_runs(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        late = await spawn(client, "noop", cancellation=Cancellation(max_delay=1))
        on_time = await spawn(client, "noop")  # the same task without a policy
        scheduled_at = (await client.get_task(None, late)).scheduled_at
        assert scheduled_at is not None

        async def max_delay_passed() -> bool | None:
            passed: bool = await side.fetchval(
                "select now() > $1", scheduled_at + timedelta(seconds=1.1)
            )
            return passed or None

        await wait_for(max_delay_passed, timeout=5, what="max_delay to pass")
        # nothing enforced the policy yet: no worker claims or beats
        assert (await client.get_task(None, late)).state is TaskState.PENDING

        async with flow_worker(dsn, tmp_path, "worker-a"):
            assert (await wait_finished(client, on_time, timeout=20)).state is TaskState.COMPLETED
            record = await wait_finished(client, late, timeout=5)

        assert await steps_of(side, late) == []
        assert await done_count(side, late) == 0
        assert await steps_of(side, on_time) == ["start"]

    assert record.state is TaskState.CANCELLED
    assert record.failure is not None
    assert record.failure.reason is FailureReason.CANCELLED
    assert error_type(record) == "CancellationPolicy"
    [run] = record.runs
    assert (run.state, run.failure_reason) == (RunState.CANCELLED, FailureReason.CANCELLED)
    assert (run.started_at, run.claimed_by) == (None, None)  # never claimed


async def test_max_duration_cancels_a_running_task_and_its_worker_stops_the_handler(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        # the lease is 1.5 s: the worker renews it (and enforces the policies) every 0.5 s
        async with flow_worker(dsn, tmp_path, "worker-a", "--claim-timeout", "1.5") as worker:
            stuck = await spawn(
                client, "gated", cancellation=Cancellation(max_duration=1.5), max_attempts=3
            )
            await wait_entered(side, stuck, "start", timeout=20)
            record = await wait_finished(client, stuck, timeout=10)
            [run] = record.runs
            await wait_event(worker, "lease.lost", timeout=5, run_id=str(run.run_id))
            # the handler is gone: opening its gate now completes nothing; the worker goes on
            await open_gate(side, stuck)
            await run_to_completion(client, "noop")
            assert worker.events("run.completed")  # the noop's
            assert not [e for e in worker.events("run.completed") if e["task_id"] == str(stuck)]

        assert await steps_of(side, stuck) == ["start"]
        assert await done_count(side, stuck) == 0

    assert record.state is TaskState.CANCELLED
    assert record.failure is not None
    assert record.failure.reason is FailureReason.CANCELLED
    assert error_type(record) == "CancellationPolicy"
    assert (run.state, run.failure_reason) == (RunState.CANCELLED, FailureReason.CANCELLED)
    assert run.claimed_by == "worker-a"
    assert run.started_at is not None
    assert run.finished_at is not None
    assert run.finished_at - run.started_at >= timedelta(seconds=1.5)


async def test_max_duration_shorter_than_max_delay_still_stops_a_running_task_in_time(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        flow_worker(dsn, tmp_path, "worker-a", "--claim-timeout", "1.5") as worker,
    ):
        stuck = await spawn(
            client, "gated", cancellation=Cancellation(max_delay=20, max_duration=1)
        )
        await wait_entered(side, stuck, "start", timeout=20)
        # started at once: max_delay is met; max_duration ends it about a second later
        record = await wait_finished(client, stuck, timeout=5)
        [run] = record.runs
        await wait_event(worker, "lease.lost", timeout=5, run_id=str(run.run_id))

    assert record.state is TaskState.CANCELLED
    assert error_type(record) == "CancellationPolicy"


async def test_max_delay_counts_from_the_start_a_debounce_pushed_back(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    policy = SpawnOptions(unique=Unique(debounce=1), cancellation=Cancellation(max_delay=1))

    async def past(side: asyncpg.Connection, moment: datetime) -> bool | None:
        passed: bool = await side.fetchval("select now() > $1", moment)
        return passed or None

    # a worker of another queue: its claims and heartbeats enforce every queue's policies, and
    # nobody serves the task's queue, so the task never starts
    async with (
        side_connection(dsn, create_tables=True) as side,
        flow_worker(dsn, tmp_path, "worker-other", "-q", "other"),
    ):
        task_id = (await client.spawn(QUEUE, "noop", {"k": 1}, policy)).task_id
        first = (await client.get_task(None, task_id)).scheduled_at
        assert first is not None
        await wait_for(
            lambda: past(side, first - timedelta(seconds=0.3)), timeout=5, what="the debounce"
        )
        again = await client.spawn(QUEUE, "noop", {"k": 1}, policy)
        assert (again.task_id, again.created) == (task_id, False)
        pushed = (await client.get_task(None, task_id)).scheduled_at
        assert pushed is not None
        assert pushed > first
        # the first schedule's max_delay passes: the task is not late (its start moved)
        await wait_for(
            lambda: past(side, first + timedelta(seconds=1.2)), timeout=5, what="first max_delay"
        )
        assert (await client.get_task(None, task_id)).state is TaskState.PENDING
        # the pushed schedule's max_delay passes: now it is late
        await wait_for(
            lambda: past(side, pushed + timedelta(seconds=1)), timeout=5, what="pushed max_delay"
        )
        record = await wait_finished(client, task_id, timeout=3)

    assert record.state is TaskState.CANCELLED
    assert error_type(record) == "CancellationPolicy"


async def test_cancel_by_cancels_exactly_the_live_tasks_matching_every_filter(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    tags = ["batch-1", "x"]
    later = timedelta(minutes=5)  # pending, not yet claimable
    async with side_connection(dsn, create_tables=True) as side, Durable(dsn) as app:
        async with flow_worker(dsn, tmp_path, "worker-a") as worker:
            # a task of the same name and tags that completed before: its state keeps it out
            finished = await spawn(client, "gated", tags=tags)
            await open_gate(side, finished)
            assert (await wait_finished(client, finished, timeout=20)).state is TaskState.COMPLETED
            running = await spawn(client, "gated", tags=tags)
            await wait_entered(side, running, "start", timeout=10)
            matching = {
                running,
                await spawn(client, "gated", tags=[*tags, "extra"], delay=later),
            }
            others = {
                await spawn(client, "gated", tags=["batch-1"], delay=later),  # a tag missing
                await spawn(client, "gated", tags=["batch-2", "x"], delay=later),
                await spawn(client, "noop", tags=tags, delay=later),  # another task name
                await spawn(client, "gated", tags=tags, queue="other"),  # another queue
            }

            count = await app.cancel_by(queue=QUEUE, task_name="gated", tags=tags)

            [running_run] = (await client.get_task(None, running)).runs
            # the running one's worker finds its lease lost at its next heartbeat
            await wait_event(worker, "lease.lost", timeout=5, run_id=str(running_run.run_id))
            assert await app.cancel_by(queue=QUEUE, task_name="gated", tags=tags) == 0

        assert await done_count(side, running) == 0

    assert count == len(matching)
    for task_id in matching:
        record = await client.get_task(None, task_id)
        assert record.state is TaskState.CANCELLED, task_id
        assert record.failure is not None
        assert record.failure.reason is FailureReason.CANCELLED
        assert record.runs[-1].state is RunState.CANCELLED
    for task_id in others:
        assert (await client.get_task(None, task_id)).state is TaskState.PENDING, task_id
    record = await client.get_task(None, finished)
    assert (record.state, record.failure) == (TaskState.COMPLETED, None)


async def test_cancel_by_without_a_filter_is_refused(client: Client, dsn: str) -> None:
    task_id = await spawn(client, "noop")
    async with Durable(dsn) as app:
        with pytest.raises(InvalidArgument):
            await app.cancel_by()
        with pytest.raises(InvalidArgument):
            await app.cancel_by(tags=[])
    assert (await client.get_task(None, task_id)).state is TaskState.PENDING


# --- tags and progress ---------------------------------------------------------------------------


async def test_progress_is_visible_while_the_task_runs_and_out_of_range_is_refused(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        side_connection(dsn, create_tables=True) as side,
        flow_worker(dsn, tmp_path, "worker-a"),
    ):
        task_id = await spawn(
            client, "reports_progress", {"bad": [101, -0.5]}, tags=["tenant-a", "report"]
        )

        async def reported() -> TaskRecord | None:
            record = await client.get_task(None, task_id)
            return record if record.progress is not None else None

        running = await wait_for(reported, timeout=20, what="the task's progress")
        await wait_entered(side, task_id, "start", timeout=5)
        await open_gate(side, task_id)
        record = await wait_finished(client, task_id, timeout=10)

    assert running.state is TaskState.RUNNING
    assert running.tags == ["tenant-a", "report"]
    progress = running.progress
    assert progress is not None
    assert (progress.pct, progress.detail) == (40, {"step": "x"})
    assert progress.run_id == running.runs[0].run_id
    assert progress.at is not None
    assert running.runs[0].started_at is not None
    assert progress.at >= running.runs[0].started_at

    assert record.state is TaskState.COMPLETED
    assert record.tags == ["tenant-a", "report"]
    refused = record.result["refused"]
    assert [(r["pct"], r["error"]) for r in refused] == [
        (101, "InvalidArgument"),
        (-0.5, "InvalidArgument"),
    ]
    assert "between 0 and 100" in refused[0]["message"]
    assert record.progress is not None
    assert (record.progress.pct, record.progress.detail) == (100, "done")


async def test_tags_filter_queue_counts_and_failed_runs(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    later = timedelta(minutes=5)
    async with side_connection(dsn, create_tables=True), flow_worker(dsn, tmp_path, "worker-a"):
        failed_a = {
            await spawn(client, "fails", tags=["tenant-a"], max_attempts=1),
            await spawn(client, "fails", tags=["tenant-a", "vip"], max_attempts=1),
        }
        failed_b = await spawn(client, "fails", tags=["tenant-b"], max_attempts=1)
        failed_untagged = await spawn(client, "fails", max_attempts=1)
        completed_a = await spawn(client, "noop", tags=["tenant-a", "vip"])
        await spawn(client, "noop", tags=["tenant-a"], delay=later)
        await spawn(client, "noop", tags=["tenant-b"], delay=later)
        for task_id in [*failed_a, failed_b, failed_untagged, completed_a]:
            await wait_finished(client, task_id, timeout=20)

    def counts(rows: list[Any]) -> dict[tuple[str, str], int]:
        return {(r.queue, str(r.state)): r.count for r in rows}

    assert counts(await client.queue_counts(tags=["tenant-a"])) == {
        (QUEUE, "completed"): 1,
        (QUEUE, "failed"): 2,
        (QUEUE, "pending"): 1,
    }
    assert counts(await client.queue_counts(tags=["tenant-a", "vip"])) == {
        (QUEUE, "completed"): 1,
        (QUEUE, "failed"): 1,
    }
    assert counts(await client.queue_counts(tags=["nobody"])) == {}
    assert counts(await client.queue_counts()) == {
        (QUEUE, "completed"): 1,
        (QUEUE, "failed"): 4,
        (QUEUE, "pending"): 2,
    }

    assert Counter(r.task_id for r in await client.list_failed_runs(tags=["tenant-a"])) == (
        dict.fromkeys(failed_a, 1)
    )
    assert [r.task_id for r in await client.list_failed_runs(tags=["tenant-b"])] == [failed_b]
    assert [r.task_id for r in await client.list_failed_runs(tags=["tenant-a", "tenant-b"])] == []
    assert Counter(r.task_id for r in await client.list_failed_runs()) == dict.fromkeys(
        [*failed_a, failed_b, failed_untagged], 1
    )


# --- dependencies --------------------------------------------------------------------------------


async def test_a_dependent_runs_only_after_all_its_dependencies_completed(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with flow_worker(dsn, tmp_path, "worker-a", "-c", "4"):
            a = await spawn(client, "gated")
            b = await spawn(client, "gated")
            c = await spawn(client, "noop", depends_on=[a, b])
            await wait_entered(side, a, "start", timeout=20)
            await wait_entered(side, b, "start", timeout=5)
            # the worker has free slots and claims what it can: not C
            await run_to_completion(client, "noop")
            waiting = await client.get_task(None, c)
            assert waiting.state is TaskState.PENDING
            assert set(waiting.depends_on) == {a, b}
            assert set(waiting.pending_dependencies) == {a, b}
            assert [r.started_at for r in waiting.runs] == [None]

            await open_gate(side, a)
            assert (await wait_finished(client, a, timeout=10)).state is TaskState.COMPLETED
            await run_to_completion(client, "noop")
            waiting = await client.get_task(None, c)
            assert waiting.state is TaskState.PENDING
            assert waiting.pending_dependencies == [b]
            assert [r.started_at for r in waiting.runs] == [None]
            assert await steps_of(side, c) == []

            await open_gate(side, b)
            record_b = await wait_finished(client, b, timeout=10)
            record_c = await wait_finished(client, c, timeout=10)
            # dependencies that completed already: it runs at once
            late = await spawn(client, "noop", depends_on=[a, c])
            record_late = await wait_finished(client, late, timeout=10)

        assert await steps_of(side, c) == ["start"]

    assert record_b.state is TaskState.COMPLETED
    assert record_c.state is TaskState.COMPLETED
    assert record_c.pending_dependencies == []
    [run_b] = record_b.runs
    [run_c] = record_c.runs
    assert run_b.finished_at is not None
    assert run_c.started_at is not None
    assert run_c.started_at >= run_b.finished_at
    assert record_late.state is TaskState.COMPLETED
    assert (set(record_late.depends_on), record_late.pending_dependencies) == ({a, c}, [])


async def test_a_failed_dependency_cancels_its_dependents_in_cascade(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        async with flow_worker(dsn, tmp_path, "worker-a"):
            root = await spawn(client, "fails", {"gated": True}, max_attempts=1)
            child = await spawn(client, "noop", depends_on=[root])
            grandchild = await spawn(client, "noop", depends_on=[child])
            await wait_entered(side, root, "start", timeout=20)
            await open_gate(side, root)
            record_root = await wait_finished(client, root, timeout=10)
            record_child = await wait_finished(client, child, timeout=5)
            record_grandchild = await wait_finished(client, grandchild, timeout=5)
            # a dependency that already failed: the dependent is created cancelled
            orphan = await client.spawn(QUEUE, "noop", {}, SpawnOptions(depends_on=[root]))
            record_orphan = await client.get_task(None, orphan.task_id)
            # the worker ran nothing of them meanwhile
            await run_to_completion(client, "noop")

        for task_id in (child, grandchild, orphan.task_id):
            assert await steps_of(side, task_id) == []

    assert record_root.state is TaskState.FAILED
    for record, dependency in (
        (record_child, root),
        (record_grandchild, child),
        (record_orphan, root),
    ):
        assert record.state is TaskState.CANCELLED
        assert record.failure is not None
        assert record.failure.reason is FailureReason.CANCELLED
        assert record.failure.error is not None
        assert record.failure.error["type"] == "DependencyFailed"
        assert record.failure.error["dependency"] == str(dependency)
        assert str(dependency) in record.failure.error["message"]
        assert [(r.state, r.started_at) for r in record.runs] == [(RunState.CANCELLED, None)]
    assert record_child.failure is not None
    assert record_child.failure.error is not None
    assert record_child.failure.error["message"] == f"dependency {root} ended failed"
    assert record_grandchild.failure is not None
    assert record_grandchild.failure.error is not None
    assert record_grandchild.failure.error["message"] == f"dependency {child} ended cancelled"
    assert orphan.created


async def test_an_unknown_dependency_is_refused_and_nothing_is_stored(
    dsn: str, client: Client
) -> None:
    known = await spawn(client, "noop")
    unknown = uuid.uuid4()
    async with side_connection(dsn) as side:
        stored = (
            "select array[(select count(*) from durable.tasks),"
            " (select count(*) from durable.runs)]"
        )
        assert await side.fetchval(stored) == [1, 1]  # the known task and its run
        for depends_on in ([unknown], [known, unknown]):
            with pytest.raises(InvalidArgument, match=str(unknown)):
                await client.spawn(QUEUE, "noop", {}, SpawnOptions(depends_on=depends_on))
        assert await side.fetchval(stored) == [1, 1]


# --- fairness across partitions ------------------------------------------------------------------


async def test_partitions_take_turns_so_a_small_tenant_does_not_wait_behind_a_big_one(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side:
        big = await client.spawn_many(
            QUEUE,
            [
                ("tenant_job", {"tenant": "a", "i": i}, SpawnOptions(partition_key="tenant-a"))
                for i in range(30)
            ],
        )
        small = await client.spawn_many(
            QUEUE,
            [
                ("tenant_job", {"tenant": "b", "i": i}, SpawnOptions(partition_key="tenant-b"))
                for i in range(5)
            ],
        )
        total = len(big) + len(small)
        assert (await client.get_task(None, small[0].task_id)).partition_key == "tenant-b"

        async def all_done() -> bool | None:
            n = await side.fetchval("select count(*) from done_exec")
            return True if n == total else None

        # one slot: every claim takes one run, so the turns must hold from claim to claim
        async with flow_worker(dsn, tmp_path, "worker-a", "-c", "1"):
            await wait_for(all_done, timeout=60, what=f"{total} tasks to run")

        rows = await side.fetch("select step from step_exec order by at")

    order = [r["step"].removeprefix("start:") for r in rows]
    assert Counter(order) == {"a": 30, "b": 5}
    b_positions = [n for n, tenant in enumerate(order) if tenant == "b"]
    # round-robin: B's five start among the first ~12, not after A's thirty
    assert b_positions[-1] < 12, order


# --- limits --------------------------------------------------------------------------------------


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment (an end at the moment another starts does not
    overlap it)."""
    moments = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
        key=lambda m: (m[0], m[1]),
    )
    most = current = 0
    for _, step in moments:
        current += step
        most = max(most, current)
    return most


def test_max_overlap() -> None:
    t = datetime(2024, 1, 1)
    s = timedelta(seconds=1)
    assert max_overlap([(t, t + s), (t + s, t + 2 * s)]) == 1
    assert max_overlap([(t, t + 3 * s), (t + s, t + 2 * s), (t + s, t + 4 * s)]) == 3


@pytest.mark.slow
async def test_a_global_limit_holds_across_three_workers(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    n_tasks = 12
    async with side_connection(dsn, create_tables=True) as side:
        async with contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(
                    flow_worker(dsn, tmp_path, f"worker-{name}", "-q", LIMITS_QUEUE, "-c", "4")
                )
                for name in "abc"
            ]
            for worker in workers:
                await wait_event(worker, "worker.started", timeout=20)
            spawned = await client.spawn_many(
                LIMITS_QUEUE, [("limited", {"hold_s": 0.5}) for _ in range(n_tasks)]
            )

            async def all_done() -> bool | None:
                n = await side.fetchval("select count(*) from done_exec")
                return True if n >= n_tasks else None

            await wait_for(all_done, timeout=40, what=f"{n_tasks} limited tasks to run")
            # a handler notes done_exec before its outcome commits: let the workers write it
            records = [await wait_finished(client, s.task_id, timeout=10) for s in spawned]

        rows = await side.fetch("select task_id, step, at from step_exec order by at")
        done = await side.fetch("select task_id from done_exec")

    assert all(r.state is TaskState.COMPLETED for r in records)
    assert all(len(r.runs) == 1 for r in records)  # no lease lost, no retry
    assert Counter(r["task_id"] for r in done) == dict.fromkeys((s.task_id for s in spawned), 1)
    by_task: dict[uuid.UUID, dict[str, datetime]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], {})[row["step"]] = row["at"]
    intervals = [(steps["start"], steps["end"]) for steps in by_task.values()]
    assert len(intervals) == n_tasks
    assert max_overlap(intervals) == GLOBAL_LIMIT
    claimed_by = Counter(r.runs[0].claimed_by for r in records)
    assert set(claimed_by) <= {w.worker_id for w in workers}


async def test_a_rate_limit_spreads_the_starts_over_its_periods(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    n_tasks = 3 * RATE.allowed
    period = timedelta(seconds=RATE_PERIOD_S)
    async with side_connection(dsn, create_tables=True) as side:
        async with flow_worker(dsn, tmp_path, "worker-a", "-q", RATED_QUEUE, "-c", "4") as worker:
            await wait_event(worker, "worker.started", timeout=20)
            spawned = await client.spawn_many(RATED_QUEUE, [("rated", {})] * n_tasks)

            async def all_done() -> bool | None:
                n = await side.fetchval("select count(*) from done_exec")
                return True if n >= n_tasks else None

            await wait_for(all_done, timeout=30, what=f"{n_tasks} rated tasks to run")
            # a handler notes done_exec before its outcome commits: let the worker write it
            records = [await wait_finished(client, s.task_id, timeout=10) for s in spawned]

        recorded = sorted(
            r["at"] for r in await side.fetch("select at from step_exec where step = 'start'")
        )

    assert all(r.state is TaskState.COMPLETED for r in records)
    claimed = sorted(r.runs[0].started_at for r in records if r.runs[0].started_at is not None)
    assert len(claimed) == len(recorded) == n_tasks

    def most_in_a_window(starts: list[datetime], window: timedelta) -> int:
        return max(sum(1 for t in starts if s <= t < s + window) for s in starts)

    # the claims (the database's clock, which the limit counts by) exactly ...
    assert claimed[-1] - claimed[0] >= 2 * period
    assert most_in_a_window(claimed, period) == RATE.allowed
    # ... and the handlers' own records, allowing for the moments between claim and start
    tolerance = timedelta(seconds=0.2)
    assert recorded[-1] - recorded[0] >= 2 * period - tolerance
    assert most_in_a_window(recorded, period - tolerance) <= RATE.allowed
