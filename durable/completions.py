"""Batched completions: the runs a worker finishes while one write is in flight are completed
together by the next ``complete_runs`` statement, in one commit (group commit).

Nothing waits to fill a batch: under light load every completion is written at once; under load,
completions queue up behind the write in flight and share the next one. Each run is still fenced
on its own: ``complete`` returns False for a run whose lease was lost, and the batch goes on.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

import anyio
import anyio.abc

from durable.client import Client
from durable.errors import DurableError
from durable.heartbeat import within
from durable.store import RawJson

MAX_BATCH = 500


class CompletionsClosed(DurableError):
    """The batcher stopped before this completion was written; write it directly."""

    def __init__(self) -> None:
        super().__init__("the completion batcher is closed")


class _Pending:
    __slots__ = ("completed", "done", "error", "queue", "result", "run_id")

    def __init__(self, queue: str, run_id: uuid.UUID, result: RawJson) -> None:
        self.queue = queue
        self.run_id = run_id
        self.result = result
        self.done = anyio.Event()
        self.completed = False
        self.error: DurableError | None = None


class CompletionBatcher:
    """``await batcher.complete(queue, run_id, result)``: True once completed, False when the
    run's lease was lost (nothing was written for it)."""

    def __init__(self, client: Client, *, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._waiting: list[_Pending] = []
        self._ready = anyio.Event()
        self._closed = False

    async def complete(self, queue: str, run_id: uuid.UUID, result: RawJson) -> bool:
        if self._closed:
            raise CompletionsClosed
        item = _Pending(queue, run_id, result)
        self._waiting.append(item)
        self._ready.set()
        await item.done.wait()
        if item.error is not None:
            raise item.error
        return item.completed

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
                # shielded: a batch in flight is finished (or failed) even while shutting down
                with anyio.CancelScope(shield=True):
                    await self._write(batch)
        finally:
            self._closed = True
            for item in self._waiting:
                item.error = CompletionsClosed()
                item.done.set()
            self._waiting = []

    async def _write(self, batch: list[_Pending]) -> None:
        by_queue: dict[str, list[_Pending]] = defaultdict(list)
        for item in batch:
            by_queue[item.queue].append(item)
        for queue, items in by_queue.items():
            outcomes: list[tuple[uuid.UUID, Any]] = [(i.run_id, i.result) for i in items]
            try:
                completed = await within(
                    self._timeout_s, self._client.complete_runs(queue, outcomes)
                )
            except DurableError as exc:
                for item in items:
                    item.error = exc
            else:
                for item in items:
                    item.completed = completed.get(item.run_id, False)
            for item in items:
                item.done.set()
