"""The group-commit core with an in-memory write that answers per item: each caller gets its
own result or its own error, and the batcher counts its statements and items. (The sharing of a
write and closing are tested through the worker's GroupCommit, in test_group_commit.py.)"""

from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from durable.client.batcher import Batcher
from durable.protocol.errors import BatcherClosed, InvalidArgument

pytestmark = pytest.mark.anyio


async def test_each_caller_gets_its_own_result_or_its_own_error() -> None:
    calls: list[list[int]] = []
    held = anyio.Event()

    async def write(key: str, items: list[int]) -> list[str | Exception]:
        calls.append(items)
        if len(calls) == 1:
            await held.wait()
        return [InvalidArgument(f"bad {i}") if i % 3 == 0 else f"{key}:{i}" for i in items]

    batcher: Batcher[str, int, str] = Batcher(write, max_batch=4)
    got: dict[int, object] = {}

    async def submit(i: int) -> None:
        try:
            got[i] = await batcher.submit("q", i)
        except InvalidArgument as exc:
            got[i] = exc

    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        tg.start_soon(submit, 1)
        await wait_all_tasks_blocked()  # 1 in flight
        for i in range(2, 8):
            tg.start_soon(submit, i)
        await wait_all_tasks_blocked()
        held.set()
        await wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert calls == [[1], [2, 3, 4, 5], [6, 7]]  # queued behind the first, split at max_batch
    assert (batcher.writes, batcher.items) == (3, 7)
    for i in range(1, 8):
        if i % 3 == 0:
            assert isinstance(got[i], InvalidArgument)
            assert str(got[i]) == f"bad {i}"
        else:
            assert got[i] == f"q:{i}"
    with pytest.raises(BatcherClosed):
        await batcher.submit("q", 9)
    assert not batcher.running


def test_max_batch_must_be_positive() -> None:
    async def write(key: str, items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_batch"):
        Batcher(write, max_batch=0)
