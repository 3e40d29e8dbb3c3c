"""The app the soak's worker processes run: ``durable worker soak_app:app -q soak``.

Its retention comes from ``$DURABLE_SOAK_RETENTION_S`` (seconds completed tasks are kept; unset:
kept), pruned by the workers every ``$DURABLE_SOAK_RETENTION_INTERVAL_S`` seconds (default 30),
as a deployment's workers prune.
"""

from __future__ import annotations

import os
from typing import Any

import anyio

from durable import Durable, Retention, TaskContext


def _retention() -> Retention | None:
    kept = os.environ.get("DURABLE_SOAK_RETENTION_S")
    return Retention(completed=float(kept)) if kept else None


app = Durable(  # $DURABLE_DSN, set by bench/soak.py
    retention=_retention(),
    retention_interval=float(os.environ.get("DURABLE_SOAK_RETENTION_INTERVAL_S", "30")),
)


async def _work(i: int) -> int:
    await anyio.sleep(0.002)
    return i


@app.task(name="soak_task", queue="soak")
async def soak_task(ctx: TaskContext, params: Any) -> int:
    value: int = await ctx.step("work", _work, params["i"])
    return value
