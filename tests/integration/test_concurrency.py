"""Races: concurrent spawns, claims, reaps and writes keep the protocol's promises."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from support.database import fetchval

from durable.client import Client
from durable.protocol.errors import InvalidState, LeaseLost
from durable.protocol.records import (
    FailureReason,
    RunState,
    SpawnInfo,
    SpawnOptions,
    TaskRecord,
    TaskState,
)

pytestmark = pytest.mark.anyio

Q = "race"


def _at(dsn: str, when: datetime) -> Client:
    """A client whose database clock reads ``when``."""
    return Client(dsn, pool_size=10, server_settings={"durable.fake_now": when.isoformat()})


async def _count(dsn: str, query: str) -> int:
    value: int = await fetchval(dsn, query)
    return value


async def test_fifty_concurrent_spawns_with_one_key_make_one_task(client: Client, dsn: str) -> None:
    infos: list[SpawnInfo] = []

    async def spawn(i: int) -> None:
        infos.append(await client.spawn(Q, "job", i, SpawnOptions(idempotency_key="once")))

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(spawn, i)
    assert len(infos) == 50
    assert sum(i.created for i in infos) == 1
    assert len({(i.task_id, i.run_id) for i in infos}) == 1
    assert await _count(dsn, "select count(*) from durable.tasks") == 1
    assert await _count(dsn, "select count(*) from durable.runs") == 1


async def test_concurrent_spawns_from_several_clients_make_one_task_per_key(dsn: str) -> None:
    infos: list[SpawnInfo] = []

    async def producer() -> None:
        async with Client(dsn, pool_size=4) as client:
            for key in range(10):
                options = SpawnOptions(idempotency_key=f"key-{key}")
                infos.append(await client.spawn(Q, "job", key, options))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(producer)
    assert len(infos) == 50
    assert sum(i.created for i in infos) == 10
    assert len({i.task_id for i in infos}) == 10
    assert await _count(dsn, "select count(*) from durable.tasks") == 10


async def test_concurrent_spawn_many_batches_share_their_keys(dsn: str) -> None:
    results: list[list[SpawnInfo]] = []
    keys = [f"k{i}" for i in range(30)]

    async def producer(seed: int) -> None:
        shuffled = random.Random(seed).sample(keys, len(keys))
        items = [("job", k, SpawnOptions(idempotency_key=k)) for k in shuffled]
        async with Client(dsn, pool_size=2) as client:
            infos = await client.spawn_many(Q, items)
        results.append(infos)

    async with anyio.create_task_group() as tg:
        for seed in range(6):
            tg.start_soon(producer, seed)
    created = [i for batch in results for i in batch if i.created]
    assert len(created) == len(keys)
    assert len({i.task_id for batch in results for i in batch}) == len(keys)
    assert await _count(dsn, "select count(*) from durable.tasks") == len(keys)
    assert await _count(dsn, "select count(*) from durable.runs") == len(keys)


async def test_many_claimers_claim_every_run_exactly_once(dsn: str) -> None:
    async with Client(dsn, pool_size=20) as client:
        spawned = await client.spawn_many(Q, [("job", i) for i in range(1000)])
        claimed: list[uuid.UUID] = []

        async def claimer(worker: int) -> None:
            rng = random.Random(worker)
            while claims := await client.claim(Q, f"w{worker}", qty=rng.randint(1, 10)):
                claimed.extend(c.run_id for c in claims)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for worker in range(20):
                    tg.start_soon(claimer, worker)
    duplicates = [run for run, n in Counter(claimed).items() if n > 1]
    assert duplicates == []
    assert sorted(claimed) == sorted(i.run_id for i in spawned)
    assert await _count(dsn, "select count(*) from durable.runs where state <> 'running'") == 0


async def test_concurrent_claimers_reap_each_lapsed_run_once(client: Client, dsn: str) -> None:
    retry = SpawnOptions(max_attempts=3)
    infos = await client.spawn_many(Q, [("job", i, retry) for i in range(50)])
    assert len(await client.claim(Q, "dead", claim_timeout=5.0, qty=50)) == 50
    await client.stop_worker("dead")
    later = datetime.now(UTC) + timedelta(minutes=10)
    async with _at(dsn, later) as c, anyio.create_task_group() as tg:
        for worker in range(10):
            tg.start_soon(c.claim, Q, f"w{worker}", 30.0, 1)
    for info in infos:
        runs = (await client.get_task(Q, info.task_id)).runs
        assert runs[0].failure_reason == FailureReason.CRASH
        assert [r.attempt for r in runs] == [1, 2]
    assert await _count(dsn, "select count(*) from durable.runs") == 100


async def _complete_while_cancelling(client: Client) -> tuple[list[str], TaskRecord]:
    info = await client.spawn(Q, "job", None)
    [claim] = await client.claim(Q, "w1")
    outcomes: list[str] = []

    async def complete() -> None:
        try:
            await client.complete(Q, claim.run_id, "done")
            outcomes.append("completed")
        except LeaseLost:
            outcomes.append("lease_lost")

    async def cancel() -> None:
        try:
            await client.cancel(Q, info.task_id)
            outcomes.append("cancelled")
        except InvalidState:
            outcomes.append("invalid_state")

    async with anyio.create_task_group() as tg:
        tg.start_soon(complete)
        tg.start_soon(cancel)
    return sorted(outcomes), await client.get_task(Q, info.task_id)


async def test_complete_racing_cancel_leaves_one_outcome(client: Client) -> None:
    for _ in range(20):
        outcomes, task = await _complete_while_cancelling(client)
        if task.state == TaskState.COMPLETED:
            assert outcomes == ["completed", "invalid_state"]
            assert (task.result, task.runs[0].state) == ("done", RunState.COMPLETED)
        else:
            assert task.state == TaskState.CANCELLED
            assert outcomes == ["cancelled", "lease_lost"]
            assert (task.result, task.runs[0].state) == (None, RunState.CANCELLED)


async def _try_checkpoint(client: Client, run_id: uuid.UUID, written: list[bool]) -> None:
    try:
        await client.set_checkpoint(Q, run_id, "step", 1)
        written.append(True)
    except LeaseLost:
        written.append(False)


async def test_a_checkpoint_racing_a_reap_lands_only_if_it_succeeded(
    client: Client, dsn: str
) -> None:
    start = datetime.now(UTC)
    async with (
        _at(dsn, start + timedelta(seconds=1)) as runner,
        _at(dsn, start + timedelta(minutes=10)) as reaper,
    ):
        for _ in range(10):
            info = await client.spawn(Q, "job", None)
            [claim] = await client.claim(Q, "dead", claim_timeout=5.0)
            await client.stop_worker("dead")
            written: list[bool] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(_try_checkpoint, runner, claim.run_id, written)
                tg.start_soon(reaper.claim, Q, "w2", 30.0, 1)
            runs = (await client.get_task(Q, info.task_id)).runs
            assert runs[0].failure_reason == FailureReason.CRASH
            assert len(await client.get_checkpoints(Q, info.task_id)) == int(written[0])


async def test_concurrent_fail_of_one_run_schedules_one_retry(client: Client) -> None:
    info = await client.spawn(Q, "job", None, SpawnOptions(max_attempts=5))
    [claim] = await client.claim(Q, "w1")
    outcomes: list[bool] = []

    async def fail() -> None:
        try:
            await client.fail(Q, claim.run_id, {"type": "E"})
            outcomes.append(True)
        except LeaseLost:
            outcomes.append(False)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(fail)
    assert sorted(outcomes) == [False] * 9 + [True]
    assert [r.attempt for r in (await client.get_task(Q, info.task_id)).runs] == [1, 2]


async def _try_retry(client: Client, task_id: uuid.UUID, outcomes: list[bool]) -> None:
    try:
        await client.retry(Q, task_id)
        outcomes.append(True)
    except InvalidState:
        outcomes.append(False)


async def test_concurrent_retries_of_a_failed_task_make_one_run(client: Client) -> None:
    info = await client.spawn(Q, "job", None, SpawnOptions(max_attempts=1))
    [claim] = await client.claim(Q, "w1")
    await client.fail(Q, claim.run_id, None)
    outcomes: list[bool] = []
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(_try_retry, client, info.task_id, outcomes)
    assert sorted(outcomes) == [False] * 9 + [True]
    assert [r.attempt for r in (await client.get_task(Q, info.task_id)).runs] == [1, 2]
