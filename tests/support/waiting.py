"""Waiting in tests: poll until something holds, against a deadline, and fail naming what was
awaited. Never a bare long sleep: each poll sleeps ``interval`` at most."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import anyio

from durable import Client, TaskRecord

T = TypeVar("T")

#: How long a poll sleeps between two probes.
INTERVAL_S = 0.05


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    interval: float = INTERVAL_S,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """Poll ``probe`` until it returns a value (not None); fail naming ``what`` on timeout.

    An exception of a type in ``tolerate`` counts as "not yet" (the faults tests poll through
    outages with ``tolerate=(DatabaseUnavailable,)``).
    """
    deadline = anyio.current_time() + timeout
    last: object = None
    while True:
        try:
            value = await probe()
        except tolerate as exc:
            value, last = None, exc
        else:
            last = value
        if value is not None:
            return value
        if anyio.current_time() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {last!r})"
            )
        await anyio.sleep(interval)


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    interval: float = INTERVAL_S,
    tolerate: tuple[type[Exception], ...] = (),
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` on timeout (``tolerate``: as
    :func:`wait_for`)."""

    async def probe() -> bool | None:
        return True if await condition() else None

    await wait_for(probe, timeout=timeout, what=what, interval=interval, tolerate=tolerate)


async def wait_task(
    client: Client,
    task_id: uuid.UUID,
    condition: Callable[[TaskRecord], bool],
    *,
    timeout: float,
    what: str,
) -> TaskRecord:
    """The task's record once ``condition`` holds for it; on timeout, the failure names
    ``what`` and the task's last state and run states."""
    last: TaskRecord | None = None

    async def probe() -> TaskRecord | None:
        nonlocal last
        last = await client.get_task(None, task_id)
        return last if condition(last) else None

    try:
        return await wait_for(probe, timeout=timeout, what=what)
    except AssertionError:
        seen = last and (str(last.state), [str(run.state) for run in last.runs])
        raise AssertionError(
            f"timed out after {timeout:g}s waiting for {what} (task {task_id}: {seen})"
        ) from None


async def wait_finished(client: Client, task_id: uuid.UUID, *, timeout: float) -> TaskRecord:
    """The task once it reached a final state."""
    return await wait_task(
        client,
        task_id,
        lambda record: record.state.finished,
        timeout=timeout,
        what=f"task {task_id} to finish",
    )


async def wait_all_finished(
    client: Client,
    task_ids: Sequence[uuid.UUID],
    *,
    timeout: float,
    tolerate: tuple[type[Exception], ...] = (),
) -> list[TaskRecord]:
    """Every task's record (in the order of ``task_ids``) once all reached a final state."""

    async def probe() -> list[TaskRecord] | None:
        records = [await client.get_task(None, task_id) for task_id in task_ids]
        return records if all(r.state.finished for r in records) else None

    return await wait_for(
        probe, timeout=timeout, what=f"{len(task_ids)} tasks to finish", tolerate=tolerate
    )
