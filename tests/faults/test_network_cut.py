"""The network between a worker and PostgreSQL is cut mid-run (a proxy stalls every connection
and refuses new ones): the cut worker's leases lapse, another worker reaps and finishes its runs,
the cut worker stops those runs itself and never writes a stale checkpoint, and once the network
is back it reconnects and works again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_app import QUEUE, fault_worker
from fault_proxy import tcp_proxy
from support.database import connection
from support.processes import wait_event
from support.waiting import wait_all_finished, wait_for

from durable import Client, FailureReason, RunState, SpawnOptions, TaskState
from durable.protocol.store import describe_dsn

pytestmark = pytest.mark.anyio

CLAIM_TIMEOUT_S = 1.0


async def test_cut_worker_loses_its_runs_to_another_and_writes_nothing_stale(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    host, port = describe_dsn(dsn)
    async with tcp_proxy(host, port or 5432) as proxy:
        cut_dsn = proxy.dsn(dsn)
        # one task checkpoints every 0.1 s; the other's first attempt sleeps without a database
        # call, so only the missing lease renewals can tell it that its lease is gone
        stepping = await client.spawn(
            QUEUE, "steps", {"n": 30, "step_s": 0.1}, SpawnOptions(max_attempts=3)
        )
        hanging = await client.spawn(QUEUE, "first_hangs", {"s": 60}, SpawnOptions(max_attempts=3))
        task_ids = [stepping.task_id, hanging.task_id]
        async with fault_worker(
            cut_dsn, tmp_path / "cut.log", "worker-cut", claim_timeout=CLAIM_TIMEOUT_S
        ) as cut:

            async def both_running() -> bool | None:
                if not await client.get_checkpoints(QUEUE, stepping.task_id):
                    return None
                record = await client.get_task(QUEUE, hanging.task_id)
                return True if record.runs[-1].state is RunState.RUNNING else None

            await wait_for(both_running, timeout=15, what="the cut worker to run both tasks")
            proxy.cut()

            async with fault_worker(
                dsn, tmp_path / "direct.log", "worker-direct", claim_timeout=CLAIM_TIMEOUT_S
            ) as direct:
                records = await wait_all_finished(client, task_ids, timeout=20)
                # the cut worker noticed on its own that the lease it could not renew is gone
                await wait_event(cut, "lease.lapsed", task_id=str(hanging.task_id), timeout=5)
                await wait_event(cut, "lease.lost", task_id=str(hanging.task_id), timeout=5)
                # the stepping run stopped too: its lease lapsed, or a checkpoint write failed
                # and so did the write of its outcome
                stopped = cut.events("lease.lost", task_id=str(stepping.task_id)) + cut.events(
                    "run.outcome_not_written", task_id=str(stepping.task_id)
                )
                assert stopped, cut.log_text()[-3000:]
                assert not cut.events("run.completed"), cut.log_text()[-3000:]

                for record in records:
                    assert record.state is TaskState.COMPLETED
                    first, *_, last = record.runs
                    assert first.claimed_by == "worker-cut"
                    assert first.state is RunState.FAILED
                    assert first.failure_reason in {
                        FailureReason.CRASH,
                        FailureReason.HEARTBEAT_TIMEOUT,
                    }
                    assert last.claimed_by == "worker-direct"
                    assert last.state is RunState.COMPLETED

                # the network is back: the cut worker reconnects; what it still tries to write
                # for its old runs is refused (LeaseLost), so no stale checkpoint ever lands
                await proxy.heal()
                await wait_event(cut, "db.reconnected", during="claim", timeout=10)
                await wait_event(cut, "db.reconnected", during="listen", timeout=10)
                direct.kill()

            # the cut worker works again, alone
            again = await client.spawn(QUEUE, "steps", {"n": 1, "step_s": 0}, SpawnOptions())
            (record,) = await wait_all_finished(client, [again.task_id], timeout=10)
            assert record.state is TaskState.COMPLETED
            assert record.runs[-1].claimed_by == "worker-cut"
            assert cut.returncode is None

    async with connection(dsn) as conn:
        stale = await conn.fetch(
            "select c.task_id, c.step_name, c.created_at, r.lease_expires_at, r.finished_at"
            "  from durable.checkpoints c join durable.runs r using (run_id)"
            " where r.claimed_by = 'worker-cut' and r.state = 'failed'"
            "   and (c.created_at > r.lease_expires_at or c.created_at > r.finished_at)"
        )
        assert stale == []
        by_cut = await conn.fetchval(
            "select count(*) from durable.checkpoints c join durable.runs r using (run_id)"
            " where r.claimed_by = 'worker-cut' and r.state = 'failed'"
        )
        assert by_cut >= 1  # it did checkpoint before the cut; the rest came from the retry
