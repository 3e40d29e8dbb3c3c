"""The side tables the worker apps' tasks record into, so that a test counts executions across
processes and SIGKILLs: a step inserts into ``step_exec`` before it returns its value, a task
inserts into ``done_exec`` just before it returns, and a ``gate`` row (written by the test)
releases a task that waits on it.

The tasks write through :data:`side_pool`, a pool the worker script opens for the process's life
(``support.worker_script``); the tests read through a plain connection (:func:`side_connection`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import asyncpg

import durable
from support.database import SidePool, connection
from support.waiting import wait_for

SIDE_TABLES = """
create table step_exec (task_id uuid not null, step text not null, pid int not null,
                        at timestamptz not null default now());
create table done_exec (task_id uuid not null, run_id uuid not null, pid int not null,
                        at timestamptz not null default now());
create table gate (task_id uuid primary key);
"""

#: How often a task waiting on its gate looks for the row.
GATE_POLL_S = 0.05

#: The worker apps' side pool: their worker script opens it.
side_pool = SidePool(max_size=2)


# --- what tasks record (in the worker process) ----------------------------------------------------


async def record_step(task_id: uuid.UUID, step: str, value: Any) -> Any:
    """A step's body: note that it executed (here, in this process), then return ``value``."""
    await side_pool.pool.execute(
        "insert into step_exec (task_id, step, pid) values ($1, $2, $3)", task_id, step, os.getpid()
    )
    return value


async def gate_open(task_id: uuid.UUID) -> bool:
    row = await side_pool.pool.fetchval("select 1 from gate where task_id = $1", task_id)
    return row is not None


async def wait_gate(task_id: uuid.UUID, step: str) -> str:
    """A step's body: note that it started, then wait until the test opens the task's gate."""
    await record_step(task_id, step, None)
    while not await gate_open(task_id):  # noqa: ASYNC110 — the gate is a row another process writes
        await anyio.sleep(GATE_POLL_S)
    return "gate-opened"


async def record_done(ctx: durable.TaskContext | durable.SyncTaskContext) -> dict[str, Any]:
    """The task's last act: note which run of it finished, here."""
    pid = os.getpid()
    await side_pool.pool.execute(
        "insert into done_exec (task_id, run_id, pid) values ($1, $2, $3)",
        ctx.task_id,
        ctx.run_id,
        pid,
    )
    return {"run_id": str(ctx.run_id), "attempt": ctx.attempt, "pid": pid}


def record_done_sync(ctx: durable.SyncTaskContext) -> dict[str, Any]:
    """:func:`record_done` from a plain ``def`` handler's thread."""
    return anyio.from_thread.run(record_done, ctx)


# --- what tests read (in the test process) --------------------------------------------------------


@contextlib.asynccontextmanager
async def side_connection(
    dsn: str, *, create_tables: bool = False
) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the test's database (optionally creating the side tables)."""
    async with connection(dsn) as conn:
        if create_tables:
            await conn.execute(SIDE_TABLES)
        yield conn


async def open_gate(side: asyncpg.Connection, task_id: uuid.UUID) -> None:
    await side.execute("insert into gate (task_id) values ($1)", task_id)


async def steps_of(side: asyncpg.Connection, task_id: uuid.UUID) -> list[str]:
    """The steps the task's bodies noted, in order."""
    rows = await side.fetch("select step from step_exec where task_id = $1 order by at", task_id)
    return [r["step"] for r in rows]


async def executed(side: asyncpg.Connection, task_id: uuid.UUID) -> list[tuple[str, int]]:
    """The step bodies the task executed, in order: (step, worker pid)."""
    rows = await side.fetch(
        "select step, pid from step_exec where task_id = $1 order by at, step", task_id
    )
    return [(r["step"], r["pid"]) for r in rows]


async def done_count(side: asyncpg.Connection, task_id: uuid.UUID) -> int:
    n: int = await side.fetchval("select count(*) from done_exec where task_id = $1", task_id)
    return n


async def wait_entered(
    side: asyncpg.Connection,
    task_id: uuid.UUID,
    step: str,
    *,
    timeout: float,
    times: int = 1,
    what: str | None = None,
) -> None:
    """Wait until the task started executing ``step`` (the ``times``-th time)."""

    async def probe() -> bool | None:
        n = await side.fetchval(
            "select count(*) from step_exec where task_id = $1 and step = $2", task_id, step
        )
        return True if n >= times else None

    await wait_for(probe, timeout=timeout, what=what or f"task {task_id} to enter {step}")
