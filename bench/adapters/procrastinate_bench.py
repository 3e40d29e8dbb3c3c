"""Procrastinate adapter (``pip install procrastinate==3.10.0 'psycopg[binary]'``); see
``contract.py`` for the workloads.

Every task is the async task ``noop(i)``, registered with ``app.task(name="noop")`` on
``App(connector=PsycopgConnector(conninfo=DSN, min_size=P, max_size=P))`` (P below) when a worker
runs; the enqueue-only runs keep the connector's default pool (psycopg_pool's 4 connections).

- schema: ``app.schema_manager.apply_schema_async()``.
- ``enqueue_one``: ``await noop.defer_async(i=i)`` per task.
- ``service``: ``await noop.defer_async(i=i)`` from C coroutines at once, on a pool of 10.
- ``enqueue_batch``: ``await noop.batch_defer_async(*[{"i": i}, ...])`` with ``--batch`` jobs per
  call. ``noop``, ``backlog`` and ``scale`` preload their tasks the same way, 10,000 per call,
  untimed, then run ``ANALYZE`` (untimed) as autovacuum would have by the time a real queue is
  that long (the pgqueuer adapter needs it; here it made no difference I could measure).
- ``noop`` / ``backlog``: ``app.run_worker_async(concurrency=C, install_signal_handlers=False)``
  in a task; stopped by cancelling that task, which waits for running jobs (docs: "Shutdown a
  worker").
- ``latency``: the same worker idles; ``noop.defer_async`` one at a time from the same app.
- ``backlog``: the preload is the same ``batch_defer_async``, 10,000 jobs a call (1,000 or 50,000
  a call ran no faster); the drain is timed for N jobs or ``BACKLOG_WINDOW_S``.
- ``scale``: ``--processes`` copies of ``worker`` under ``contract.run_scale``, each ready once
  its pool is open, then on its go ``run_worker_async(concurrency=C)`` with its own signal
  handlers (SIGTERM stops it gracefully); each appends the numbers it ran to its ``--out`` file.
- ``steps3``: skipped, Procrastinate has no durable steps.

Tuning: the worker runs ``concurrency=C`` (50) async sub-workers (docs: "Execute multiple jobs
at the same time"). Its discussion "Mind the size of your PostgreSQL pool" says that for short
jobs the pool should hold as many connections as the concurrency plus one (the LISTEN
connection is separate), so P = C + 1, opened up front (min_size = max_size) so the timed part
doesn't grow it; a pool of 11 ran the same noop at 60% of the speed. (A sequential enqueue loop
on such a pool runs at half speed: it hands out its 51 connections in turn, each a cold backend;
hence the default pool there.) In ``scale`` each process gets at most its share of the server's
``max_connections`` (less 10 spare), since 4 x 51 would not fit the default of 100. Other worker
options keep their defaults (LISTEN/NOTIFY on, jobs kept after completion, 5 s polling fallback).
The event loop is the stdlib's, as in the other adapters.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
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

TASK = "noop"
PRELOAD_BATCH = 10_000
STOP_S = 60.0  # for a worker to shut down
budget = Budget(base_s=120.0, per_s=100.0)  # >= 100 tasks/s


async def sql(dsn: str, statement: str) -> Any:
    """Run one statement on a connection of its own; return the first row's first value."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(statement)
        row = await cursor.fetchone() if cursor.description else None
        return row[0] if row else None


async def pool_size(args: argparse.Namespace) -> int | None:
    """The pool for a worker (None: the connector's default, for enqueueing only)."""
    if args.workload in ("enqueue_one", "enqueue_batch", "scale"):
        return None
    if args.workload == "service":
        return 10  # durable's default pool size
    size: int = args.concurrency + 1
    if args.workload == "worker":  # scale: each process's share, less its LISTEN connection
        share = (int(await sql(args.dsn, "SHOW max_connections")) - 10) // args.processes - 1
        size = max(2, min(size, share))
    return size


def make_app(dsn: str, size: int | None, hits: Hits) -> tuple[Any, Any]:
    sizes = {"min_size": size, "max_size": size} if size else {}
    connector = procrastinate.PsycopgConnector(conninfo=dsn, **sizes)
    app = procrastinate.App(connector=connector)
    return app, app.task(name=TASK)(hits.handle)


async def preload(dsn: str, task: Any, n: int) -> float:
    """Defer ``n`` jobs in batches, then ANALYZE; the jobs deferred per second."""
    start = now()
    for first in range(0, n, PRELOAD_BATCH):
        await task.batch_defer_async(
            *({"i": i} for i in range(first, min(n, first + PRELOAD_BATCH)))
        )
    rate = n / (now() - start)
    await sql(dsn, "ANALYZE")
    return rate


@asynccontextmanager
async def running(app: Any, concurrency: int) -> AsyncIterator[asyncio.Task[None]]:
    """A worker in a task; on exit, stopped by cancelling it, which waits for its running jobs
    (a graceful stop)."""
    run = app.run_worker_async(concurrency=concurrency, install_signal_handlers=False)
    worker = asyncio.create_task(run)
    try:
        yield worker
    finally:
        worker.cancel()
        done, _ = await asyncio.wait({worker}, timeout=STOP_S)
        if not done:
            raise RuntimeError(f"the worker did not stop within {STOP_S:.0f} s")
        if not worker.cancelled() and (error := worker.exception()) is not None:
            raise error


async def drain(
    app: Any, hits: Hits, concurrency: int, window_s: float = math.inf
) -> tuple[int, float]:
    """Run a worker until ``hits.target`` jobs returned or ``window_s`` passed; how many
    returned, and the seconds from its start until the last of them or the window's end."""
    return await timed_drain(hits, running(app, concurrency), budget(hits.target), window_s)


async def measure_latency(app: Any, task: Any, hits: Hits, concurrency: int) -> None:
    async with running(app, concurrency):
        samples = await probe_latency(hits, lambda i: task.defer_async(i=i))
    report_latency(samples, concurrency=concurrency, max_ms=round(max(samples) * 1000, 3))


async def run(args: argparse.Namespace) -> None:
    n, c = args.n, args.concurrency
    hits = Hits(n)
    app, task = make_app(args.dsn, await pool_size(args), hits)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        if args.workload == "enqueue_one":
            start = now()
            for i in range(n):
                await task.defer_async(i=i)
            throughput(n, now() - start)
        elif args.workload == "service":
            await task.defer_async(i=-1)  # connect, untimed
            await service(lambda i: task.defer_async(i=i), n, c)
        elif args.workload == "enqueue_batch":
            start = now()
            for first in range(0, n, args.batch):
                await task.batch_defer_async(
                    *({"i": i} for i in range(first, min(n, first + args.batch)))
                )
            throughput(n, now() - start, batch=args.batch)
        elif args.workload == "noop":
            await within(budget(n), preload(args.dsn, task, n), "enqueueing")
            throughput(*await drain(app, hits, c), concurrency=c)
        elif args.workload == "backlog":
            size = args.backlog
            rate = await within(budget(size), preload(args.dsn, task, size), "enqueueing")
            returned, seconds = await drain(app, hits, c, BACKLOG_WINDOW_S)
            report_backlog(
                returned, seconds, target=n, backlog=size, preload_per_s=rate, concurrency=c
            )
        elif args.workload == "latency":
            await measure_latency(app, task, hits, c)
        elif args.workload == "scale":
            await within(budget(n), preload(args.dsn, task, n), "enqueueing")


async def worker(args: argparse.Namespace) -> None:
    """A ``scale`` worker process: open the pool, get ready, then on its go run until SIGTERM,
    appending each task's number to --out."""
    app, _ = make_app(args.dsn, await pool_size(args), Hits(0, Path(args.out)))
    async with app.open_async():
        await asyncio.to_thread(worker_ready, args.out)
        await app.run_worker_async(concurrency=args.concurrency)


def scale(args: argparse.Namespace) -> None:
    """Preload, then time the worker processes running N tasks (``contract.run_scale``)."""
    asyncio.run(run(args))
    time_workers(__file__, args, run_s=budget(args.n), stop_s=STOP_S)


if __name__ == "__main__":
    main(run, worker, scale, skips={"steps3": "no durable steps"})
