"""Group commit, the shared core: the writes made while one write is in flight share the next
statement and its commit.

A :class:`Batcher` owns one task (:meth:`Batcher.run`, started in its owner's task group) that
takes every item queued so far and writes them together, one statement per key (a queue) and
``max_batch`` items. Nothing waits to fill a batch: under light load every item goes out at once;
under load, items queue up behind the write in flight and share the next. Each item gets its own
result, or its own error when the write says so per item; an error of the whole write
(:class:`~durable.protocol.errors.DurableError`) reaches every item of that write only.

A writer either awaits its item (:meth:`Batcher.submit`) or hands it over with a callback
(:meth:`Batcher.hand_over`). A batcher that is closing writes what it was given before it stops;
after that, :meth:`Batcher.submit` raises :class:`~durable.protocol.errors.BatcherClosed` and the
writer writes on its own.

The client batches spawns with it (:mod:`durable.client.spawns`); the worker its completions and
checkpoints (:mod:`durable.runtime.group_commit`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc

from durable.protocol.errors import BatcherClosed, DurableError

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Result = TypeVar("Result")

#: Writes one key's items in one statement: per item, its result or its own error.
WriteBatch = Callable[[Key, list[Item]], Awaitable[Sequence[Result | Exception]]]
#: Told how a handed-over item's write went: its result, or the error (then the result is None).
OnDone = Callable[[Result | None, Exception | None], None]


class _Pending(Generic[Key, Item, Result]):
    __slots__ = ("error", "item", "key", "on_done", "result")

    def __init__(self, key: Key, item: Item, on_done: OnDone[Result] | None = None) -> None:
        self.key = key
        self.item = item
        self.on_done = on_done
        self.result: Result | None = None
        self.error: Exception | None = None


class _Batch(Generic[Key, Item, Result]):
    """The items that will share one write, and the one event that tells all of their writers
    it was made."""

    __slots__ = ("done", "items")

    def __init__(self) -> None:
        self.items: list[_Pending[Key, Item, Result]] = []
        self.done = anyio.Event()


class Batcher(Generic[Key, Item, Result]):
    """``await batcher.submit(key, item)``: the item's result once written. Raises the item's
    error, the write's, or :class:`BatcherClosed` (nothing was queued: write it yourself)."""

    def __init__(self, write: WriteBatch[Key, Item, Result], *, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_batch = write
        self._max_batch = max_batch
        self._next: _Batch[Key, Item, Result] = _Batch()  # the batch new items join
        self._ready = anyio.Event()
        self._running = False
        self._closed = False
        #: Statements written so far (one per key and ``max_batch`` items of each batch).
        self.writes = 0
        #: Items written so far.
        self.items = 0

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is taking items (a batcher not started yet, or closed, is not)."""
        return self._running and not self._closed

    async def submit(self, key: Key, item: Item) -> Result:
        pending: _Pending[Key, Item, Result] = _Pending(key, item)
        batch = self._join(pending)
        if batch is None:
            raise BatcherClosed
        await batch.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]  # set, since no error was

    def hand_over(self, key: Key, item: Item, on_done: OnDone[Result]) -> bool:
        """Queue ``item`` for the next write without waiting for it: ``on_done`` is called (in
        the batcher's task) once it is written or has failed. False when the batcher is closed:
        nothing was queued."""
        return self._join(_Pending(key, item, on_done)) is not None

    def _join(self, pending: _Pending[Key, Item, Result]) -> _Batch[Key, Item, Result] | None:
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
        self._running = True
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

    async def _write(self, batch: list[_Pending[Key, Item, Result]]) -> None:
        by_key: dict[Key, list[_Pending[Key, Item, Result]]] = {}
        for pending in batch:
            by_key.setdefault(pending.key, []).append(pending)
        for key, pendings in by_key.items():
            for first in range(0, len(pendings), self._max_batch):
                chunk = pendings[first : first + self._max_batch]
                self.writes += 1
                self.items += len(chunk)
                try:
                    results = await self._write_batch(key, [p.item for p in chunk])
                except DurableError as exc:
                    for pending in chunk:
                        pending.error = exc
                else:
                    for pending, result in zip(chunk, results, strict=True):
                        if isinstance(result, Exception):
                            pending.error = result
                        else:
                            pending.result = result


def _finish(batch: _Batch[Any, Any, Any]) -> None:
    """Tell a written (or failed) batch's writers: callbacks first, then those who wait."""
    for pending in batch.items:
        if pending.on_done is not None:
            pending.on_done(pending.result, pending.error)
    batch.done.set()
