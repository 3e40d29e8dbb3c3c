"""Reserved runs (RESERVED in sql/protocol/00_model.sql): a run claimed ahead of a free slot is
reserved until its worker reports its start; reaped while reserved, it spends no attempt, three
times per task at most."""

from __future__ import annotations

import anyio
import pytest

from durable import Client, FailureReason, RunState, SpawnOptions, TaskState

pytestmark = pytest.mark.anyio

LEASE_S = 0.2


async def _lapse(client: Client, worker_id: str) -> None:
    """The worker is gone and its leases lapse: the next claim on the queue reaps its runs."""
    await client.stop_worker(worker_id)
    await anyio.sleep(LEASE_S + 0.1)


async def test_runs_beyond_the_free_slots_are_reserved_until_reported(client: Client) -> None:
    await client.spawn_many("q", [("t", {"i": i}) for i in range(4)])
    claims = await client.claim("q", "w1", 60, 4, slots=1)
    assert [c.params["i"] for c in claims] == [0, 1, 2, 3]  # priority, then claim order
    reserved = {c.run_id: (await client.get_task("q", c.task_id)).runs[-1].reserved for c in claims}
    assert list(reserved.values()) == [False, True, True, True]
    # reported with the next claim, and with the next heartbeat
    await client.claim("q", "w1", 60, 0, started=[claims[1].run_id], slots=0)
    await client.extend_claims("w1", [c.run_id for c in claims], 60, started=[claims[2].run_id])
    flags = [(await client.get_task("q", c.task_id)).runs[-1].reserved for c in claims]
    assert flags == [False, False, False, True]
    # without slots (a client that runs what it claims), every run counts as started
    await client.spawn("q", "t", {"i": 4})
    [plain] = await client.claim("q", "w2", 60, 1)
    assert (await client.get_task("q", plain.task_id)).runs[-1].reserved is False


async def test_a_reserved_run_reaped_spends_no_attempt_three_times_per_task_at_most(
    client: Client,
) -> None:
    info = await client.spawn("q", "t", {}, SpawnOptions(max_attempts=1))
    for n in range(4):
        [claim] = await client.claim("q", f"w{n}", LEASE_S, 1, slots=0)
        assert claim.task_id == info.task_id
        assert claim.attempt == 1
        await _lapse(client, f"w{n}")
    assert await client.claim("q", "w4", LEASE_S, 1, slots=0) == []  # reaps the fourth
    record = await client.get_task("q", info.task_id)
    assert (record.state, record.attempt) == (TaskState.FAILED, 1)
    assert [(r.state, r.attempt, r.failure_reason, r.reserved) for r in record.runs] == [
        *[(RunState.RELEASED, 1, FailureReason.CRASH, True)] * 3,
        (RunState.FAILED, 1, FailureReason.CRASH, True),
    ]


async def test_a_reported_run_reaped_spends_its_attempt(client: Client) -> None:
    info = await client.spawn("q", "t", {}, SpawnOptions(max_attempts=1))
    [claim] = await client.claim("q", "w1", LEASE_S, 1, slots=0)
    await client.claim("q", "w1", LEASE_S, 0, started=[claim.run_id], slots=0)
    await _lapse(client, "w1")
    assert await client.claim("q", "w2", LEASE_S, 1) == []
    record = await client.get_task("q", info.task_id)
    assert record.state is TaskState.FAILED
    [run] = record.runs
    assert (run.state, run.failure_reason, run.reserved) == (
        RunState.FAILED,
        FailureReason.CRASH,
        False,
    )
