"""A three-step task survives the crash of its worker: finished steps are not run again.

    python examples/checkpoints.py              # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/checkpoints.py

The script spawns ``fulfil_order`` and starts a worker process of itself that SIGKILLs itself
inside step 2, after step 1 was checkpointed. Its lease (``claim_timeout=1.0``) lapses a second
later; the next claim reaps the run as ``crash`` and schedules attempt 2. A second worker process
runs attempt 2: step 1 is replayed from its checkpoint, steps 2 and 3 run.

Every process uses the same database: ``$DURABLE_DSN`` when set, else the embedded server, which
the worker processes join through ``$DURABLE_HOME``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import uuid
from typing import Any

import anyio
import structlog

from durable import Durable, Fixed, TaskContext

CLAIM_TIMEOUT_S = (
    1.0  # the lease: a crashed worker's run is reaped this long after its last renewal
)

app = Durable()
crash_in_step_2 = False  # set in the first worker process only


def say(text: str) -> None:
    print(text, flush=True)  # the worker processes share this terminal: keep lines in order


def where(ctx: TaskContext) -> dict[str, Any]:
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@app.task(name="fulfil_order", queue="orders", max_attempts=3, retry=Fixed(0.2))
async def fulfil_order(ctx: TaskContext, params: dict[str, Any]) -> dict[str, Any]:
    async def reserve_stock() -> dict[str, Any]:
        say(f"  step 1 reserve_stock  runs in pid {os.getpid()}, attempt {ctx.attempt}")
        return {**where(ctx), "reserved": params["items"]}

    async def charge_card() -> dict[str, Any]:
        say(f"  step 2 charge_card    runs in pid {os.getpid()}, attempt {ctx.attempt}")
        if crash_in_step_2:
            say(f"  step 2 charge_card    pid {os.getpid()} is killed (SIGKILL) mid-step")
            os.kill(os.getpid(), signal.SIGKILL)
        return {**where(ctx), "charged": params["amount"]}

    async def ship() -> dict[str, Any]:
        say(f"  step 3 ship           runs in pid {os.getpid()}, attempt {ctx.attempt}")
        return {**where(ctx), "tracking": f"TRK-{str(ctx.task_id)[-6:]}"}

    return {
        "reserve_stock": await ctx.step("reserve_stock", reserve_stock),
        "charge_card": await ctx.step("charge_card", charge_card),
        "ship": await ctx.step("ship", ship),
    }


# --- the worker processes ------------------------------------------------------------------------


async def worker(task_id: uuid.UUID) -> None:
    """Run a worker until the task ends (the crashing one never gets that far)."""
    async with app, anyio.create_task_group() as tg:
        running = await tg.start(
            lambda task_status: app.run_worker(
                claim_timeout=CLAIM_TIMEOUT_S,
                poll_interval=0.1,
                handle_signals=False,
                task_status=task_status,
            )
        )
        note = " (it will crash in step 2)" if crash_in_step_2 else ""
        say(f"worker pid {os.getpid()} started{note}")
        await app.result(task_id, timeout=30)
        running.drain()


# --- the script ----------------------------------------------------------------------------------


async def run_worker_process(task_id: uuid.UUID, *extra: str) -> int:
    env = dict(os.environ)
    if home := app.client.embedded_home:
        env["DURABLE_HOME"] = home  # the worker joins this process's embedded server
    command = [sys.executable, __file__, "worker", str(task_id), *extra]
    with anyio.fail_after(60):
        process = await anyio.run_process(command, stdout=None, stderr=None, check=False, env=env)
    return process.returncode


async def main() -> None:
    started = time.perf_counter()
    async with app:
        home = app.client.embedded_home
        say(f"database: {f'embedded PostgreSQL, data in {home}' if home else '$DURABLE_DSN'}")
        order = f"order-{uuid.uuid4().hex[:8]}"
        handle = await app.spawn(
            "fulfil_order", {"items": ["kettle"], "amount": 39}, idempotency_key=order
        )
        say(f"spawned fulfil_order for {order}: task {handle.task_id}")

        code = await run_worker_process(handle.task_id, "--crash-in-step-2")
        killed_by = f" (killed by {signal.Signals(-code).name})" if code < 0 else ""
        say(f"first worker exited with {code}{killed_by}")
        code = await run_worker_process(handle.task_id)
        say(f"second worker exited with {code}")

        outcome = await handle.result(timeout=30)
        record = await app.get_task(handle.task_id)
        checkpoints = await app.client.get_checkpoints(record.queue, record.task_id)

    say(f"\ntask {record.task_id} {record.state} after {len(record.runs)} runs:")
    for run in record.runs:
        reason = f" ({run.failure_reason})" if run.failure_reason else ""
        say(f"  run {run.attempt} {run.state}{reason}, claimed by {run.claimed_by}")
    attempt_of = {run.run_id: run.attempt for run in record.runs}
    say("checkpoints:")
    for checkpoint in checkpoints:
        say(
            f"  {checkpoint.step_name:<14} written by run {attempt_of[checkpoint.run_id]}"
            f" in pid {checkpoint.value['pid']}"
        )
    step_1, step_3 = outcome.result["reserve_stock"], outcome.result["ship"]
    say(
        f"step 1 ran once (attempt {step_1['attempt']}, pid {step_1['pid']}); attempt"
        f" {step_3['attempt']} (pid {step_3['pid']}) replayed its checkpoint"
    )
    say(f"took {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    # The library logs through structlog and never configures it: show warnings and errors only.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if sys.argv[1:2] == ["worker"]:
        crash_in_step_2 = "--crash-in-step-2" in sys.argv
        anyio.run(worker, uuid.UUID(sys.argv[2]))
    else:
        anyio.run(main)
