"""``result(timeout=...)`` gives up with a ``TimeoutError`` that names the task and its state."""

from __future__ import annotations

from typing import Any

import pytest

import durable
from durable import ResultTimeout, TaskContext

pytestmark = pytest.mark.anyio


async def test_result_timeout_names_the_task_and_its_state(dsn: str) -> None:
    async with durable.Durable(dsn) as app:

        @app.task(name="slow_report")
        async def slow_report(ctx: TaskContext, params: Any) -> None:
            return None

        handle = await slow_report.spawn()
        with pytest.raises(TimeoutError) as waited:  # no worker: it stays pending
            await handle.result(timeout=0.2)
        error = waited.value
        assert isinstance(error, ResultTimeout)
        assert (error.task_id, error.task_name, error.state) == (
            handle.task_id,
            "slow_report",
            "pending",
        )
        assert str(error) == (
            f"task 'slow_report' ({handle.task_id}) still pending after 0.2s"
            " — it goes on; wait again or cancel it"
        )

        await app.client.claim("default", "w1", 30)  # its run is running now
        with pytest.raises(ResultTimeout, match=r"'slow_report' .* still running after 0\.1s"):
            await app.result(handle.task_id, timeout=0.1)
