"""Writes ride out faults: 500 tasks, each a step, a progress write and code outside any step,
run by two worker processes while every backend is terminated (three times) or PostgreSQL
restarts. A completion, failure, checkpoint or progress write that meets the outage is tried
again while the run's lease holds, so the fault costs no attempt (every task completes with one
run, attempt 1) and no handler body runs again after it had returned (each handler marks a file
just before it returns: every task id is marked once).

The leases (10 s) outlast the outages; a longer outage than a lease may cost an attempt (other
workers reap the run), which is what the lease is for.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from fault_app import QUEUE, fault_worker
from support.database import connection
from support.processes import WorkerProcess
from support.waiting import wait_all_finished, wait_until

from durable import Client, DatabaseUnavailable, SpawnOptions, TaskState
from durable.protocol.embedded import EmbeddedServer

pytestmark = pytest.mark.anyio

log = logging.getLogger("faults")

TASKS = 500
PARAMS = {"step_s": 0.05, "tail_s": 0.05}
#: Leases that outlast the outages (the renewal runs every third of it).
CLAIM_TIMEOUT_S = 10.0
CONCURRENCY = 16
OUTAGE = (DatabaseUnavailable,)
WAIT_S = 90.0


@contextlib.asynccontextmanager
async def _two_workers(
    dsn: str, tmp_path: Path, marks: Path
) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    """Worker processes ``worker-a`` and ``worker-b`` with the test's leases and slots, each
    handler marking ``marks`` just before it returns."""
    async with (
        fault_worker(
            dsn,
            tmp_path / "a.log",
            "worker-a",
            claim_timeout=CLAIM_TIMEOUT_S,
            concurrency=CONCURRENCY,
            returns_file=marks,
        ) as a,
        fault_worker(
            dsn,
            tmp_path / "b.log",
            "worker-b",
            claim_timeout=CLAIM_TIMEOUT_S,
            concurrency=CONCURRENCY,
            returns_file=marks,
        ) as b,
    ):
        yield a, b


async def _spawn(client: Client) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    for _ in range(0, TASKS, 100):
        infos = await client.spawn_many(
            QUEUE, [("returns", PARAMS, SpawnOptions()) for _ in range(100)]
        )
        ids.extend(info.task_id for info in infos)
    return ids


async def _completed_at_least(client: Client, count: int) -> None:
    async def enough() -> bool:
        counts = await client.queue_counts()
        done = sum(c.count for c in counts if c.state is TaskState.COMPLETED)
        return done >= count

    await wait_until(enough, timeout=WAIT_S, what=f"{count} tasks completed", tolerate=OUTAGE)


async def _tally(
    client: Client, dsn: str, ids: list[uuid.UUID], marks: Path, workers: list[WorkerProcess]
) -> dict[str, int]:
    """What the fault cost: attempts spent beyond the first, runs that did not complete,
    handler bodies that ran again after returning; and how many writes were tried again."""
    records = await wait_all_finished(client, ids, timeout=WAIT_S, tolerate=OUTAGE)
    async with connection(dsn) as conn:
        extra_attempts = await conn.fetchval(
            "select coalesce(sum(attempt - 1), 0) from durable.tasks where task_id = any($1)", ids
        )
        failed = await conn.fetch(
            "select task_id, attempt, state, failure_reason, error->>'type' as type,"
            " error->>'message' as message, error->>'traceback' as tb from durable.runs"
            " where task_id = any($1) and state <> 'completed'",
            ids,
        )
    if failed:
        log.warning("runs that did not complete: %s", [dict(r) for r in failed])
    returned = Counter((await anyio.Path(marks).read_text()).split())
    tally = {
        "tasks": len(ids),
        "completed": sum(r.state is TaskState.COMPLETED for r in records),
        "extra_attempts": int(extra_attempts),
        "runs_not_completed": len(failed),
        "returned_tasks": len(returned),
        "bodies_rerun_after_return": sum(n - 1 for n in returned.values()),
        "writes_retried": sum(len(w.events("run.write_retried")) for w in workers),
        "writes_recovered": sum(len(w.events("run.write_recovered")) for w in workers),
    }
    log.info("writes ride out faults: %s", tally)
    return tally


def _assert_nothing_spent(tally: dict[str, int]) -> None:
    assert tally["completed"] == TASKS, tally
    assert tally["extra_attempts"] == 0, tally
    assert tally["runs_not_completed"] == 0, tally
    assert tally["returned_tasks"] == TASKS, tally
    assert tally["bodies_rerun_after_return"] == 0, tally


async def test_every_backend_terminated_costs_no_attempt(dsn: str, tmp_path: Path) -> None:
    marks = tmp_path / "returned.txt"
    marks.touch()
    async with Client(dsn) as client, _two_workers(dsn, tmp_path, marks) as (a, b):
        ids = await _spawn(client)
        terminated = 0
        for threshold in (50, 200, 350):
            await _completed_at_least(client, threshold)
            async with connection(dsn) as admin:
                terminated += await admin.fetchval(
                    "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()) t"
                )
        assert terminated >= 6
        tally = await _tally(client, dsn, ids, marks, [a, b])
        assert [a.returncode, b.returncode] == [None, None]
    _assert_nothing_spent(tally)


async def test_a_restart_of_postgresql_costs_no_attempt(
    embedded_server: EmbeddedServer, tmp_path: Path
) -> None:
    dsn = await anyio.to_thread.run_sync(embedded_server.start)
    marks = tmp_path / "returned.txt"
    marks.touch()
    async with Client(dsn) as client, _two_workers(dsn, tmp_path, marks) as (a, b):
        ids = await _spawn(client)
        await _completed_at_least(client, 100)
        await anyio.to_thread.run_sync(lambda: embedded_server.restart(2.0))
        tally = await _tally(client, dsn, ids, marks, [a, b])
        assert [a.returncode, b.returncode] == [None, None]
    _assert_nothing_spent(tally)
    assert tally["writes_retried"] > 0, tally  # the restart met writes in flight
