"""Concurrent spawns share a statement and a commit.

While one spawn is in flight, the spawns other coroutines of the same client make queue up and
go together as one ``durable.spawn_many`` statement (per queue): under load a service pays one
round trip and one commit for many spawns; a lone spawn goes out at once, from its caller's
task, through ``durable.spawn`` (no timer, no hop through the batcher's task). One coroutine
awaits each spawn before its next, so its spawns keep their order; within a batch, tasks are
keyed in the order they joined it.

Each spawn is checked (queue name, params and options as JSON) in its caller's task before it
joins a batch, so a bad one fails alone there. When a batch's statement fails (an option the
database refuses, a dependency that names no task), its spawns are sent again one by one, so
only the bad one's caller gets the error; a duplicate idempotency key returns the existing task
(``created=False``) as it does one at a time. An unreachable database fails the batch's callers
alike, without a retry per spawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from durable.client.batcher import Batcher
from durable.protocol.codec import MAX_PAYLOAD_BYTES, RawJson
from durable.protocol.errors import DatabaseUnavailable
from durable.protocol.records import SpawnInfo
from durable.protocol.store import Store

#: The most spawns one statement carries (more queued wait for the next statement).
MAX_BATCH = 200


#: Options whose spawn locks rows besides its own (a unique key's lock, its dependencies, its
#: parent): such a spawn is sent alone, as before batching, so two batches never wait on each
#: other's locks.
ALONE_OPTIONS = frozenset({"unique", "depends_on", "parent_task_id"})


class SpawnBatches(NamedTuple):
    """What a client's spawn batcher did: the ``statements`` it sent, the ``spawns`` they
    carried, and the statements the database ``refused`` (their spawns sent again one by
    one)."""

    statements: int
    spawns: int
    refused: int


class Spawn(NamedTuple):
    """One spawn, checked and encoded: what a batch carries."""

    task_name: str
    params: RawJson
    options: RawJson
    idempotency_key: str | None = None


class SpawnBatcher(Batcher[str, Spawn, SpawnInfo]):
    """The client's spawns, batched per queue; run it in the client's task group."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store  # the client's current store (a test harness may replace it)
        self._alone = 0  # spawns sent by their callers themselves, in flight
        self._queued = 0  # spawns given to the batcher, not answered yet
        #: Batch statements the database refused, whose spawns were then sent one by one.
        self.refused = 0
        super().__init__(self._spawn, max_batch=MAX_BATCH)

    async def spawn(self, queue: str, spawn: Spawn, *, alone: bool = False) -> SpawnInfo:
        """Send ``spawn``: at once from the caller's task when no other spawn is in flight (no
        hop through the batcher's task) or when it must go ``alone``, else batched with the
        others that wait. Raises the spawn's own error, or :class:`BatcherClosed` when the
        batcher has stopped."""
        if alone or (not self._alone and not self._queued):
            self._alone += 1
            try:
                return await self._store().spawn(
                    queue, spawn.task_name, spawn.params, spawn.options
                )
            finally:
                self._alone -= 1
        self._queued += 1
        try:
            return await self.submit(queue, spawn)
        finally:
            self._queued -= 1

    async def _spawn(self, queue: str, spawns: list[Spawn]) -> Sequence[SpawnInfo | Exception]:
        if len(spawns) == 1:
            return [await self._one(queue, spawns[0])]
        # idempotency keys in one order across batches: two batches inserting the same keys
        # wait for each other in that order, never in a circle (each caller has one spawn in a
        # batch, so its own order is kept)
        order = sorted(range(len(spawns)), key=lambda i: _key_order(spawns[i]))
        results: list[SpawnInfo | Exception] = []
        for chunk in _by_size([spawns[i] for i in order]):
            try:
                results += await self._store().spawn_encoded(
                    queue, [(s.task_name, s.params, s.options) for s in chunk]
                )
            except DatabaseUnavailable:
                raise  # every caller of this batch gets it: no retry per spawn
            except Exception:  # noqa: BLE001 — one bad spawn: send them one by one, below
                self.refused += 1
                results += [await self._one(queue, spawn) for spawn in chunk]
        answers: list[SpawnInfo | Exception] = [results[0]] * len(spawns)
        for at, i in enumerate(order):
            answers[i] = results[at]
        return answers

    async def _one(self, queue: str, spawn: Spawn) -> SpawnInfo | Exception:
        """One spawn on its own, through ``durable.spawn``: its result, or its own error."""
        try:
            return await self._store().spawn(queue, spawn.task_name, spawn.params, spawn.options)
        except Exception as exc:  # noqa: BLE001 — the caller's own error, raised in its task
            return exc


def _key_order(spawn: Spawn) -> tuple[bool, str]:
    """Spawns without a key first, in the order they came; then by key."""
    key = spawn.idempotency_key
    return (key is not None, key or "")


def _by_size(spawns: list[Spawn]) -> list[list[Spawn]]:
    """``spawns`` in runs whose JSON fits in one payload (a batch counts as one value)."""
    chunks: list[list[Spawn]] = [[]]
    size = 0
    for spawn in spawns:
        length = len(spawn.params) + len(spawn.options) + len(spawn.task_name) + 48
        if chunks[-1] and size + length > MAX_PAYLOAD_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(spawn)
        size += length
    return chunks
