"""The app the soak's worker processes run: ``durable worker soak_app:app -q soak``."""

from __future__ import annotations

from typing import Any

import anyio

from durable import Durable, TaskContext

app = Durable()  # $DURABLE_DSN, set by bench/soak.py


async def _work(i: int) -> int:
    await anyio.sleep(0.002)
    return i


@app.task(name="soak_task", queue="soak")
async def soak_task(ctx: TaskContext, params: Any) -> int:
    value: int = await ctx.step("work", _work, params["i"])
    return value
