"""durable's adapter for ``bench/run.py`` (the contract: ``contract.py``).

API per workload: ``enqueue_one`` awaits ``task.spawn(params)`` N times; ``service`` awaits it
from C coroutines at once on ``Durable(dsn)``'s default pool (10); ``enqueue_batch`` calls
``app.client.spawn_many(queue, items)``; the worker workloads run ``app.run_worker([queue],
concurrency=C)`` in this process and ``ctx.step`` for ``steps3``; ``scale`` starts worker processes
that each run ``app.run_worker`` (ready once connected: ``client.queue_counts()`` answered).
Defaults everywhere (lease 60 s, poll 2 s, LISTEN/NOTIFY on). Preloads are ``spawn_many`` calls
of 5,000 tasks, one statement each (1,000 to 20,000 a call ran at the same ~43,000 tasks/s).

Two workloads are durable's own: ``heartbeat`` counts the lease-renewal statements one worker
sends while it holds C long runs (``durable.extend_claims`` calls, from ``pg_stat_user_functions``),
and every worker workload also reports the commits per task (``pg_stat_database.xact_commit``)
and the protocol calls per task, so each figure can be read against pgbench's commit ceiling.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TextIO

import anyio
import asyncpg
import structlog
from contract import (
    BACKLOG_WINDOW_S,
    LATENCY_PAUSE_S,
    LATENCY_TASKS,
    latency,
    now,
    parse_args,
    report,
    report_backlog,
    report_scale,
    run_scale,
    service_result,
    throughput,
    worker_ready,
)

from durable import Durable, TaskContext, Worker

QUEUE = "bench"
SPAWN_BATCH = 5_000  # spawn_many batch for untimed preloads
HEARTBEAT_SECONDS = 10.0
HEARTBEAT_LEASE_S = 3.0  # leases renewed every lease/3 = 1 s


class Counter:
    """Handlers count here; ``reached`` is set when the N-th returns."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.done = 0
        self.reached = anyio.Event()
        self.started: dict[int, float] = {}

    def finish(self) -> None:
        self.done += 1
        if self.done == self.n:
            self.reached.set()


def make_app(dsn: str, counter: Counter, record: Callable[[int], None] | None = None) -> Durable:
    app = Durable(dsn, pool_size=20)

    @app.task(name="noop", queue=QUEUE)
    async def noop(ctx: TaskContext, params: dict[str, int]) -> None:
        counter.started.setdefault(params["i"], now())
        if record is not None:
            record(params["i"])
        counter.finish()

    @app.task(name="steps3", queue=QUEUE)
    async def steps3(ctx: TaskContext, params: dict[str, int]) -> int:
        total = 0
        for name in ("a", "b", "c"):
            total += await ctx.step(name, one)
        counter.finish()
        return total

    @app.task(name="hold", queue=QUEUE)
    async def hold(ctx: TaskContext, params: dict[str, int]) -> None:
        counter.finish()
        await anyio.sleep(HEARTBEAT_SECONDS * 3)

    return app


async def one() -> int:
    return 1


async def spawn_batches(app: Durable, task: str, count: int, batch: int) -> None:
    """Spawn tasks ``0 .. count-1`` with one ``spawn_many`` per ``batch`` of them."""
    for first in range(0, count, batch):
        size = min(count, first + batch) - first
        await app.client.spawn_many(QUEUE, [(task, {"i": first + i}) for i in range(size)])


async def preload(dsn: str, task: str, count: int) -> float:
    """Spawn ``count`` tasks in batches, then ANALYZE (both untimed: see contract.py); the
    spawns per second."""
    async with Durable(dsn) as app:
        started = now()
        await spawn_batches(app, task, count, SPAWN_BATCH)
        rate = count / (now() - started)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("analyze")
    finally:
        await conn.close()
    return rate


@contextlib.asynccontextmanager
async def worker_running(
    app: Durable, concurrency: int, lease_s: float = 60.0
) -> AsyncIterator[Worker]:
    """One worker in this process, started on the way in and drained on the way out."""
    async with anyio.create_task_group() as tg:
        worker: Worker = await tg.start(
            lambda task_status: app.run_worker(
                [QUEUE],
                concurrency=concurrency,
                claim_timeout=lease_s,
                handle_signals=False,
                task_status=task_status,
            )
        )
        try:
            yield worker
        finally:
            worker.drain(force=True)


async def drain_through_worker(
    app: Durable, counter: Counter, concurrency: int, window_s: float = math.inf
) -> tuple[int, float]:
    """Run one worker until the counter is reached, or ``window_s`` after its start; the
    handlers returned by then and the seconds from its start."""
    started = now()
    deadline = anyio.current_time() + window_s
    async with worker_running(app, concurrency):
        with anyio.CancelScope(deadline=deadline):
            await counter.reached.wait()
        returned = counter.n if counter.reached.is_set() else counter.done
        seconds = now() - started
    return returned, seconds


# --- server counters -------------------------------------------------------------------------


#: Functions whose server time per call the no-op and steps workloads report (``ms_per_call``).
TIMED_FUNCTIONS = ("claim", "complete_runs")


async def counters(dsn: str) -> dict[str, float]:
    """Commits in this database, calls of durable's functions, and the total time (ms) of
    :data:`TIMED_FUNCTIONS` as ``<name>_ms`` (flushed by closed sessions)."""
    await anyio.sleep(0.6)  # sessions that just closed publish their counters on exit
    conn = await asyncpg.connect(dsn)
    try:
        commits = await conn.fetchval(
            "select xact_commit from pg_stat_database where datname = current_database()"
        )
        rows = await conn.fetch(
            "select funcname, calls, total_time from pg_stat_user_functions"
            " where schemaname = 'durable'"
        )
    finally:
        await conn.close()
    times = {
        f"{r['funcname']}_ms": r["total_time"] for r in rows if r["funcname"] in TIMED_FUNCTIONS
    }
    return {"commits": commits, **{r["funcname"]: r["calls"] for r in rows}, **times}


async def track_functions(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        name = await conn.fetchval("select current_database()")
        await conn.execute(f"alter database \"{name}\" set track_functions = 'pl'")
    finally:
        await conn.close()


def per_call(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Server time per call (ms) of each of :data:`TIMED_FUNCTIONS` called between the two."""
    return {
        name: round(
            (after[f"{name}_ms"] - before.get(f"{name}_ms", 0))
            / (after[name] - before.get(name, 0)),
            3,
        )
        for name in TIMED_FUNCTIONS
        if f"{name}_ms" in after and after[name] != before.get(name, 0)
    }


def per_task(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {
        key: round((after.get(key, 0) - before.get(key, 0)) / max(n, 1), 3)
        for key in sorted(after)
        if after.get(key, 0) != before.get(key, 0)
    }


async def measured(
    dsn: str, run: Callable[[], Awaitable[tuple[int, float]]]
) -> tuple[int, float, dict[str, Any]]:
    """Run a worker workload between two counter readings: the handlers it timed, its seconds,
    and the cost per timed task (``commits_per_task``, ``calls_per_task``)."""
    await track_functions(dsn)
    before = await counters(dsn)
    returned, seconds = await run()
    after = await counters(dsn)
    timed = per_call(before, after)
    calls = {key: value for key, value in after.items() if not key.endswith("_ms")}
    per = per_task(before, calls, returned)
    cost = {"commits_per_task": per.pop("commits", None), "calls_per_task": per}
    return returned, seconds, {**cost, "ms_per_call": timed}


# --- workloads ---------------------------------------------------------------------------------


async def enqueue_one(dsn: str, n: int) -> None:
    counter = Counter(n)
    app = make_app(dsn, counter)
    async with app:
        await app.client.spawn(QUEUE, "noop", {"i": -1})  # connect and prepare, untimed
        task = app.registry["noop"]
        started = now()
        for i in range(n):
            await task.spawn({"i": i})
        throughput(n, now() - started)


async def service(dsn: str, n: int, concurrency: int) -> None:
    """C coroutines, each awaiting one spawn at a time, N spawns in all (contract.py)."""
    app = Durable(dsn)  # the default pool, 10 connections
    app.task(name="noop", queue=QUEUE)(noop_handler)
    numbers = iter(range(n))
    samples: list[float] = []

    async def caller() -> None:
        for i in numbers:  # shared: each number once, whichever coroutine is free
            sent = now()
            await task.spawn({"i": i})
            samples.append(now() - sent)

    async with app:
        task = app.registry["noop"]
        await task.spawn({"i": -1})  # connect and prepare, untimed
        started = now()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(caller)
        seconds = now() - started
        statements, batched, _ = app.client.spawn_batches
    service_result(
        n,
        seconds,
        samples,
        concurrency=concurrency,
        statements=statements + (n - batched),
        batched=batched,
    )


async def noop_handler(ctx: TaskContext, params: dict[str, int]) -> None:
    return None


async def enqueue_batch(dsn: str, n: int, batch: int) -> None:
    app = make_app(dsn, Counter(n))
    async with app:
        await app.client.spawn_many(QUEUE, [("noop", {"i": -1})])
        started = now()
        await spawn_batches(app, "noop", n, batch)
        throughput(n, now() - started, batch=batch)


async def through_worker(dsn: str, task: str, n: int, concurrency: int) -> None:
    counter = Counter(n)
    await preload(dsn, task, n)

    async def run() -> tuple[int, float]:
        async with make_app(dsn, counter) as app:
            return await drain_through_worker(app, counter, concurrency)

    returned, seconds, cost = await measured(dsn, run)
    throughput(returned, seconds, **cost)


async def backlog(dsn: str, n: int, concurrency: int, size: int) -> None:
    counter = Counter(n)
    rate = await preload(dsn, "noop", size)

    async def run() -> tuple[int, float]:
        async with make_app(dsn, counter) as app:
            return await drain_through_worker(app, counter, concurrency, BACKLOG_WINDOW_S)

    returned, seconds, cost = await measured(dsn, run)
    report_backlog(returned, seconds, target=n, backlog=size, preload_per_s=rate, **cost)


async def latency_workload(dsn: str, concurrency: int) -> None:
    counter = Counter(LATENCY_TASKS)
    samples: list[float] = []
    async with make_app(dsn, counter) as app, worker_running(app, concurrency):
        task = app.registry["noop"]
        await anyio.sleep(0.5)  # the worker is listening and idle
        for i in range(LATENCY_TASKS):
            before = now()
            await task.spawn({"i": i})
            while i not in counter.started:  # noqa: ASYNC110 — the handler sets it
                await anyio.sleep(0.0002)
            samples.append(counter.started[i] - before)
            await anyio.sleep(LATENCY_PAUSE_S)
    latency(samples, wakeup="LISTEN/NOTIFY (poll every 2 s as a fallback)")


async def heartbeat(dsn: str, concurrency: int) -> None:
    """One worker holds C runs for HEARTBEAT_SECONDS; count the renewal statements it sent."""
    await track_functions(dsn)
    counter = Counter(concurrency)
    await preload(dsn, "hold", concurrency)
    before = await counters(dsn)
    async with make_app(dsn, counter) as app, worker_running(app, concurrency, HEARTBEAT_LEASE_S):
        await counter.reached.wait()
        await anyio.sleep(HEARTBEAT_SECONDS)
    after = await counters(dsn)
    calls = after.get("extend_claims", 0) - before.get("extend_claims", 0)
    intervals = HEARTBEAT_SECONDS / (HEARTBEAT_LEASE_S / 3)
    report(
        value=calls / intervals,
        unit="statements/interval",
        extend_claims_calls=calls,
        held_runs=concurrency,
        seconds=HEARTBEAT_SECONDS,
        interval_s=HEARTBEAT_LEASE_S / 3,
    )


# --- scale: worker processes -------------------------------------------------------------------


async def scale(dsn: str, n: int, concurrency: int, processes: int) -> None:
    await preload(dsn, "noop", n)
    argv = [sys.executable, __file__, "worker", "--dsn", dsn, "--concurrency", str(concurrency)]
    run = await anyio.to_thread.run_sync(partial(run_scale, argv, processes, n))
    report_scale(run, concurrency=concurrency)


async def worker_process(dsn: str, concurrency: int, out: str, sink: TextIO) -> None:
    """Run until SIGTERM, writing each executed task's number to ``sink``."""

    def record(i: int) -> None:
        sink.write(f"{i}\n")

    app = make_app(dsn, Counter(sys.maxsize), record=record)
    async with app:
        await app.client.queue_counts()  # connected
        await anyio.to_thread.run_sync(worker_ready, out)
        await app.run_worker([QUEUE], concurrency=concurrency)


async def main() -> None:
    args = parse_args(extra=("heartbeat",))
    dsn, n, c = args.dsn, args.n, args.concurrency
    match args.workload:
        case "enqueue_one":
            await enqueue_one(dsn, n)
        case "enqueue_batch":
            await enqueue_batch(dsn, n, args.batch)
        case "service":
            await service(dsn, n, c)
        case "noop" | "steps3":
            await through_worker(dsn, args.workload, n, c)
        case "latency":
            await latency_workload(dsn, c)
        case "backlog":
            await backlog(dsn, n, c, args.backlog)
        case "scale":
            await scale(dsn, n, c, args.processes)
        case "worker":
            with open(args.out, "a", buffering=1) as sink:  # noqa: ASYNC230 — once, at start
                await worker_process(dsn, c, args.out, sink)
        case "heartbeat":
            await heartbeat(dsn, c)


if __name__ == "__main__":
    structlog.configure(  # warnings only; cached loggers, as in production (configure_logging)
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    anyio.run(main)
