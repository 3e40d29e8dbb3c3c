"""Group commit: the writes a worker's runs make while one write is in flight share the next
statement and its commit.

Two kinds of write are batched, each by its own :class:`GroupCommit` (so a checkpoint never waits
behind a completion): completions (``complete_runs``) and checkpoints (``set_checkpoints``).
Nothing waits to fill a batch: under light load every write goes out at once; under load, writes
queue up behind the one in flight and share the next. Each item is still fenced on its own: it
comes back False when its run's lease was lost, and the rest of the batch goes on.

A writer either awaits its item (:meth:`GroupCommit.submit`) or hands it over with a callback
(:meth:`GroupCommit.hand_over`: a short task's runner goes on to its next run at once). A batcher
that is closing writes what it was given before it stops.

A write that meets an unreachable database (a dropped connection, a restart) is tried again
with backoff for the items whose run's lease surely holds (``lease_left``); the others get the
error. Repeating a write is safe: an item that committed before the answer was lost is refused by
its fence (False) or changes nothing (a checkpoint is written once).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from durable.client import Client
from durable.protocol.codec import RawJson
from durable.protocol.errors import BatcherClosed, DatabaseUnavailable, DurableError
from durable.protocol.log import get_logger
from durable.runtime.deadlines import ReconnectBackoff, within

log = get_logger()

MAX_BATCH = 500

Item = TypeVar("Item")
#: Writes one queue's items in one statement; per item, whether its run still held its lease.
WriteBatch = Callable[[str, list[Item]], Awaitable[Sequence[bool]]]
#: Told how a handed-over item's write went: written (False: the lease was lost), or the error.
OnWritten = Callable[[bool, DurableError | None], None]
#: Seconds the lease of an item's run surely holds still (how long its write may be retried).
LeaseLeft = Callable[[], float]


def _no_lease() -> float:
    return 0.0


class _Pending(Generic[Item]):
    __slots__ = ("error", "item", "lease_left", "on_written", "queue", "written")

    def __init__(
        self,
        queue: str,
        item: Item,
        on_written: OnWritten | None = None,
        lease_left: LeaseLeft = _no_lease,
    ) -> None:
        self.queue = queue
        self.item = item
        self.on_written = on_written
        self.lease_left = lease_left
        self.written = False
        self.error: DurableError | None = None


class _Batch(Generic[Item]):
    """The items that will share one write (one statement per queue and MAX_BATCH items), and
    the one event that tells all of their writers it was made."""

    __slots__ = ("done", "items")

    def __init__(self) -> None:
        self.items: list[_Pending[Item]] = []
        self.done = anyio.Event()


class GroupCommit(Generic[Item]):
    """``await batcher.submit(queue, item)``: True once written, False when the item's run lost
    its lease (nothing was written for it). Raises the write's error, or :class:`BatcherClosed`."""

    def __init__(self, write: WriteBatch[Item], *, timeout_s: float) -> None:
        self._write_batch = write
        self._timeout_s = timeout_s
        self._next: _Batch[Item] = _Batch()  # the batch new items join
        self._ready = anyio.Event()
        self._closed = False

    async def submit(self, queue: str, item: Item, lease_left: LeaseLeft = _no_lease) -> bool:
        pending = _Pending(queue, item, lease_left=lease_left)
        batch = self._join(pending)
        if batch is None:
            raise BatcherClosed
        await batch.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.written

    def hand_over(
        self, queue: str, item: Item, on_written: OnWritten, lease_left: LeaseLeft = _no_lease
    ) -> bool:
        """Queue ``item`` for the next write without waiting for it: ``on_written`` is called
        (in the batcher's task) once it is written or has failed. False when the batcher is
        closed: nothing was queued."""
        return self._join(_Pending(queue, item, on_written, lease_left)) is not None

    def _join(self, pending: _Pending[Item]) -> _Batch[Item] | None:
        """Add ``pending`` to the batch the next write takes; None when the batcher is closed."""
        if self._closed:
            return None
        batch = self._next
        batch.items.append(pending)
        self._ready.set()
        return batch

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            while True:
                await self._ready.wait()
                self._ready = anyio.Event()
                batch, self._next = self._next, _Batch()  # later items wait for the next write
                # shielded: a batch in flight is finished (or failed) even while shutting down
                with anyio.CancelScope(shield=True):
                    await self._write(batch.items)
                _finish(batch)
        finally:
            self._closed = True  # later items are written by their writers, one by one
            batch = self._next
            if batch.items:  # what was queued before closing is written, not dropped
                with anyio.CancelScope(shield=True):
                    await self._write(batch.items)
            _finish(batch)

    async def _write(self, batch: list[_Pending[Item]]) -> None:
        by_queue: dict[str, list[_Pending[Item]]] = defaultdict(list)
        for pending in batch:
            by_queue[pending.queue].append(pending)
        for queue, pendings in by_queue.items():
            for first in range(0, len(pendings), MAX_BATCH):
                await self._write_chunk(queue, pendings[first : first + MAX_BATCH])

    async def _write_chunk(self, queue: str, items: list[_Pending[Item]]) -> None:
        """One statement for ``items``; again with backoff, for the items whose lease holds,
        while the database is unreachable."""
        backoff = ReconnectBackoff()
        while items:
            try:
                written = await within(
                    self._timeout_s, self._write_batch(queue, [p.item for p in items])
                )
            except DatabaseUnavailable as exc:
                left = {id(p): p.lease_left() for p in items}
                for pending in items:
                    if left[id(pending)] <= 0:
                        pending.error = exc
                items = [p for p in items if left[id(p)] > 0]
                if items:
                    delay = min(backoff.next_delay(), max(left.values()))
                    log.warning(
                        "run.write_retried",
                        write="batch",
                        queue=queue,
                        items=len(items),
                        tries=backoff.attempt,
                        delay_s=round(delay, 3),
                        error=str(exc),
                    )
                    await anyio.sleep(delay)
            except DurableError as exc:
                for pending in items:
                    pending.error = exc
                return
            else:
                for pending, ok in zip(items, written, strict=True):
                    pending.written = ok
                if backoff.attempt:
                    log.info("run.write_recovered", write="batch", tries=backoff.attempt)
                return


def _finish(batch: _Batch[Any]) -> None:
    """Tell a written (or failed) batch's writers: callbacks first, then those who wait."""
    for pending in batch.items:
        if pending.on_written is not None:
            pending.on_written(pending.written, pending.error)
    batch.done.set()


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
