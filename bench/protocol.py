"""Workloads that drive the SQL protocol through the low-level Client: spawn, claim, complete.

Every task is a no-op ``("noop", {"i": i})``; nothing executes it, so the figures are the cost of
the protocol itself (round trips, locks, index maintenance, WAL), the ceiling a worker can reach.
"""

from __future__ import annotations

import anyio
from harness import Bench, Measurement, Stopwatch, Workload

from durable.client import Client

TASK_NAME = "noop"
CLAIM_QTY = 50  # runs per claim() call
LEASE_S = 30.0


async def _spawn_batched(client: Client, queue: str, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        await client.spawn_many(
            queue, [(TASK_NAME, {"i": i}) for i in range(start, min(n, start + batch))]
        )


async def spawn_one_at_a_time(bench: Bench) -> Measurement:
    """N sequential ``spawn`` calls: one round trip and one transaction per task."""
    queue = bench.queue("spawn_one")
    async with Client(bench.dsn) as client:
        with Stopwatch() as sw:
            for i in range(bench.n):
                await client.spawn(queue, TASK_NAME, {"i": i})
    return Measurement("spawn, one at a time", bench.n, sw.seconds)


async def spawn_batched(bench: Bench) -> Measurement:
    """``spawn_many`` in batches of ``--batch``: one round trip per batch."""
    queue = bench.queue("spawn_many")
    async with Client(bench.dsn) as client:
        with Stopwatch() as sw:
            await _spawn_batched(client, queue, bench.n, bench.batch)
    return Measurement(f"spawn_many, batches of {bench.batch:,}", bench.n, sw.seconds)


async def _drain(client: Client, queue: str, consumers: int) -> int:
    """Claim and complete until the queue is empty; return how many runs were completed."""
    completed = 0

    async def consume(worker_id: str) -> None:
        nonlocal completed
        while claims := await client.claim(queue, worker_id, LEASE_S, qty=CLAIM_QTY):
            async with anyio.create_task_group() as tg:
                for claim in claims:
                    tg.start_soon(client.complete, queue, claim.run_id, None)
            completed += len(claims)

    async with anyio.create_task_group() as tg:
        for i in range(consumers):
            tg.start_soon(consume, f"bench-{i}")
    return completed


async def claim_and_complete(bench: Bench) -> Measurement:
    """Drain N pre-spawned tasks: ``--consumers`` loops of claim(qty=50), completes concurrent."""
    async with Client(bench.dsn, pool_size=bench.consumers * 2 + 2) as client:
        # Warm up on a small queue of its own: opens the pool's connections, prepares statements.
        warmup = bench.queue("warmup")
        await _spawn_batched(client, warmup, bench.consumers * CLAIM_QTY, bench.batch)
        await _drain(client, warmup, bench.consumers)

        queue = bench.queue("claim")
        await _spawn_batched(client, queue, bench.n, bench.batch)
        with Stopwatch() as sw:
            completed = await _drain(client, queue, bench.consumers)
    if completed != bench.n:  # a broken run must not print a figure
        raise RuntimeError(f"completed {completed} of {bench.n} runs on queue {queue}")
    return Measurement(
        f"claim(qty={CLAIM_QTY}) + complete, {bench.consumers} consumers", bench.n, sw.seconds
    )


WORKLOADS: list[Workload] = [spawn_one_at_a_time, spawn_batched, claim_and_complete]
