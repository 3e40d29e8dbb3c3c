"""Absurd adapter (``pip install absurd-sdk==0.5.1 absurdctl==0.5.1``); see ``contract.py``.

Every task is ``{"i": i}`` on one queue, ``bench``, through the SDK's async client,
``AsyncAbsurd(dsn, queue_name="bench")``.

- schema: the ``absurd.sql`` that ``absurdctl init`` applies, taken from the absurdctl module
  (``absurdctl.BUNDLED_SCHEMA_SQL``, the bundled 0.5.1 schema) and executed with psycopg, so no
  ``psql`` binary is needed; then ``await app.create_queue()`` (``absurd.create_queue``).
- ``enqueue_one``: ``await app.spawn("noop", {"i": i})`` per task (one ``absurd.spawn_task``
  call, autocommit).
- ``service``: the same ``app.spawn`` from C coroutines at once, on the one ``AsyncAbsurd``.
- ``enqueue_batch``: Absurd has no batched spawn (neither the SDK nor the SQL API), and its docs
  say nothing on bulk enqueue. The adapter gives the client its own psycopg connection (a
  documented constructor form) and makes ``--batch`` ``spawn()`` calls inside one transaction:
  one commit per batch, still one round trip per task.
- preloads (``noop``, ``steps3``, ``backlog``, ``scale``; untimed): one statement per 10,000
  tasks that calls ``absurd.spawn_task``, the SQL function ``spawn()`` calls, once per task on
  the server (``unnest`` of the params, lateral), with the params and options ``spawn()`` would
  send (the SDK's ``_prepare_spawn``); then ``ANALYZE``. It ran at ~14,000 tasks/s here, against
  ~4,600/s for ``spawn()`` x 10,000 in one transaction (1M tasks: ~70 s instead of ~220 s).
- ``noop`` / ``backlog``: handler registered with ``app.register_task(name="noop")``; the worker
  is ``await app.start_worker(concurrency=C, poll_interval=0.25)`` in a task, stopped with
  ``app.stop_worker()`` (its loop ends after the batch in hand) and ``await app.close()``.
  ``backlog`` times N handlers or ``BACKLOG_WINDOW_S``, whichever ends first.
- ``steps3``: the handler runs ``await ctx.step(name, fn)`` three times (each persists a
  checkpoint through ``absurd.set_task_checkpoint_state``), each returning a small int.
- ``latency``: the same worker idles on the empty queue; a second client (a connection of its
  own) spawns one task at a time.
- ``scale``: ``--processes`` copies of ``worker`` under ``contract.run_scale``, each connected
  (``list_queues()`` answered) before it reports ready, then on its go the same
  ``start_worker`` until SIGTERM (which calls ``stop_worker``); each appends the numbers it ran
  to its ``--out`` file.

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
import json
import math
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import absurdctl
import psycopg
from absurd_sdk import AsyncAbsurd
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

QUEUE = "bench"
SCHEMA_VERSION = "0.5.1"
POLL_INTERVAL_S = 0.25  # the SDK's and the docs' default
PRELOAD_BATCH = 10_000
SPAWN_MANY = """
select count(*) from unnest(%(params)s::jsonb[]) as p(params)
cross join lateral absurd.spawn_task(%(queue)s, %(task)s, p.params, %(options)s::jsonb)
"""
STOP_S = 60.0  # for a worker to shut down
budget = Budget(base_s=600.0, per_s=10.0)  # 10 min + 10 tasks/s


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


async def preload(dsn: str, task: str, count: int) -> float:
    """Spawn tasks ``0 .. count - 1`` through ``absurd.spawn_task`` on the server, ``PRELOAD_BATCH``
    per statement, then ANALYZE; the tasks spawned per second."""
    queue, options = make_app(dsn, Hits(0))._prepare_spawn(task, queue=QUEUE)  # as spawn() does
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = now()
        for first in range(0, count, PRELOAD_BATCH):
            params = [json.dumps({"i": i}) for i in range(first, min(count, first + PRELOAD_BATCH))]
            bind = {"params": params, "queue": queue, "task": task, "options": json.dumps(options)}
            await conn.execute(SPAWN_MANY, bind)
        rate = count / (now() - start)
        await conn.execute("ANALYZE")
    return rate


def start_worker(app: Any, concurrency: int) -> asyncio.Task[None]:
    run = app.start_worker(concurrency=concurrency, poll_interval=POLL_INTERVAL_S)
    return asyncio.create_task(run)


@asynccontextmanager
async def running(app: Any, concurrency: int) -> AsyncIterator[asyncio.Task[None]]:
    """A worker in a task; on exit, ``app.stop_worker()`` (its loop ends after the batch in
    hand), awaited, and the client closed."""
    task = start_worker(app, concurrency)
    try:
        yield task
    finally:
        app.stop_worker()
        try:
            await within(STOP_S, asyncio.shield(task), "stopping the worker")
        finally:
            task.cancel()
            await app.close()


async def drain(
    dsn: str, n: int, concurrency: int, window_s: float = math.inf
) -> tuple[int, float]:
    """Run a worker until N handlers returned or ``window_s`` passed; how many returned, and the
    seconds from its start until the N-th returned or the window closed."""
    hits = Hits(n)
    worker = running(make_app(dsn, hits), concurrency)
    return await timed_drain(hits, worker, budget(n), window_s)


async def measure_latency(dsn: str, concurrency: int) -> None:
    hits = Hits()
    producer = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        async with running(make_app(dsn, hits), concurrency):
            samples = await probe_latency(
                hits, lambda i: producer.spawn("noop", {"i": i}, queue=QUEUE)
            )
    finally:
        await producer.close()
    report_latency(samples, concurrency=concurrency, poll_interval_s=POLL_INTERVAL_S)


async def enqueue_one(dsn: str, n: int) -> None:
    app = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        for i in range(n):
            await app.spawn("noop", {"i": i}, queue=QUEUE)
    finally:
        await app.close()


async def service_workload(dsn: str, n: int, c: int) -> None:
    app = AsyncAbsurd(dsn, queue_name=QUEUE)
    try:
        await app.spawn("noop", {"i": -1}, queue=QUEUE)  # connect, untimed
        await service(lambda i: app.spawn("noop", {"i": i}, queue=QUEUE), n, c)
    finally:
        await app.close()


async def run(args: argparse.Namespace) -> None:
    dsn, n, c = args.dsn, args.n, args.concurrency
    await within(120, install(dsn), "installing the schema")
    start = now()
    if args.workload == "enqueue_one":
        await within(budget(n), enqueue_one(dsn, n), "enqueueing")
        throughput(n, now() - start)
    elif args.workload == "service":
        await within(budget(n), service_workload(dsn, n, c), "enqueueing")
    elif args.workload == "enqueue_batch":
        await within(budget(n), enqueue_batched(dsn, "noop", 0, n, args.batch), "enqueueing")
        throughput(n, now() - start, batch=args.batch, how="spawn() x batch in one transaction")
    elif args.workload in ("noop", "steps3"):
        await within(budget(n), preload(dsn, args.workload, n), "enqueueing")
        throughput(*await drain(dsn, n, c), concurrency=c)
    elif args.workload == "backlog":
        size = args.backlog
        rate = await within(budget(size), preload(dsn, "noop", size), "enqueueing")
        returned, seconds = await drain(dsn, n, c, BACKLOG_WINDOW_S)
        report_backlog(returned, seconds, target=n, backlog=size, preload_per_s=rate, concurrency=c)
    elif args.workload == "latency":
        await measure_latency(dsn, c)
    elif args.workload == "scale":
        await within(budget(n), preload(dsn, "noop", n), "enqueueing")


async def worker(args: argparse.Namespace) -> None:
    """A ``scale`` worker process: connect, get ready, then on its go run until SIGTERM,
    appending each task's number to --out."""
    app = make_app(args.dsn, Hits(0, Path(args.out)))
    try:
        await app.list_queues()  # the client's connection is open
        await asyncio.to_thread(worker_ready, args.out)
        task = start_worker(app, args.concurrency)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, app.stop_worker)
        await task
    finally:
        await app.close()


def scale(args: argparse.Namespace) -> None:
    """Preload, then time the worker processes running N tasks (``contract.run_scale``)."""
    asyncio.run(run(args))  # the schema and the N tasks
    time_workers(__file__, args, run_s=budget(args.n), stop_s=STOP_S)


if __name__ == "__main__":
    main(run, worker, scale)
