"""PgQueuer adapter (``pip install pgqueuer==1.6.0 asyncpg``); see ``contract.py`` for workloads.

Every task is the entrypoint ``noop`` with its number ``i`` as the payload (``b"%d" % i``).

- schema: ``Queries(AsyncpgDriver(conn)).install()``, what ``pgq install`` runs (default
  durability ``durable``: every table logged, like the other systems), then
  ``queries.optimize_autovacuum()`` (``pgq autovac``), which the docs' checklist says to run
  after installing (it also sets the queue table's fillfactor to 70).
- ``enqueue_one``: ``await queries.enqueue("noop", payload)`` per task.
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
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from contract import (
    BACKLOG_WINDOW_S,
    LATENCY_PAUSE_S,
    LATENCY_TASKS,
    now,
    parse_args,
    report_backlog,
    report_scale,
    run_scale,
    skip,
    throughput,
    worker_ready,
)
from contract import latency as report_latency
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

T = TypeVar("T")
ENTRYPOINT = "noop"
PRELOAD_BATCH = 10_000
STOP_S = 60.0  # for a worker to shut down
START_S = 60.0  # for one latency task to start


def budget(tasks: int) -> float:
    """A generous time limit for enqueueing or running ``tasks`` tasks (>= 100 tasks/s)."""
    return 120.0 + tasks / 100


async def within(seconds: float, aw: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what}: no result after {seconds:.0f} s") from None


class Hits:
    """What the handler reports: when each awaited task started, and when the target-th returned."""

    def __init__(self, target: int, out: Path | None = None) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.out = out.open("a", buffering=1) if out else None  # line-buffered: one write a task

    async def handle(self, job: Job) -> None:
        started = now()
        i = int(job.payload)
        if (future := self.waiting.pop(i, None)) is not None:
            future.set_result(started)
        if self.out is not None:
            self.out.write(f"{i}\n")
        self.count += 1
        if self.count == self.target:
            self.done_at = now()
            self.done.set()


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
    pgq.entrypoint(ENTRYPOINT)(hits.handle)
    run = pgq.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)
    return pgq, asyncio.create_task(run)


async def stop_worker(pgq: Any, task: asyncio.Task[None]) -> None:
    pgq.shutdown.set()
    try:
        await within(STOP_S, asyncio.shield(task), "stopping the worker")
    finally:
        task.cancel()


async def until_done(
    hits: Hits, worker: asyncio.Task[None], seconds: float, window: bool = False
) -> bool:
    """Wait for ``hits.done``; fail if the worker ends first. False if ``seconds`` ran out and
    they are a ``window``; else that fails too."""
    waiter = asyncio.create_task(hits.done.wait())
    done, _ = await asyncio.wait(
        {waiter, worker}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
    )
    waiter.cancel()
    if waiter in done:
        return True
    if worker in done:
        worker.result()
        raise RuntimeError("the worker stopped before the last task ran")
    if window:
        return False
    raise RuntimeError(f"{hits.count}/{hits.target} tasks ran within {seconds:.0f} s")


async def drain(
    conn: Any, n: int, concurrency: int, window_s: float = math.inf
) -> tuple[int, float]:
    """Run a worker until N jobs returned or ``window_s`` passed; how many returned, and the
    seconds from its start until the N-th returned or the window closed."""
    hits = Hits(n)
    start = now()
    pgq, worker = start_worker(conn, concurrency, hits)
    try:
        if await until_done(hits, worker, min(window_s, budget(n)), window_s < math.inf):
            returned, seconds = n, hits.done_at - start
        else:
            returned, seconds = hits.count, now() - start
    finally:
        await stop_worker(pgq, worker)
    return returned, seconds


async def measure_latency(conn: Any, queries: Any, concurrency: int) -> None:
    hits = Hits(0)
    pgq, worker = start_worker(conn, concurrency, hits)
    samples: list[float] = []
    try:
        for i in range(-1, LATENCY_TASKS):  # task -1 warms up: the worker is up and listening
            future = hits.waiting[i] = asyncio.get_running_loop().create_future()
            sent = now()
            await queries.enqueue(ENTRYPOINT, b"%d" % i)
            started = await within(START_S, future, f"latency task {i} to start")
            if i >= 0:
                samples.append(started - sent)
            await asyncio.sleep(LATENCY_PAUSE_S)
    finally:
        await stop_worker(pgq, worker)
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
                returned,
                seconds,
                window_hit=returned < n,
                backlog=size,
                preload_per_s=rate,
                concurrency=c,
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
    argv = [sys.executable, __file__, "worker", "--dsn", args.dsn]
    argv += ["--concurrency", str(args.concurrency), "--processes", str(args.processes)]
    result = run_scale(argv, args.processes, args.n, run_s=budget(args.n), stop_s=STOP_S)
    report_scale(result, concurrency=args.concurrency)


def main() -> None:
    args = parse_args()
    if args.workload == "steps3":
        skip("no durable steps")
    elif args.workload == "worker":
        asyncio.run(worker(args))
    elif args.workload == "scale":
        scale(args)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
