"""Absurd adapter (``pip install absurd-sdk==0.5.1 absurdctl==0.5.1``); see ``contract.py``.

Every task is ``{"i": i}`` on one queue, ``bench``, through the SDK's async client,
``AsyncAbsurd(dsn, queue_name="bench")``.

- schema: the ``absurd.sql`` that ``absurdctl init`` applies, taken from the absurdctl module
  (``absurdctl.BUNDLED_SCHEMA_SQL``, the bundled 0.5.1 schema) and executed with psycopg, so no
  ``psql`` binary is needed; then ``await app.create_queue()`` (``absurd.create_queue``).
- ``enqueue_one``: ``await app.spawn("noop", {"i": i})`` per task (one ``absurd.spawn_task``
  call, autocommit).
- ``enqueue_batch``: Absurd has no batched spawn (neither the SDK nor the SQL API), and its docs
  say nothing on bulk enqueue. The adapter gives the client its own psycopg connection (a
  documented constructor form) and makes ``--batch`` ``spawn()`` calls inside one transaction:
  one commit per batch, still one round trip per task. ``noop``, ``steps3``, ``backlog`` and
  ``scale`` preload their tasks that way (10,000 per transaction, untimed).
- ``noop`` / ``backlog``: handler registered with ``app.register_task(name="noop")``; the worker
  is ``await app.start_worker(concurrency=C, poll_interval=0.25)`` in a task, stopped with
  ``app.stop_worker()`` (its loop ends after the batch in hand) and ``await app.close()``.
- ``steps3``: the handler runs ``await ctx.step(name, fn)`` three times (each persists a
  checkpoint through ``absurd.set_task_checkpoint_state``), each returning a small int.
- ``latency``: the same worker idles on the empty queue; a second client (a connection of its
  own) spawns one task at a time.
- ``scale``: ``--processes`` copies of ``worker``, each the same ``start_worker`` until SIGTERM
  (which calls ``stop_worker``); each appends the numbers it ran to its ``--out`` file.

Tuning: the async client is the one to use for concurrency (the docs' async worker takes
``concurrency``). ``concurrency=C`` (50); ``batch_size`` is left at its default, C: each claim
asks for up to C runs, which the worker runs concurrently, and it claims again once all of them
are done. ``poll_interval`` is the documented default, 0.25 s: the worker sleeps only after a
claim came back empty, so it does not bound throughput, but it is the ``latency`` figure: each
probe is spawned 5 ms after the previous one ran, just after the idle worker began a sleep, so it
waits nearly a whole interval (p50 ~250 ms). ``claim_timeout`` stays at 120 s. A client
holds one psycopg connection; the worker's tasks share it (the SDK's design).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import absurdctl
import psycopg
from absurd_sdk import AsyncAbsurd
from contract import LATENCY_PAUSE_S, LATENCY_TASKS, now, parse_args, skip, throughput
from contract import latency as report_latency

T = TypeVar("T")
QUEUE = "bench"
SCHEMA_VERSION = "0.5.1"
POLL_INTERVAL_S = 0.25  # the SDK's and the docs' default
PRELOAD_BATCH = 10_000
BACKLOG_SAMPLE = 20_000  # tasks enqueued to measure the rate before committing to the backlog
BACKLOG_LIMIT_S = 300.0  # skip ``backlog`` if enqueueing it would take longer than this
STOP_S = 60.0  # for a worker to shut down
START_S = 60.0  # for one latency task to start


def budget(tasks: int) -> float:
    """A generous time limit for enqueueing or running ``tasks`` tasks (10 min + 10 tasks/s)."""
    return 600.0 + tasks / 10


async def within(seconds: float, aw: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what}: no result after {seconds:.0f} s") from None


class Hits:
    """What the handlers report: when each awaited task started, and when the target-th returned.

    Every handler runs on the one event loop, so plain attributes are enough.
    """

    def __init__(self, target: int, out: Path | None = None) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.out = out.open("a", buffering=1) if out else None  # line-buffered: one write a task

    def started(self, i: int) -> None:
        if (future := self.waiting.pop(i, None)) is not None:
            future.set_result(now())

    def returned(self, i: int) -> None:
        if self.out is not None:
            self.out.write(f"{i}\n")
        self.count += 1
        if self.count == self.target:
            self.done_at = now()
            self.done.set()


async def _small_int(k: int) -> int:
    return k


def make_app(dsn_or_conn: Any, hits: Hits) -> Any:
    """An ``AsyncAbsurd`` client with the ``noop`` and ``steps3`` handlers registered."""
    app = AsyncAbsurd(dsn_or_conn, queue_name=QUEUE)

    async def noop(params: dict[str, Any], ctx: Any) -> None:
        hits.started(params["i"])
        hits.returned(params["i"])

    async def steps3(params: dict[str, Any], ctx: Any) -> int:
        hits.started(params["i"])
        total = 0
        for k in range(3):
            total += await ctx.step(f"step{k}", lambda k=k: _small_int(k))
        hits.returned(params["i"])
        return total

    app.register_task(name="noop")(noop)
    app.register_task(name="steps3")(steps3)
    return app


async def install(dsn: str) -> None:
    """Apply absurdctl's bundled ``absurd.sql`` (what ``absurdctl init`` runs), then the queue."""
    if absurdctl.ABSURD_SCHEMA_TARGET_VERSION != SCHEMA_VERSION:
        raise RuntimeError(f"absurdctl bundles schema {absurdctl.ABSURD_SCHEMA_TARGET_VERSION}")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(absurdctl.BUNDLED_SCHEMA_SQL)  # no parameters: simple query protocol
    app = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        await app.create_queue()
    finally:
        await app.close()


async def enqueue_batched(dsn: str, task: str, start: int, count: int, batch: int) -> None:
    """``spawn()`` tasks ``start .. start + count - 1``, ``batch`` of them per transaction."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        app = AsyncAbsurd(conn, queue_name=QUEUE)
        for first in range(start, start + count, batch):
            async with conn.transaction():
                for i in range(first, min(first + batch, start + count)):
                    await app.spawn(task, {"i": i}, queue=QUEUE)


def start_worker(app: Any, concurrency: int) -> asyncio.Task[None]:
    run = app.start_worker(concurrency=concurrency, poll_interval=POLL_INTERVAL_S)
    return asyncio.create_task(run)


async def stop_worker(app: Any, task: asyncio.Task[None]) -> None:
    app.stop_worker()
    try:
        await within(STOP_S, asyncio.shield(task), "stopping the worker")
    finally:
        task.cancel()
        await app.close()


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


async def drain(dsn: str, n: int, concurrency: int, **extra: Any) -> None:
    hits = Hits(n)
    app = make_app(dsn, hits)
    start = now()
    worker = start_worker(app, concurrency)
    try:
        await until_done(hits, worker, budget(n))
    finally:
        await stop_worker(app, worker)
    throughput(n, hits.done_at - start, concurrency=concurrency, **extra)


async def backlog(dsn: str, n: int, size: int, concurrency: int) -> None:
    sample = min(size, BACKLOG_SAMPLE)
    start = now()
    await within(budget(sample), enqueue_batched(dsn, "noop", 0, sample, PRELOAD_BATCH), "enqueue")
    rate = sample / (now() - start)
    if size / rate > BACKLOG_LIMIT_S:
        label = f"{size / 1e6:g}M" if size >= 1_000_000 else f"{size:,}"
        skip(f"{label} enqueue takes > 5 min: {rate:,.0f}/s")
        return
    rest = enqueue_batched(dsn, "noop", sample, size - sample, PRELOAD_BATCH)
    await within(budget(size), rest, "enqueueing the backlog")
    await drain(dsn, n, concurrency, backlog=size, enqueue_rate=round(rate))


async def measure_latency(dsn: str, concurrency: int) -> None:
    hits = Hits(0)
    app = make_app(dsn, hits)
    producer = AsyncAbsurd(dsn, queue_name=QUEUE)
    worker = start_worker(app, concurrency)
    samples: list[float] = []
    try:
        for i in range(-1, LATENCY_TASKS):  # task -1 warms up: the worker is up and polling
            future = hits.waiting[i] = asyncio.get_running_loop().create_future()
            sent = now()
            await producer.spawn("noop", {"i": i}, queue=QUEUE)
            started = await within(START_S, future, f"latency task {i} to start")
            if i >= 0:
                samples.append(started - sent)
            await asyncio.sleep(LATENCY_PAUSE_S)
    finally:
        await stop_worker(app, worker)
        await producer.close()
    report_latency(samples, concurrency=concurrency, poll_interval_s=POLL_INTERVAL_S)


async def enqueue_one(dsn: str, n: int) -> None:
    app = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        for i in range(n):
            await app.spawn("noop", {"i": i}, queue=QUEUE)
    finally:
        await app.close()


async def run(args: argparse.Namespace) -> None:
    dsn, n, c = args.dsn, args.n, args.concurrency
    await within(120, install(dsn), "installing the schema")
    start = now()
    if args.workload == "enqueue_one":
        await within(budget(n), enqueue_one(dsn, n), "enqueueing")
        throughput(n, now() - start)
    elif args.workload == "enqueue_batch":
        await within(budget(n), enqueue_batched(dsn, "noop", 0, n, args.batch), "enqueueing")
        throughput(n, now() - start, batch=args.batch, how="spawn() x batch in one transaction")
    elif args.workload in ("noop", "steps3"):
        task = args.workload
        await within(budget(n), enqueue_batched(dsn, task, 0, n, PRELOAD_BATCH), "enqueueing")
        await drain(dsn, n, c)
    elif args.workload == "backlog":
        await backlog(dsn, n, args.backlog, c)
    elif args.workload == "latency":
        await measure_latency(dsn, c)
    elif args.workload == "scale":
        await within(budget(n), enqueue_batched(dsn, "noop", 0, n, PRELOAD_BATCH), "enqueueing")


async def worker(args: argparse.Namespace) -> None:
    """A ``scale`` worker process: run until SIGTERM, appending each task's number to --out."""
    app = make_app(args.dsn, Hits(0, Path(args.out)))
    task = start_worker(app, args.concurrency)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, app.stop_worker)
    try:
        await task
    finally:
        await app.close()


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


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
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
    asyncio.run(run(args))  # the schema and the N tasks
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        outs = [Path(tmp, f"worker{k}.txt") for k in range(args.processes)]
        for out in outs:
            out.touch()
        tally = Tally(outs)
        command = [sys.executable, __file__, "worker", "--dsn", args.dsn]
        command += ["--concurrency", str(args.concurrency)]
        start = now()
        procs = [
            subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL)
            for out in outs
        ]
        first = 0.0
        try:
            deadline = start + budget(args.n)
            while len(tally.seen) < args.n:
                if now() > deadline:
                    raise RuntimeError(f"{len(tally.seen)}/{args.n} tasks ran in time")
                if any(proc.poll() is not None for proc in procs):
                    raise RuntimeError("a worker process exited early")
                time.sleep(0.01)
                tally.read()
                if not first and tally.total:
                    first = now() - start  # the workers' start-up, inside the clock
            seconds = now() - start
        finally:
            stop_processes(procs)
        tally.read()
    throughput(
        args.n,
        seconds,
        processes=args.processes,
        concurrency=args.concurrency,
        first_task_s=round(first, 3),
        executions=tally.total,
        duplicates=tally.total - len(tally.seen),
    )


def main() -> None:
    args = parse_args()
    if args.workload == "worker":
        asyncio.run(worker(args))
    elif args.workload == "scale":
        scale(args)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
