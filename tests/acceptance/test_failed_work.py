"""The failed-work view through a real worker: handler errors are classified where they are
recorded, and workers apply the app's retention rules by themselves."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from support.in_process import running_worker
from support.waiting import wait_until

import durable
from durable import ReasonClass, Retention, TaskContext, TaskFailed, TaskNotFound

pytestmark = pytest.mark.anyio

DEADLINE_S = 20.0


async def test_handler_errors_are_classified_and_old_work_is_pruned(dsn: str) -> None:
    app = durable.Durable(
        dsn,
        retention=Retention(completed=0, failed=3600),
        retention_interval=0.1,
    )

    @app.task(max_attempts=1)
    async def charge(ctx: TaskContext, params: Any) -> None:
        raise ConnectionRefusedError("gateway refused the connection")

    @app.task(max_attempts=1, discard_on=["validation"])
    async def parse(ctx: TaskContext, params: Any) -> int:
        return int(params)

    @app.task(max_attempts=1, retention=Retention(failed=0))
    async def scratch(ctx: TaskContext, params: Any) -> None:
        raise MemoryError("out of memory")

    returned: list[Any] = []

    @app.task
    async def ok(ctx: TaskContext, params: Any) -> Any:
        returned.append(params)
        return params

    async with running_worker(app):
        for task, params in ((charge, None), (parse, "x")):  # one by one: parse fails last
            handle = await task.spawn(params)
            with pytest.raises(TaskFailed):
                await handle.result(timeout=DEADLINE_S)
        # their outcomes are not awaited: retention may delete them as soon as they are written
        gone = [(await scratch.spawn()).task_id, (await ok.spawn(1)).task_id]

        # completed work and scratch's failures go (age 0); charge and parse stay an hour
        async def all_gone() -> bool:
            return all([await _gone(app, task_id) for task_id in gone])

        await wait_until(all_gone, timeout=DEADLINE_S, what="retention to delete ok and scratch")
        assert returned == [1]

        rows = await app.failed_work()
        assert [(r.task_name, r.reason_class, r.retryable) for r in rows] == [
            ("parse", ReasonClass.VALIDATION, False),
            ("charge", ReasonClass.TRANSPORT, True),
        ]
        assert rows[0].error_type == "ValueError"
        assert rows[1].error is not None
        assert rows[1].error["reason_class"] == "transport"
        assert "Traceback" in rows[1].error["traceback"]
        groups = await app.failure_groups()
        assert {(g.task_name, g.error_type, g.count) for g in groups} == {
            ("parse", "ValueError", 1),
            ("charge", "ConnectionRefusedError", 1),
        }


async def _gone(app: durable.Durable, task_id: uuid.UUID) -> bool:
    try:
        await app.get_task(task_id)
    except TaskNotFound:
        return True
    return False
