"""Group commit: the writes a worker's runs make while one write is in flight share the next
statement and its commit.

Two kinds of write are batched, each by its own :class:`GroupCommit` (so a checkpoint never waits
behind a completion): completions (``complete_runs``) and checkpoints (``set_checkpoints``).
Nothing waits to fill a batch: under light load every write goes out at once; under load, writes
queue up behind the one in flight and share the next. Each item is still fenced on its own: it
comes back False when its run's lease was lost, and the rest of the batch goes on.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from durable.client import Client
from durable.errors import BatcherClosed, DurableError
from durable.heartbeat import within
from durable.store import RawJson

MAX_BATCH = 500

Item = TypeVar("Item")
#: Writes one queue's items in one statement; per item, whether its run still held its lease.
WriteBatch = Callable[[str, list[Item]], Awaitable[Sequence[bool]]]


class _Pending(Generic[Item]):
    __slots__ = ("batch", "error", "item", "queue", "written")

    def __init__(self, queue: str, item: Item, batch: _Batch) -> None:
        self.queue = queue
        self.item = item
        self.batch = batch
        self.written = False
        self.error: DurableError | None = None


class _Batch:
    """The items that will share one write; ``done`` is set once it is made (one event each)."""

    __slots__ = ("done", "size")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.size = 0


class GroupCommit(Generic[Item]):
    """``await batcher.submit(queue, item)``: True once written, False when the item's run lost
    its lease (nothing was written for it). Raises the write's error, or :class:`BatcherClosed`."""

    def __init__(self, write: WriteBatch[Item], *, timeout_s: float) -> None:
        self._write_batch = write
        self._timeout_s = timeout_s
        self._waiting: list[_Pending[Item]] = []
        self._next = _Batch()  # the batch new items join
        self._ready = anyio.Event()
        self._closed = False

    async def submit(self, queue: str, item: Item) -> bool:
        if self._closed:
            raise BatcherClosed
        if self._next.size >= MAX_BATCH:
            self._next = _Batch()
        pending = _Pending(queue, item, self._next)
        self._next.size += 1
        self._waiting.append(pending)
        self._ready.set()
        await pending.batch.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.written

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            while True:
                await self._ready.wait()
                self._ready = anyio.Event()
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                if self._waiting:
                    self._ready.set()
                if batch and batch[-1].batch is self._next:
                    self._next = _Batch()  # later items wait for the next write
                # shielded: a batch in flight is finished (or failed) even while shutting down
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
                for done in {id(p.batch): p.batch for p in batch}.values():
                    done.done.set()
        finally:
            self._closed = True
            for pending in self._waiting:
                pending.error = BatcherClosed()
            for done in {id(p.batch): p.batch for p in self._waiting}.values():
                done.done.set()
            self._waiting = []

    async def _write(self, batch: list[_Pending[Item]]) -> None:
        by_queue: dict[str, list[_Pending[Item]]] = defaultdict(list)
        for pending in batch:
            by_queue[pending.queue].append(pending)
        for queue, items in by_queue.items():
            try:
                written = await within(
                    self._timeout_s, self._write_batch(queue, [p.item for p in items])
                )
            except DurableError as exc:
                for pending in items:
                    pending.error = exc
            else:
                for pending, ok in zip(items, written, strict=True):
                    pending.written = ok


class RunWrites:
    """A worker's two batchers: ``completions`` of ``(run_id, result)`` and ``checkpoints`` of
    ``(run_id, step, value)``. Run both with :meth:`run` in the worker's task group."""

    def __init__(self, client: Client, *, timeout_s: float) -> None:
        async def complete(queue: str, items: list[tuple[uuid.UUID, RawJson]]) -> list[bool]:
            completed = await client.complete_runs(queue, items)
            return [completed.get(run_id, False) for run_id, _ in items]

        self.completions: GroupCommit[tuple[uuid.UUID, RawJson]] = GroupCommit(
            complete, timeout_s=timeout_s
        )
        self.checkpoints: GroupCommit[tuple[uuid.UUID, str, Any]] = GroupCommit(
            client.set_checkpoints, timeout_s=timeout_s
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.completions.run)
            await tg.start(self.checkpoints.run)
            task_status.started()
