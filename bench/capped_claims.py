"""A claim when the head of a queue is capped: what it reads and how long it takes.

    python bench/capped_claims.py [--capped 10000] [--free 100] [--repeat 50]

Loads a scratch database (``$DURABLE_DSN``'s server, else the embedded one) with one queue whose
head holds ``--capped`` runs of a task name at its ``global_limit`` (1, and one of its runs
running), followed by ``--free`` runs of another name; runs VACUUM ANALYZE, then
``--repeat`` times, in a transaction rolled back after it, ``explain (analyze, buffers)`` of a
claim of 10 runs: the median shared buffers it touched (hit + read) and its execution time.
Speaks SQL only (``durable.claim(queue, worker, lease, qty)``), so that the same script measures
an older durable: run it with that checkout first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import anyio
import asyncpg
import harness

QUEUE = "bench"
_SPAWN = "select count(*) from durable.spawn_many($1, $2::jsonb)"
_EXPLAIN = (
    "explain (analyze, buffers, format json) select * from durable.claim($1, 'bench', 60, 10)"
)


async def _load(dsn: str, capped: int, free: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("select durable.set_limit($1, 'capped', 1, null, null)", QUEUE)
        items = [{"task_name": "capped", "params": i} for i in range(capped)]
        await conn.fetchval(_SPAWN, QUEUE, json.dumps(items))
        # the head's task name takes its one slot: every later claim finds it capped
        claimed = await conn.fetch("select * from durable.claim($1, 'holder', 3600, 1)", QUEUE)
        assert len(claimed) == 1, claimed
        items = [{"task_name": "free", "params": i} for i in range(free)]
        await conn.fetchval(_SPAWN, QUEUE, json.dumps(items))
        await conn.execute("vacuum analyze")
    finally:
        await conn.close()


async def _measure(dsn: str, repeat: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    buffers, times, claimed = [], [], []
    try:
        for _ in range(repeat + 3):  # three to warm the caches, not counted
            tx = conn.transaction()
            await tx.start()
            try:
                [plan] = json.loads(await conn.fetchval(_EXPLAIN, QUEUE))
            finally:
                await tx.rollback()
            top = plan["Plan"]
            buffers.append(top["Shared Hit Blocks"] + top["Shared Read Blocks"])
            times.append(plan["Execution Time"])
            claimed.append(top["Actual Rows"])
    finally:
        await conn.close()
    return {
        "buffers": statistics.median(buffers[3:]),
        "ms": statistics.median(times[3:]),
        "claimed": statistics.median(claimed[3:]),
    }


async def main(capped: int, free: int, repeat: int) -> None:
    async with harness.target_server() as server, harness.scratch_database(server.dsn) as dsn:
        await _load(dsn, capped, free)
        figures = await _measure(dsn, repeat)
    print(
        f"claim of 10 behind {capped} capped runs ({free} claimable after them):"
        f" {figures['claimed']:.0f} runs claimed, {figures['buffers']:.0f} shared buffers,"
        f" {figures['ms']:.2f} ms (median of {repeat})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capped", type=int, default=10_000)
    parser.add_argument("--free", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    anyio.run(main, args.capped, args.free, args.repeat)
