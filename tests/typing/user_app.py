"""A user's module, as a user writes it: `mypy --strict` must pass on it with durable installed
(tests/unit/test_user_typing.py checks it from outside the repository, through the py.typed
marker, and checks that the mistakes in bad_user_app.txt are caught)."""

from __future__ import annotations

from typing import TypedDict

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from durable import (
    DiscardReason,
    Durable,
    SyncTaskContext,
    TaskContext,
    TaskDiscarded,
    TaskResult,
)

app = Durable()


class Greeting(TypedDict):
    name: str


def shout(text: str, *, times: int = 1) -> str:
    return text.upper() * times


async def fetch_length(url: str) -> int:
    return len(url)


@app.task(name="greet", max_attempts=2)
async def greet(ctx: TaskContext, params: Greeting) -> str:
    loud: str = await ctx.step("shout", shout, params["name"], times=2)
    size: int = await ctx.step("fetch", fetch_length, "https://example.com")
    return f"{loud} {size}"


@app.task
def count(ctx: SyncTaskContext, params: list[int]) -> int:
    total: int = ctx.step("sum", sum, params)
    ctx.heartbeat()
    ctx.progress(100.0)
    return total


async def alert(ctx: TaskContext, error: BaseException) -> None:
    if isinstance(error, TaskDiscarded) and error.reason is not DiscardReason.CANCELLED:
        ctx.log.warning("greeting lost", params=ctx.params, failure=error.failure)


@app.task(name="greet_all", on_discard=alert)
async def greet_all(ctx: TaskContext, params: list[str]) -> int:
    for name in params:
        greeting: Greeting = {"name": name}
        await ctx.spawn(greet, greeting, name=name, on_parent_cancel="abandon")
    return len(params)


async def produce() -> tuple[str, int]:
    async with app:
        handle = await greet.spawn({"name": "ada"}, idempotency_key="greet-ada")
        outcome: TaskResult[str] = await handle.result(timeout=10)
        text: str = outcome.result
        counted = await (await count.spawn([1, 2, 3])).result()
        number: int = counted.result
        return text, number


async def produce_in_my_transaction(conn: asyncpg.Connection, session: AsyncSession) -> str:
    async with conn.transaction():
        mine = await greet.spawn({"name": "ada"}, connection=conn)
    async with session.begin():
        await count.spawn_many([[1], [2, 3]], connection=session)
        await app.spawn("greet", {"name": "bob"}, connection=session, priority=1)
    return str(mine.task_id)


def produce_blocking() -> str:
    with app.sync as sync:
        # a TypedDict's literal needs its name here: mypy infers P from the task and the params
        handle = sync.spawn(greet, Greeting(name="ada"), idempotency_key="greet-ada")
        counted: int = sync.spawn(count, [1, 2]).result().result
        text: str = handle.result(timeout=10).result + str(counted)
        by_name = sync.spawn("greet", {"name": "bob"}, queue="default")
        sync.cancel(by_name.task_id)
        return text + str(sync.get_task(handle.task_id).state)
