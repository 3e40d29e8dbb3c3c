"""What each way of spawning costs, one spawn at a time (medians of 3 runs).

    .venv/bin/python bench/spawn_paths.py [--tasks N]      # $DURABLE_DSN, else the embedded server

* ``pool``: ``await task.spawn(params)``: one round trip on the app's pool (the baseline);
* ``asyncpg tx``: ``begin; spawn(connection=conn); commit`` on the caller's own connection: what
  a transactional spawn adds is the transaction's two statements;
* ``sqlalchemy tx``: a SQLAlchemy ``AsyncSession`` transaction that inserts a row and spawns,
  against the same transaction inserting the row alone (the spawn's share of the request);
* ``app.sync``: the blocking API from 1 thread and from 8 threads at once.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg
from harness import describe_server, header, scratch_database, target_server
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from durable import Durable, TaskContext

RUNS = 3


def make_app(dsn: str) -> Durable:
    app = Durable(dsn)

    @app.task(name="noop")
    async def noop(ctx: TaskContext, params: dict[str, int]) -> None:
        return None

    return app


async def rate(n: int, one: Callable[[int], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    for i in range(n):
        await one(i)
    return n / (time.perf_counter() - started)


async def median_rate(n: int, one: Callable[[int], Awaitable[Any]]) -> float:
    return statistics.median([await rate(n, one) for _ in range(RUNS)])


def threaded_rate(app: Durable, n: int, threads: int) -> float:
    noop = app.registry["noop"]
    per_thread = n // threads

    def work() -> None:
        for i in range(per_thread):
            app.sync.spawn(noop, {"i": i})

    started = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return per_thread * threads / (time.perf_counter() - started)


async def measure(dsn: str, n: int) -> list[tuple[str, float]]:
    app = make_app(dsn)
    noop = app.registry["noop"]
    rows: list[tuple[str, float]] = []
    async with app:
        rows.append(
            ("pool: await task.spawn()", await median_rate(n, lambda i: noop.spawn({"i": i})))
        )
    conn = await asyncpg.connect(dsn)
    try:

        async def in_tx(i: int) -> None:
            async with conn.transaction():
                await noop.spawn({"i": i}, connection=conn)

        rows.append(("asyncpg tx: begin, spawn, commit", await median_rate(n, in_tx)))
        await conn.execute("create table if not exists signups (id bigserial primary key, n int)")
    finally:
        await conn.close()
    engine = create_async_engine("postgresql+asyncpg://" + dsn.split("://", 1)[1])
    try:

        async def row_only(i: int) -> None:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("insert into signups (n) values (:n)"), {"n": i})

        async def row_and_spawn(i: int) -> None:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("insert into signups (n) values (:n)"), {"n": i})
                await noop.spawn({"i": i}, connection=session)

        rows.append(("sqlalchemy tx: insert a row", await median_rate(n, row_only)))
        rows.append(("sqlalchemy tx: insert a row + spawn", await median_rate(n, row_and_spawn)))
    finally:
        await engine.dispose()
    sync_app = make_app(dsn)
    for threads in (1, 8):
        rates = [
            await anyio.to_thread.run_sync(threaded_rate, sync_app, n, threads) for _ in range(RUNS)
        ]
        rows.append((f"app.sync.spawn from {threads} thread(s)", statistics.median(rates)))
    await anyio.to_thread.run_sync(sync_app.sync.close)
    return rows


async def main(n: int) -> None:
    async with target_server() as server, scratch_database(server.dsn) as dsn:
        print(header(server, await describe_server(dsn)))
        print(f"{n} spawns per run, median of {RUNS} runs")
        for label, tasks_per_s in await measure(dsn, n):
            print(f"{label:<40} {tasks_per_s:>8,.0f} /s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    anyio.run(main, parser.parse_args().tasks)
