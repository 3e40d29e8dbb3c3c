"""Workers whose wall clock is an hour off (either way) work normally: leases, timeouts and
timestamps are the database's, never the worker's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fault_app import QUEUE, fault_worker
from support.database import connection
from support.processes import wait_event
from support.waiting import wait_all_finished, wait_for

from durable import Client, FailureReason, RunState, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

SKEW_S = 3600.0
CLAIM_TIMEOUT_S = 1.0
#: How far a stored timestamp may be from the database's clock (the skew is 3600 s).
NEAR = timedelta(seconds=20)


async def _db_now(dsn: str) -> datetime:
    async with connection(dsn) as conn:
        now: datetime = await conn.fetchval("select durable.now()")
    return now


async def test_skewed_workers_claim_complete_and_store_database_time(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with (
        fault_worker(dsn, tmp_path / "ahead.log", "ahead", skew_s=SKEW_S) as ahead,
        fault_worker(dsn, tmp_path / "behind.log", "behind", skew_s=-SKEW_S) as behind,
    ):
        # the skew is real: each worker's wall clock is an hour off the database's
        for worker, sign in ((ahead, 1), (behind, -1)):
            event = await wait_event(worker, "fault_app.clock", timeout=10)
            db_time = (await _db_now(dsn)).timestamp()
            assert abs(event["time"] - (db_time + sign * SKEW_S)) < NEAR.total_seconds()
        await wait_event(ahead, "worker.started", timeout=10)
        await wait_event(behind, "worker.started", timeout=10)

        # each task holds its slot long enough that one worker (4 slots) cannot take all 8
        hold = {"hold_s": 0.5}
        infos = [await client.spawn(QUEUE, "clock", hold, SpawnOptions()) for _ in range(8)]
        records = await wait_all_finished(client, [i.task_id for i in infos], timeout=15)
        db_now = await _db_now(dsn)
        seen = set()
        for record in records:
            assert record.state is TaskState.COMPLETED
            (run,) = record.runs
            seen.add(run.claimed_by)
            assert run.started_at is not None
            assert run.finished_at is not None
            assert run.lease_expires_at is not None
            for stamp in (record.created_at, run.started_at, run.finished_at):
                assert abs(stamp - db_now) < NEAR, (stamp, db_now)
            # the lease was taken by the database's clock: claim time + claim_timeout
            assert (
                timedelta(0)
                < run.lease_expires_at - run.started_at
                <= timedelta(seconds=CLAIM_TIMEOUT_S + 1)
            )
            # while the worker's clock said an hour off
            skew = record.result["time"] - run.started_at.timestamp()
            expected = SKEW_S if run.claimed_by == "ahead" else -SKEW_S
            assert abs(skew - expected) < NEAR.total_seconds()
        assert seen == {"ahead", "behind"}


async def test_lapsed_lease_of_a_skewed_worker_is_reaped_at_database_time(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    info = await client.spawn(QUEUE, "first_hangs", {"s": 60}, SpawnOptions(max_attempts=3))
    async with fault_worker(dsn, tmp_path / "ahead.log", "ahead", skew_s=SKEW_S) as ahead:

        async def running() -> bool | None:
            record = await client.get_task(QUEUE, info.task_id)
            return True if record.runs[-1].state is RunState.RUNNING else None

        await wait_for(running, timeout=15, what="the skewed worker to claim the task")
        record = await client.get_task(QUEUE, info.task_id)
        lease = record.runs[-1].lease_expires_at
        assert lease is not None
        # renewed by the database's clock: never an hour away
        assert abs(lease - await _db_now(dsn)) < timedelta(seconds=CLAIM_TIMEOUT_S + 2)
        ahead.kill()
        await ahead.process.wait()
        killed_at = await _db_now(dsn)

    # a worker behind by an hour reaps it when the database says the lease lapsed, not before
    # and not an hour late
    async with fault_worker(dsn, tmp_path / "behind.log", "behind", skew_s=-SKEW_S):
        (record,) = await wait_all_finished(client, [info.task_id], timeout=15)
    assert record.state is TaskState.COMPLETED
    first, last = record.runs
    assert first.claimed_by == "ahead"
    assert first.failure_reason is FailureReason.CRASH
    assert first.lease_expires_at is not None
    assert first.finished_at is not None
    assert first.finished_at >= first.lease_expires_at
    assert first.lease_expires_at <= killed_at + timedelta(seconds=CLAIM_TIMEOUT_S)
    assert first.finished_at - killed_at < timedelta(seconds=10)
    assert last.claimed_by == "behind"
    assert last.state is RunState.COMPLETED
    assert last.started_at is not None
    assert abs(last.started_at - await _db_now(dsn)) < NEAR


async def test_custom_backoff_retry_time_is_database_time(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    info = await client.spawn(QUEUE, "fails_once", {}, SpawnOptions(max_attempts=2))
    async with fault_worker(dsn, tmp_path / "ahead.log", "ahead", skew_s=SKEW_S):

        async def retry_scheduled() -> datetime | None:
            record = await client.get_task(QUEUE, info.task_id)
            return record.runs[1].available_at if len(record.runs) > 1 else None

        available_at = await wait_for(retry_scheduled, timeout=10, what="the retry")
    assert abs(available_at - await _db_now(dsn)) < NEAR
