"""Four worker processes on 2,000 tasks: every task completes exactly once."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from support.processes import WorkerProcess, wait_event, worker_process
from support.side_tables import side_connection
from support.waiting import wait_for
from worker_app import QUEUE, SCRIPT

from durable import Client

pytestmark = pytest.mark.anyio

TASKS = 2_000
WORKERS = 4
CONCURRENCY = 8


async def test_four_workers_complete_two_thousand_tasks_exactly_once(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    async with side_connection(dsn, create_tables=True) as side, AsyncExitStack() as stack:
        args = ("-c", str(CONCURRENCY), "--claim-timeout", "5", "--poll-interval", "0.5")
        workers: list[WorkerProcess] = [
            await stack.enter_async_context(
                worker_process(SCRIPT, dsn, tmp_path / f"w{i}.log", f"worker-{i}", *args)
            )
            for i in range(WORKERS)
        ]
        for worker in workers:  # all are listening before the work arrives
            await wait_event(worker, "worker.started", timeout=20)

        started = anyio.current_time()
        spawned = await client.spawn_many(QUEUE, [("noop", {"i": i}) for i in range(TASKS)])
        assert len({s.task_id for s in spawned}) == TASKS

        async def all_completed() -> bool | None:
            n = await side.fetchval("select count(*) from durable.tasks where state = 'completed'")
            return True if n == TASKS else None

        await wait_for(all_completed, timeout=60, what=f"{TASKS} tasks to complete", interval=0.2)
        elapsed = anyio.current_time() - started
        for worker in workers:
            assert worker.returncode is None, worker.log_text()

        states = {
            r["state"]: r["n"]
            for r in await side.fetch("select state, count(*) as n from durable.tasks group by 1")
        }
        run_states = {
            r["state"]: r["n"]
            for r in await side.fetch("select state, count(*) as n from durable.runs group by 1")
        }
        done = await side.fetchrow(
            "select count(*) as n, count(distinct task_id) as tasks, count(distinct pid) as pids"
            "  from done_exec"
        )
        # every side effect belongs to the run that completed its task
        matched = await side.fetchval(
            "select count(*) from done_exec d"
            "  join durable.runs r on r.run_id = d.run_id and r.task_id = d.task_id"
            " where r.state = 'completed'"
        )
        lost = sum(len(w.events("lease.lost")) for w in workers)

    assert states == {"completed": TASKS}
    assert run_states["completed"] == TASKS
    assert done is not None
    assert (done["n"], done["tasks"]) == (TASKS, TASKS)
    assert matched == TASKS
    assert lost == 0
    assert done["pids"] == WORKERS  # the work was shared
    assert elapsed < 60
