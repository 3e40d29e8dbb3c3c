"""PgQueuer adapter (``pip install pgqueuer==1.6.0 asyncpg``); see ``contract.py`` for workloads.

Every task is the entrypoint ``noop`` with its number ``i`` as the payload (``b"%d" % i``).

- schema: ``Queries(AsyncpgDriver(conn)).install()``, what ``pgq install`` runs (default
  durability ``durable``: every table logged, like the other systems), then
  ``queries.optimize_autovacuum()`` (``pgq autovac``), which the docs' checklist says to run
  after installing (it also sets the queue table's fillfactor to 70).
- ``enqueue_one``: ``await queries.enqueue("noop", payload)`` per task.
- ``service``: ``await queries.enqueue("noop", payload)`` from C coroutines at once, on
  ``Queries(AsyncpgPoolDriver(pool))`` over an asyncpg pool of 10 (durable's default pool size).
- ``enqueue_batch``: ``await queries.enqueue([...entrypoints], [...payloads], [...priorities])``
  with ``--batch`` jobs per call (one array insert). ``noop``, ``backlog`` and ``scale`` preload
  their tasks the same way, 10,000 per call, untimed, then run ``ANALYZE`` (untimed) as
  autovacuum would have by the time a real queue is that long: without statistics the dequeue
  query gets a plan that reads the whole queue (50,000 queued: 2,000 tasks/s instead of 11,000).
- ``noop`` / ``backlog``: ``PgQueuer.from_asyncpg_connection(conn)``, the handler registered
  with ``pgq.entrypoint("noop")``, run by ``pgq.run(batch_size=C // 2,
  max_concurrent_tasks=C)`` in a task; stopped by setting ``pgq.shutdown`` and awaiting it.
- ``latency``: the same worker idles; a producer on a second connection enqueues one at a time.
- ``backlog``: the preload is the same array insert, 10,000 jobs a call (1,000 a call ran as
  fast; 50,000 slower); the drain is timed for N jobs or ``BACKLOG_WINDOW_S``.
- ``scale``: ``--processes`` copies of ``worker`` under ``contract.run_scale``, each connected
  before it reports ready, then the same ``pgq.run`` once told to go, until SIGTERM (which sets
  ``pgq.shutdown``); each appends the numbers it ran to its ``--out`` file.
- ``steps3``: skipped, PgQueuer has no durable steps.

Tuning, from PgQueuer's performance-tuning guide: ``max_concurrent_tasks`` is the per-process
cap on running jobs, so it is set to C (50); ``batch_size`` (jobs per dequeue round trip,
default 10) should grow for short jobs and must be at most ``max_concurrent_tasks / 2``, so it is
C // 2 = 25. The worker uses a dedicated asyncpg connection (``AsyncpgDriver``), which the docs
recommend for the ``QueueManager``; producers use a second connection. The event loop is the
stdlib's (``pgq run`` would pick uvloop; the other adapters run on the stdlib loop too).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from aio import Hits, main, probe_latency, service, timed_drain, within
from contract import (
    BACKLOG_WINDOW_S,
    Budget,
    now,
    report_backlog,
    throughput,
    time_workers,
    worker_ready,
)
from contract import latency as report_latency
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

ENTRYPOINT = "noop"
PRELOAD_BATCH = 10_000
SERVICE_POOL = 10  # durable's default pool size
STOP_S = 60.0  # for a worker to shut down
budget = Budget(base_s=120.0, per_s=100.0)  # >= 100 tasks/s


def payloads(start: int, count: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, start + count)]


async def enqueue_many(queries: Any, start: int, count: int) -> None:
    await queries.enqueue([ENTRYPOINT] * count, payloads(start, count), [0] * count)


async def preload(queries: Any, n: int) -> float:
    """Enqueue ``n`` jobs in batches, then ANALYZE; the jobs enqueued per second."""
    start = now()
    for first in range(0, n, PRELOAD_BATCH):
        await enqueue_many(queries, first, min(PRELOAD_BATCH, n - first))
    rate = n / (now() - start)
    await queries.driver.execute("ANALYZE")  # what autovacuum would have done by now
    return rate


def start_worker(conn: Any, concurrency: int, hits: Hits) -> tuple[Any, asyncio.Task[None]]:
    pgq = PgQueuer.from_asyncpg_connection(conn)

    async def noop(job: Job) -> None:
        i = int(job.payload)
        hits.started(i)
        hits.returned(i)

    pgq.entrypoint(ENTRYPOINT)(noop)
    run = pgq.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)
    return pgq, asyncio.create_task(run)


@asynccontextmanager
async def running(conn: Any, concurrency: int, hits: Hits) -> AsyncIterator[asyncio.Task[None]]:
    """A worker in a task; on exit, stopped by setting ``pgq.shutdown`` and awaiting it."""
    pgq, task = start_worker(conn, concurrency, hits)
    try:
        yield task
    finally:
        pgq.shutdown.set()
        try:
            await within(STOP_S, asyncio.shield(task), "stopping the worker")
        finally:
            task.cancel()


async def drain(
    conn: Any, n: int, concurrency: int, window_s: float = math.inf
) -> tuple[int, float]:
    """Run a worker until N jobs returned or ``window_s`` passed; how many returned, and the
    seconds from its start until the N-th returned or the window closed."""
    hits = Hits(n)
    return await timed_drain(hits, running(conn, concurrency, hits), budget(n), window_s)


async def measure_latency(conn: Any, queries: Any, concurrency: int) -> None:
    hits = Hits()
    async with running(conn, concurrency, hits):
        samples = await probe_latency(hits, lambda i: queries.enqueue(ENTRYPOINT, b"%d" % i))
    report_latency(samples, concurrency=concurrency, max_ms=round(max(samples) * 1000, 3))


async def run(args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(args.dsn)  # the worker's
    producer = await asyncpg.connect(args.dsn)
    try:
        queries = Queries(AsyncpgDriver(producer))
        await queries.install()
        await queries.optimize_autovacuum()
        n, c = args.n, args.concurrency
        if args.workload == "enqueue_one":
            start = now()
            for i in range(n):
                await queries.enqueue(ENTRYPOINT, b"%d" % i)
            throughput(n, now() - start)
        elif args.workload == "service":
            async with asyncpg.create_pool(
                args.dsn, min_size=SERVICE_POOL, max_size=SERVICE_POOL
            ) as pool:
                pooled = Queries(AsyncpgPoolDriver(pool))
                await pooled.enqueue(ENTRYPOINT, b"-1")  # connect and prepare, untimed
                await service(
                    lambda i: pooled.enqueue(ENTRYPOINT, b"%d" % i), n, c, pool=SERVICE_POOL
                )
        elif args.workload == "enqueue_batch":
            start = now()
            for first in range(0, n, args.batch):
                await enqueue_many(queries, first, min(args.batch, n - first))
            throughput(n, now() - start, batch=args.batch)
        elif args.workload == "noop":
            await within(budget(n), preload(queries, n), "enqueueing")
            throughput(*await drain(conn, n, c), concurrency=c)
        elif args.workload == "backlog":
            size = args.backlog
            rate = await within(budget(size), preload(queries, size), "enqueueing")
            returned, seconds = await drain(conn, n, c, BACKLOG_WINDOW_S)
            report_backlog(
                returned, seconds, target=n, backlog=size, preload_per_s=rate, concurrency=c
            )
        elif args.workload == "latency":
            await measure_latency(conn, queries, c)
        elif args.workload == "scale":
            await within(budget(n), preload(queries, n), "enqueueing")
    finally:
        await producer.close()
        await conn.close()


async def worker(args: argparse.Namespace) -> None:
    """A ``scale`` worker process: connect, get ready, then on its go run until SIGTERM,
    appending each task's number to --out."""
    conn = await asyncpg.connect(args.dsn)
    try:
        await asyncio.to_thread(worker_ready, args.out)
        pgq, task = start_worker(conn, args.concurrency, Hits(0, Path(args.out)))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
        await task
    finally:
        await conn.close()


def scale(args: argparse.Namespace) -> None:
    """Preload, then time the worker processes running N tasks (``contract.run_scale``)."""
    asyncio.run(run(args))
    time_workers(__file__, args, run_s=budget(args.n), stop_s=STOP_S)


if __name__ == "__main__":
    main(run, worker, scale, skips={"steps3": "no durable steps"})
