"""Limits that hold (issue 18, item 7): a task name's ``global_limit`` across every queue it runs
on, a limit per concurrency key, and claims that stay cheap behind a capped head."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import asyncpg
import pytest
from support.database import connection, with_database
from support.in_process import running_worker

from durable import Client, Durable, InvalidArgument, SpawnOptions, TaskContext

pytestmark = pytest.mark.anyio


async def test_a_global_limit_recorded_on_one_queue_holds_on_every_queue(client: Client) -> None:
    await client.set_limit("a", "g", concurrency=1)
    for queue in ("a", "b", "b"):
        await client.spawn(queue, "g", {})
    [first] = await client.claim("b", "w1", 60, 5)
    assert await client.claim("a", "w1", 60, 5) == []
    assert await client.claim("b", "w1", 60, 5) == []
    await client.complete("b", first.run_id, None)
    assert len(await client.claim("a", "w1", 60, 5)) == 1


async def test_concurrent_claims_on_two_queues_never_both_take_the_last_slot(
    client: Client,
) -> None:
    await client.set_limit("a", "g", concurrency=2)
    await client.spawn_many("a", [("g", {"i": i}) for i in range(20)])
    await client.spawn_many("b", [("g", {"i": i}) for i in range(20)])
    for _ in range(5):
        claims = await asyncio.gather(
            *(client.claim(queue, f"w{i}", 60, 3) for i in range(8) for queue in ("a", "b"))
        )
        running = [c for batch in claims for c in batch]
        assert len(running) <= 2
        for claim in running:
            await client.complete(claim.queue, claim.run_id, None)
    assert len(running) == 2


async def test_a_key_limit_caps_each_key_and_lets_the_others_run(client: Client) -> None:
    await client.set_limit("q", "k", key_limit=2)
    for tenant in ("big", "big", "big", "big", "big", "small", "small", "small"):
        await client.spawn("q", "k", {"t": tenant}, SpawnOptions(concurrency_key=tenant))
    claims = await client.claim("q", "w1", 60, 10)
    assert Counter(c.params["t"] for c in claims) == {"big": 2, "small": 2}
    # the key's limit holds on another queue as well
    await client.spawn("other", "k", {"t": "big"}, SpawnOptions(concurrency_key="big"))
    await client.spawn("other", "k", {"t": "new"}, SpawnOptions(concurrency_key="new"))
    assert [c.params["t"] for c in await client.claim("other", "w1", 60, 10)] == ["new"]
    assert await client.claim("q", "w1", 60, 10) == []
    big = next(c for c in claims if c.params["t"] == "big")
    await client.complete("q", big.run_id, None)
    assert [c.params["t"] for c in await client.claim("q", "w1", 60, 10)] == ["big"]


async def test_runs_behind_a_capped_head_are_claimed(
    client: Client, raw: asyncpg.Connection
) -> None:
    await client.set_limit("q", "capped", concurrency=1)
    await client.spawn_many("q", [("capped", {"i": i}) for i in range(2000)])
    [head] = await client.claim("q", "w1", 60, 1)
    assert head.task_name == "capped"
    await client.spawn_many("q", [("free", {"i": i}) for i in range(30)])
    await raw.execute("analyze durable.runs")
    claims = await client.claim("q", "w1", 60, 10)
    # in claim order (FIFO), none of the capped ones
    assert [(c.task_name, c.params["i"]) for c in claims] == [("free", i) for i in range(10)]


async def _rows_read_by_a_claim(dsn: str, capped: int) -> int:
    """The runs a claim of 10 reads (heap tuples fetched or scanned, from the transaction's own
    statistics) behind ``capped`` runs of a name at its limit."""
    async with Client(dsn) as client:
        await client.set_limit("q", "capped", concurrency=1)
        await client.spawn_many("q", [("capped", {"i": i}) for i in range(capped)])
        [head] = await client.claim("q", "holder", 3600, 1)
        assert head.task_name == "capped"
        await client.spawn_many("q", [("free", {"i": i}) for i in range(100)])
    async with connection(dsn) as conn:
        await conn.execute("vacuum analyze durable.runs")
        read = []
        for _ in range(3):  # rolled back each time: every claim finds the same queue
            tx = conn.transaction()
            await tx.start()
            try:
                claimed = await conn.fetch("select * from durable.claim('q', 'w1', 60, 10)")
                assert [r["task_name"] for r in claimed] == ["free"] * 10
                n = await conn.fetchval(
                    "select idx_tup_fetch + seq_tup_read from pg_stat_xact_user_tables"
                    " where relid = 'durable.runs'::regclass"
                )
            finally:
                await tx.rollback()
            read.append(int(n))
        return min(read)


async def test_a_claim_behind_a_capped_head_reads_none_of_the_capped_runs(
    dsn: str, server_dsn: str, template_db: str
) -> None:
    """20 times more capped runs ahead: the claim reads no more runs (it used to read them all)."""
    other = f"t_{uuid.uuid4().hex}"
    async with connection(server_dsn) as conn:
        await conn.execute(f'create database "{other}" template "{template_db}"')
    try:
        small = await _rows_read_by_a_claim(dsn, 1_000)
        big = await _rows_read_by_a_claim(with_database(server_dsn, other), 20_000)
    finally:
        async with connection(server_dsn) as conn:
            await conn.execute(f'drop database if exists "{other}" with (force)')
    assert big <= small + 10, (small, big)
    assert big < 1_000, big


async def test_a_key_limit_needs_a_key_and_a_key_must_be_a_string(dsn: str) -> None:
    app = Durable(dsn)
    with pytest.raises(ValueError, match="key_limit needs a concurrency_key"):

        @app.task(key_limit=2)
        async def nokey(ctx: TaskContext, params: Any) -> None: ...

    with pytest.raises(ValueError, match="key_limit must be at least 1"):

        @app.task(concurrency_key=lambda p: p["t"], key_limit=0)
        async def zero(ctx: TaskContext, params: Any) -> None: ...

    @app.task(concurrency_key=lambda p: p["tenant"], key_limit=1)
    async def keyed(ctx: TaskContext, params: Any) -> None: ...

    async with app:
        with pytest.raises(InvalidArgument, match="concurrency_key of task 'keyed' failed"):
            await keyed.spawn({"user": 1})
        with pytest.raises(InvalidArgument, match="must return a non-empty string"):
            await keyed.spawn({"tenant": 7})
        handle = await keyed.spawn({"tenant": "acme"})
        assert (await app.get_task(handle.task_id)).concurrency_key == "acme"
        assert await app.client.list_tasks() is not None


async def test_workers_on_two_queues_run_a_global_limit_of_one_one_at_a_time(dsn: str) -> None:
    """The issue's case: global_limit=1 let 4 runs at once across 2 queues."""
    app = Durable(dsn)
    running = 0
    most = 0

    @app.task(name="one_at_a_time", queue="a", global_limit=1)
    async def one_at_a_time(ctx: TaskContext, params: Any) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.05)
        running -= 1

    @app.task(name="by_tenant", queue="a", concurrency_key=lambda p: p["tenant"], key_limit=2)
    async def by_tenant(ctx: TaskContext, params: Any) -> None:
        per_tenant[params["tenant"]] += 1
        most_per_tenant[params["tenant"]] = max(
            most_per_tenant[params["tenant"]], per_tenant[params["tenant"]]
        )
        at_once.append(sum(per_tenant.values()))
        await anyio.sleep(0.05)
        per_tenant[params["tenant"]] -= 1

    per_tenant: Counter[str] = Counter()
    most_per_tenant: Counter[str] = Counter()
    at_once: list[int] = []
    async with (
        running_worker(app, queues=("a",), concurrency=8),
        running_worker(app, queues=("b",), concurrency=8),
    ):
        handles = [await one_at_a_time.spawn(queue=q) for q in ("a", "b") * 6]
        handles += [
            await by_tenant.spawn({"tenant": t}, queue=q)
            for t in ("acme", "globex", "initech")
            for q in ("a", "b") * 3
        ]
        started = time.monotonic()
        for handle in handles:
            await handle.result(timeout=30)
    assert most == 1
    assert max(most_per_tenant.values()) == 2
    assert max(at_once) > 2  # the keys run side by side
    assert time.monotonic() - started < 30
