"""FastAPI: durable opens in the app's lifespan, and a request spawns in its SQLAlchemy session's
transaction, so the signup row and its welcome task are committed together, or neither is.

    python examples/fastapi_app.py              # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/fastapi_app.py

In production, serve ``api`` (``cd examples && uvicorn fastapi_app:api``) and run the tasks in a
worker process (``durable worker fastapi_app:app``). Run as a script, this file drives ``api``
in-process with httpx and runs a worker in the same event loop: a signup spawns its welcome, and
a second signup of the same address fails on the table's primary key after the spawn, which
rolls the spawn back with it: one row, one task.

Needs ``durable[sqlalchemy]``, ``fastapi`` (and ``httpx`` for this demo).
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from durable import Durable, TaskContext

app = Durable()  # Durable(dsn) > $DURABLE_DSN > the embedded server under $DURABLE_HOME

_CREATE_SIGNUPS = "create table if not exists signups (email text primary key)"
_INSERT_SIGNUP = "insert into signups (email) values (:email)"


class Signup(BaseModel):
    email: str


@app.task(name="send_welcome")
async def send_welcome(ctx: TaskContext, params: dict[str, str]) -> str:
    return f"welcome mail sent to {params['email']}"


@contextlib.asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    """durable's pool and SQLAlchemy's engine live as long as the application."""
    async with app:  # connects (and migrates) at start-up, closes at shutdown
        # the same database through SQLAlchemy on asyncpg (required by connection=)
        engine = create_async_engine("postgresql+asyncpg://" + app.client.dsn.split("://", 1)[1])
        try:
            async with engine.begin() as conn:
                await conn.execute(text(_CREATE_SIGNUPS))
            api.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
            yield
        finally:
            await engine.dispose()


api = FastAPI(lifespan=lifespan)


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    """One SQLAlchemy session per request."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as s:
        yield s


@api.post("/signups", status_code=201)
async def sign_up(signup: Signup, db: Annotated[AsyncSession, Depends(session)]) -> dict[str, Any]:
    try:
        async with db.begin():  # commits at the end of the block, rolls back on an error
            welcome = await send_welcome.spawn({"email": signup.email}, connection=db)
            await db.execute(text(_INSERT_SIGNUP), {"email": signup.email})
    except IntegrityError:  # the address signed up before: the welcome above is rolled back
        raise HTTPException(409, f"{signup.email} has signed up already") from None
    return {"email": signup.email, "welcome_task": str(welcome.task_id)}


@api.get("/tasks/{task_id}")
async def get_task(task_id: uuid.UUID) -> dict[str, Any]:
    record = await app.get_task(task_id)
    return {"state": record.state, "result": record.result}


async def main() -> None:
    transport = httpx.ASGITransport(app=api)  # calls api in-process (no socket, no lifespan)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://api") as http,
        anyio.create_task_group() as tg,
    ):
        worker = await tg.start(
            functools.partial(app.run_worker, handle_signals=False, poll_interval=30.0)
        )
        first = await http.post("/signups", json={"email": "ada@example.com"})
        print(f"POST /signups ada: {first.status_code}")
        again = await http.post("/signups", json={"email": "ada@example.com"})
        print(f"POST /signups ada again: {again.status_code} {again.json()['detail']}")
        with anyio.fail_after(10):  # the commit's NOTIFY wakes the worker (it polls every 30 s)
            done = await app.result(uuid.UUID(first.json()["welcome_task"]))
        print(f"welcome: {done.state} {done.result!r}")
        page = await app.list_tasks(task_name="send_welcome")
        print(f"send_welcome tasks: {len(page.tasks)}")
        worker.drain()


if __name__ == "__main__":
    anyio.run(main)
