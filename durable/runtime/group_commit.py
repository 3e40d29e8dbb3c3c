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
with backoff for the items whose run's lease surely holds (``lease_left`` of its run id); an item
whose lease may have lapsed comes back False, as a lost lease: nothing is written for it here,
and another worker reaps its run. Repeating a write is safe: an item that committed before the
answer was lost is refused by its fence (False) or changes nothing (a checkpoint is written once).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import anyio.abc

from durable.client import Client
from durable.client.batcher import Batcher
from durable.protocol.codec import RawJson
from durable.protocol.errors import DatabaseUnavailable, DurableError
from durable.protocol.log import get_logger
from durable.runtime.deadlines import ReconnectBackoff, within

log = get_logger()

MAX_BATCH = 500

Item = TypeVar("Item")
#: Writes one queue's items in one statement; per item, whether its run still held its lease.
WriteBatch = Callable[[str, list[Item]], Awaitable[Sequence[bool]]]
#: Told how a handed-over item's write went: written (False: the lease was lost), or the error.
OnWritten = Callable[[bool, DurableError | None], None]
#: Seconds the lease of a run (by its id) surely holds still: how long its write may be retried.
LeaseLeft = Callable[[uuid.UUID], float]


def _no_lease(run_id: uuid.UUID) -> float:
    return 0.0


class GroupCommit(Batcher[str, Item, bool]):
    """``await batcher.submit(queue, item)``: True once written, False when the item's run lost
    its lease (nothing was written for it). Raises the write's error, or :class:`BatcherClosed`.
    The batching itself is the client's :class:`~durable.client.batcher.Batcher`; this adds the
    runtime's deadline to every write."""

    def __init__(
        self, write: WriteBatch[Item], *, timeout_s: float, lease_left: LeaseLeft = _no_lease
    ) -> None:
        async def write_within(queue: str, items: list[Item]) -> Sequence[bool]:
            return await _ride_out(write, queue, items, timeout_s, lease_left)

        super().__init__(write_within, max_batch=MAX_BATCH)

    def hand_over(  # the runtime's callback: written, or the error
        self, queue: str, item: Item, on_written: OnWritten
    ) -> bool:
        """Queue ``item`` for the next write without waiting for it: ``on_written`` is called
        (in the batcher's task) once it is written or has failed. False when the batcher is
        closed: nothing was queued."""

        def done(written: bool | None, error: Exception | None) -> None:
            # the write function reports no per-item errors: an error is the write's own
            assert error is None or isinstance(error, DurableError)
            on_written(bool(written), error)

        return super().hand_over(queue, item, done)


async def _ride_out(
    write: WriteBatch[Item],
    queue: str,
    items: list[Item],
    timeout_s: float,
    lease_left: LeaseLeft,
) -> list[bool]:
    """``write(queue, items)`` within ``timeout_s``; while the database is unreachable, again with
    backoff for the items whose lease holds (an item is a tuple whose first element is its run
    id). Those whose lease may have lapsed come back False; with none left, the error is raised."""
    results: dict[int, bool] = {}
    todo = list(range(len(items)))
    backoff = ReconnectBackoff()
    while True:
        try:
            written = await within(timeout_s, write(queue, [items[i] for i in todo]))
        except DatabaseUnavailable as exc:
            left = {i: lease_left(items[i][0]) for i in todo}  # type: ignore[index]
            for i in todo:
                if left[i] <= 0:
                    results[i] = False
            todo = [i for i in todo if left[i] > 0]
            if not todo:
                if backoff.attempt == 0:
                    raise  # no item's lease is known: the write's error, as before
                return [results[i] for i in range(len(items))]
            delay = min(backoff.next_delay(), max(left[i] for i in todo))
            log.warning(
                "run.write_retried",
                write="batch",
                queue=queue,
                items=len(todo),
                tries=backoff.attempt,
                delay_s=round(delay, 3),
                error=str(exc),
            )
            await anyio.sleep(delay)
        else:
            results.update(zip(todo, written, strict=True))
            if backoff.attempt:
                log.info("run.write_recovered", write="batch", tries=backoff.attempt)
            return [results[i] for i in range(len(items))]


class RunWrites:
    """A worker's two batchers: ``completions`` of ``(run_id, result)`` and ``checkpoints`` of
    ``(run_id, step, value)``. Run both with :meth:`run` in the worker's task group."""

    def __init__(
        self, client: Client, *, timeout_s: float, lease_left: LeaseLeft = _no_lease
    ) -> None:
        async def complete(queue: str, items: list[tuple[uuid.UUID, RawJson]]) -> list[bool]:
            completed = await client.complete_runs(queue, items)
            return [completed.get(run_id, False) for run_id, _ in items]

        self.completions: GroupCommit[tuple[uuid.UUID, RawJson]] = GroupCommit(
            complete, timeout_s=timeout_s, lease_left=lease_left
        )
        self.checkpoints: GroupCommit[tuple[uuid.UUID, str, Any]] = GroupCommit(
            client.set_checkpoints, timeout_s=timeout_s, lease_left=lease_left
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(self.completions.run)
            await tg.start(self.checkpoints.run)
            task_status.started()
