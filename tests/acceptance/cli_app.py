"""The app the CLI acceptance tests run ``durable worker cli_app:app`` on.

``Durable()`` without a dsn: the worker's ``--dsn`` (or ``$DURABLE_DSN``) decides the database.
"""

from __future__ import annotations

from typing import Any

from durable import Durable, TaskContext

app = Durable()

not_an_app = 42


@app.task
async def add(ctx: TaskContext, params: dict[str, int]) -> int:
    return params["a"] + params["b"]


def _prepare(name: str) -> str:
    return f"prepared {name}"


@app.task(max_attempts=1)
async def boom(ctx: TaskContext, params: dict[str, Any]) -> None:
    await ctx.step("prepare", _prepare, params.get("name", "?"))
    raise RuntimeError(f"boom on {params.get('name', '?')}")


@app.task
async def wait_for(ctx: TaskContext, params: dict[str, Any]) -> Any:
    """Reports progress, then parks until event ``params["event"]``; returns its payload."""
    await ctx.progress(50, "waiting for the event")
    payload = await ctx.await_event(params["event"])
    await ctx.progress(100)
    return payload
