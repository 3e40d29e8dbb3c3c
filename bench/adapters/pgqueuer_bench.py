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
- ``scale``: ``--processes`` copies of ``worker``, each the same ``pgq.run`` until SIGTERM
  (which sets ``pgq.shutdown``); each appends the numbers it ran to its ``--out`` file. The clock
  starts once every process is connected (``<out>.ready``) and told to go (a line on stdin).
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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from contract import LATENCY_PAUSE_S, LATENCY_TASKS, now, parse_args, skip, throughput
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


async def preload(queries: Any, n: int) -> None:
    for start in range(0, n, PRELOAD_BATCH):
        await enqueue_many(queries, start, min(PRELOAD_BATCH, n - start))
    await queries.driver.execute("ANALYZE")  # what autovacuum would have done by now


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


async def until_done(hits: Hits, worker: asyncio.Task[None], seconds: float) -> None:
    """Wait for ``hits.done``; fail if the worker ends first or time runs out."""
    waiter = asyncio.create_task(hits.done.wait())
    done, _ = await asyncio.wait(
        {waiter, worker}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
    )
    waiter.cancel()
    if waiter not in done:
        if worker in done:
            worker.result()
            raise RuntimeError("the worker stopped before the last task ran")
        raise RuntimeError(f"{hits.count}/{hits.target} tasks ran within {seconds:.0f} s")


async def drain(conn: Any, n: int, concurrency: int, **extra: Any) -> None:
    hits = Hits(n)
    start = now()
    pgq, worker = start_worker(conn, concurrency, hits)
    try:
        await until_done(hits, worker, budget(n))
    finally:
        await stop_worker(pgq, worker)
    throughput(n, hits.done_at - start, concurrency=concurrency, **extra)


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
            await drain(conn, n, c)
        elif args.workload == "backlog":
            await within(budget(args.backlog), preload(queries, args.backlog), "enqueueing")
            await drain(conn, n, c, backlog=args.backlog)
        elif args.workload == "latency":
            await measure_latency(conn, queries, c)
        elif args.workload == "scale":
            await within(budget(n), preload(queries, n), "enqueueing")
    finally:
        await producer.close()
        await conn.close()


async def worker(args: argparse.Namespace) -> None:
    """A ``scale`` worker process: run until SIGTERM, appending each task's number to --out."""
    out = Path(args.out)
    conn = await asyncpg.connect(args.dsn)
    try:
        await ready_then_wait(out)
        pgq, task = start_worker(conn, args.concurrency, Hits(0, out))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
        await task
    finally:
        await conn.close()


def ready_file(out: Path) -> Path:
    return out.with_name(out.name + ".ready")


async def ready_then_wait(out: Path) -> None:
    """Tell ``scale`` this worker process is up, then wait for its go (the clock starts there)."""
    ready_file(out).touch()
    await asyncio.to_thread(sys.stdin.readline)


class Tally:
    """Reads the worker processes' ``--out`` files as they grow."""

    def __init__(self, paths: list[Path]) -> None:
        self.offsets = dict.fromkeys(paths, 0)
        self.seen: set[int] = set()
        self.total = 0

    def read(self) -> None:
        for path, offset in self.offsets.items():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = offset + len(complete)
            numbers = [int(x) for x in complete.split()]
            self.total += len(numbers)
            self.seen.update(numbers)


def poll(procs: list[subprocess.Popen[bytes]], done: Callable[[], bool], seconds: float) -> None:
    deadline = now() + seconds
    while not done():
        if now() > deadline:
            raise RuntimeError(f"not done within {seconds:.0f} s")
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError("a worker process exited")
        time.sleep(0.01)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        if proc.stdin is not None:
            proc.stdin.close()
    failures = []
    for proc in procs:
        try:
            code = proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            failures.append(f"pid {proc.pid} ignored SIGTERM for {STOP_S:.0f} s")
        else:
            if code not in (0, -signal.SIGTERM):  # killed by SIGTERM: before its handler was set
                failures.append(f"pid {proc.pid} exited with {code}")
    if failures:
        raise RuntimeError("worker processes: " + "; ".join(failures))


def scale(args: argparse.Namespace) -> None:
    """Preload, start the worker processes, and once all are up, time them running N tasks."""
    asyncio.run(run(args))
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        outs = [Path(tmp, f"worker{k}.txt") for k in range(args.processes)]
        for out in outs:
            out.touch()
        tally = Tally(outs)
        command = [sys.executable, __file__, "worker", "--dsn", args.dsn]
        command += ["--concurrency", str(args.concurrency), "--processes", str(args.processes)]
        procs = [
            subprocess.Popen(
                [*command, "--out", str(out)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
            )
            for out in outs
        ]
        n: int = args.n

        def ran_all() -> bool:
            tally.read()
            return len(tally.seen) >= n

        try:
            poll(procs, lambda: all(ready_file(out).exists() for out in outs), START_S)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            start = now()
            poll(procs, ran_all, budget(n))
            seconds = now() - start
        finally:
            stop_processes(procs)
        tally.read()
    throughput(
        args.n,
        seconds,
        processes=args.processes,
        concurrency=args.concurrency,
        executions=tally.total,
        duplicates=tally.total - len(tally.seen),
    )


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
