"""The app the chaos suite runs in worker subprocesses, and the side tables it records into.

As a script (``cwd`` = this directory, ``DURABLE_DSN`` = the test's database)::

    python chaos_app.py [-c N] [--claim-timeout S] [--poll-interval S] [--worker-id ID]

runs ``app.run_worker(["chaos"], ...)`` (:mod:`support.worker_script`) until SIGTERM/SIGINT
(drain) or SIGKILL (the point), logging JSON lines to stderr.

Task ``chaos_steps`` runs three checkpointed steps. Each step body first inserts a row into
``step_exec`` (through a pool of its own, so the row is committed whatever happens next, and
stamped with the database clock, ``clock_timestamp()``, like the checkpoint's ``created_at``),
then sleeps 0-20 ms so that kills land inside steps, then returns a value that depends only on
the task's ``params["i"]`` and the step: :func:`step_value`. The task's last act is a ``done_exec``
row. The suite compares these rows with ``durable.checkpoints`` and ``durable.runs``.

Task ``chaos_once`` (spawned with ``max_attempts=1``) takes 0-40 ms and writes its ``done_exec``
row. Every handler's first act, before any ``await``, appends its run's id to ``$CHAOS_STARTS``:
a line there proves the handler started, written before its worker could report the start (an
attempt charged to a run without a line would be charged to a run that never started). With
``CHAOS_AHEAD_FULL=1`` a worker always claims as far ahead of its free slots as it may.

Importing this module connects to nothing.
"""

from __future__ import annotations

import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio

import durable
from durable.runtime.claim_ahead import ClaimAhead

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parents[1]))  # tests/, for `support`, when run as a script

from support.database import SidePool  # noqa: E402 — tests/ is on sys.path from here
from support.worker_script import Settings, run_worker_script  # noqa: E402

QUEUE = "chaos"
TASK_NAME = "chaos_steps"
ONCE_NAME = "chaos_once"
STEPS = ("s1", "s2", "s3")
#: A step body sleeps a random time up to this, so that a SIGKILL lands inside a step.
STEP_SLEEP_MAX_S = 0.020

SIDE_TABLES = """
create table step_exec (task_id uuid not null, step text not null, run_id uuid not null,
                        pid int not null, at timestamptz not null default clock_timestamp());
create table done_exec (task_id uuid not null, run_id uuid not null, pid int not null,
                        at timestamptz not null default clock_timestamp());
"""

app = durable.Durable(pool_size=int(os.environ.get("WORKER_POOL_SIZE", "8")))

#: The tasks' records go through this pool, which the worker script opens.
side_pool = SidePool(max_size=4)


def step_value(i: int, step: str) -> int:
    """What step ``step`` of task ``i`` returns (the suite checks the checkpoints against it)."""
    return 10 * i + STEPS.index(step) + 1


async def run_step(task_id: uuid.UUID, run_id: uuid.UUID, step: str, i: int) -> int:
    """A step's body: record this execution, take a little while, return the step's value."""
    await side_pool.pool.execute(
        "insert into step_exec (task_id, step, run_id, pid) values ($1, $2, $3, $4)",
        task_id,
        step,
        run_id,
        os.getpid(),
    )
    await anyio.sleep(random.uniform(0, STEP_SLEEP_MAX_S))
    return step_value(i, step)


def note_start(ctx: durable.TaskContext) -> None:
    """A handler's first act: its run's id in ``$CHAOS_STARTS`` (a write SIGKILL cannot undo)."""
    path = os.environ.get("CHAOS_STARTS")
    if path:
        with open(path, "a") as starts:  # a plain write, before any await: on purpose
            starts.write(f"{ctx.run_id}\n")


@app.task(name=TASK_NAME, queue=QUEUE)
async def chaos_steps(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    note_start(ctx)
    i: int = params["i"]
    values = [await ctx.step(step, run_step, ctx.task_id, ctx.run_id, step, i) for step in STEPS]
    await side_pool.pool.execute(
        "insert into done_exec (task_id, run_id, pid) values ($1, $2, $3)",
        ctx.task_id,
        ctx.run_id,
        os.getpid(),
    )
    return {"i": i, "steps": values}


@app.task(name=ONCE_NAME, queue=QUEUE)
async def chaos_once(ctx: durable.TaskContext, params: Any) -> dict[str, Any]:
    note_start(ctx)
    await anyio.sleep(random.uniform(0, 2 * STEP_SLEEP_MAX_S))
    await side_pool.pool.execute(
        "insert into done_exec (task_id, run_id, pid) values ($1, $2, $3)",
        ctx.task_id,
        ctx.run_id,
        os.getpid(),
    )
    return {"i": params["i"]}


def _claim_full_ahead(self: ClaimAhead, latency: float) -> None:
    self.runs = self.limit


if __name__ == "__main__":
    if os.environ.get("CHAOS_AHEAD_FULL") == "1":
        ClaimAhead.claimed = _claim_full_ahead  # type: ignore[method-assign]
    run_worker_script(
        app,
        defaults=Settings(queues=(QUEUE,), concurrency=8, claim_timeout=1.0, grace_period=2.0),
        side=side_pool,
        description="a worker of the chaos suite's app",
    )
