"""What one claim costs the server: alone, and in a drain-like loop.

    python bench/claim_cost.py [--runs 60000] [--repeat 250]

Loads a scratch database (``$DURABLE_DSN``'s server, else the embedded one) with ``--runs``
pending no-op runs and takes statistics while they are all pending (as a fresh backlog has).
Then, on one connection, each statement committed:

* ``alone``: ``--repeat`` claims of 100 runs;
* ``drain``: ``--repeat`` rounds of a claim of 40 runs into 20 free slots, reporting the starts
  of the previous claim's 15 runs after its first 10 (those it claimed ahead, where the protocol
  takes start reports), followed by ``complete_runs`` of the previous claim's runs.

Prints the median execution time of the claims and of ``complete_runs`` (``explain (analyze)``,
so the server's time, without the round trip). Speaks SQL only, so the same script measures an
older durable: run it with that checkout first on ``PYTHONPATH`` (a protocol without start
reports claims in the drain loop without them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid

import anyio
import asyncpg
import harness

QUEUE = "bench"
_SPAWN = "select count(*) from durable.spawn_many($1, $2::jsonb)"
_HAS_STARTS = """
select exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                where n.nspname = 'durable' and p.proname = 'claim'
                  and 'p_started' = any(p.proargnames))
"""
_ALONE = """
explain (analyze, format json) select run_id from durable.claim($1, 'bench', 60, 100)
"""
_DRAIN_OLD = """
explain (analyze, format json) select run_id from durable.claim($1, 'bench', 60, 40)
"""
_DRAIN = """
explain (analyze, format json)
select run_id from durable.claim($1, 'bench', 60, 40, null, $2::uuid[], null, 20)
"""
_COMPLETE = """
explain (analyze, format json)
select * from durable.complete_runs($1, $2::uuid[], $3::jsonb[])
"""
# the runs the last claim took: 'bench''s running runs with the latest start
_CLAIMED = """
select run_id from durable.runs
 where state = 'running' and claimed_by = 'bench'
   and started_at = (select max(started_at) from durable.runs
                      where state = 'running' and claimed_by = 'bench')
 order by priority desc, run_id
"""


async def _load(dsn: str, runs: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for start in range(0, runs, 5_000):
            items = [{"task_name": "noop", "params": i} for i in range(start, start + 5_000)]
            await conn.fetchval(_SPAWN, QUEUE, json.dumps(items[: runs - start]))
        await conn.execute("vacuum analyze")
    finally:
        await conn.close()


async def _timed(conn: asyncpg.Connection, explain: str, *args: object) -> float:
    """The server time (ms) of one autocommitted statement, from its ``explain (analyze)``."""
    [plan] = json.loads(await conn.fetchval(explain, *args))
    return float(plan["Execution Time"])


async def _measure(dsn: str, repeat: int) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    alone: list[float] = []
    claims: list[float] = []
    completes: list[float] = []
    try:
        starts = await conn.fetchval(_HAS_STARTS)
        alone.extend([await _timed(conn, _ALONE, QUEUE) for _ in range(repeat)])
        previous: list[uuid.UUID] = []
        for _ in range(repeat):
            if starts:
                claims.append(await _timed(conn, _DRAIN, QUEUE, previous[10:25]))
            else:
                claims.append(await _timed(conn, _DRAIN_OLD, QUEUE))
            current = [row["run_id"] for row in await conn.fetch(_CLAIMED)]
            results = ["null"] * len(previous)
            completes.append(await _timed(conn, _COMPLETE, QUEUE, previous, results))
            previous = current
    finally:
        await conn.close()
    return {
        "alone": statistics.median(alone),
        "drain_claim": statistics.median(claims),
        "drain_complete": statistics.median(completes),
    }


async def main(runs: int, repeat: int) -> None:
    async with harness.target_server() as server, harness.scratch_database(server.dsn) as dsn:
        await _load(dsn, runs)
        figures = await _measure(dsn, repeat)
    print(
        f"claim of 100, alone: {figures['alone']:.3f} ms; drain loop: claim of 40"
        f" {figures['drain_claim']:.3f} ms, complete_runs {figures['drain_complete']:.3f} ms"
        f" (server time, medians of {repeat}, {runs} runs pending at the start)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=250)
    args = parser.parse_args()
    anyio.run(main, args.runs, args.repeat)
