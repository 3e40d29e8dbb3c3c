"""The group-commit batcher with an in-memory write function: who shares a write, what each
caller gets back, and what a closing batcher still writes.

:class:`Writes` stands in for ``complete_runs``/``set_checkpoints``: it records every call and
a test holds a write in flight, makes one fail, or marks items whose lease is lost. Tests step
with ``wait_all_tasks_blocked`` (every task is waiting), never with a sleep.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from durable.protocol.errors import BatcherClosed, DatabaseUnavailable, DurableError, LeaseLost
from durable.runtime.group_commit import MAX_BATCH, GroupCommit

pytestmark = pytest.mark.anyio


class Writes:
    """A write function: returns, per item, whether its run still held its lease."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.lost: set[str] = set()  # items whose run lost its lease: False, nothing written
        self.fail: dict[int, DurableError] = {}  # call number (from 0) -> the error it raises
        self._held: anyio.Event | None = None

    async def __call__(self, queue: str, items: list[str]) -> list[bool]:
        call = len(self.calls)
        self.calls.append((queue, list(items)))
        held = self._held
        if held is not None:
            await held.wait()
        if call in self.fail:
            raise self.fail[call]
        return [item not in self.lost for item in items]

    def hold(self) -> None:
        """The writes from now on wait in flight until :meth:`release`."""
        self._held = anyio.Event()

    def release(self) -> None:
        if self._held is not None:
            self._held.set()
        self._held = None


@contextlib.asynccontextmanager
async def running(writes: Writes, *, timeout_s: float = 10.0) -> AsyncIterator[GroupCommit[str]]:
    """A batcher over ``writes``, running until the block ends (then closed by cancellation)."""
    batcher: GroupCommit[str] = GroupCommit(writes, timeout_s=timeout_s)
    async with anyio.create_task_group() as tg:
        await tg.start(batcher.run)
        yield batcher
        tg.cancel_scope.cancel()


class Callers:
    """Submits items from tasks of their own and keeps what each got back, in the order they got
    it: ``True``/``False``, or the exception raised."""

    def __init__(self, tg: anyio.abc.TaskGroup, batcher: GroupCommit[str]) -> None:
        self._tg = tg
        self._batcher = batcher
        self.got: dict[str, Any] = {}
        self.log: list[str] = []

    async def submit(self, queue: str, item: str) -> None:
        """Returns once ``item`` joined a batch (its caller then waits in its own task)."""

        async def call(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            task_status.started()  # submit() joins its batch before it first waits
            try:
                self.got[item] = await self._batcher.submit(queue, item)
            except DurableError as exc:
                self.got[item] = exc
            self.log.append(f"woken {item}")

        await self._tg.start(call)

    def hand_over(self, queue: str, item: str) -> bool:
        def on_written(written: bool, error: DurableError | None) -> None:
            self.got[item] = error if error is not None else written
            self.log.append(f"on_written {item}")

        return self._batcher.hand_over(queue, item, on_written)


async def in_flight(writes: Writes, callers: Callers, queue: str, item: str) -> None:
    """Submit ``item`` with the writes held: its write stays in flight until ``writes.release()``,
    and what is submitted meanwhile waits for the next write."""
    writes.hold()
    await callers.submit(queue, item)
    await wait_all_tasks_blocked()


async def test_a_lone_submit_is_written_at_once() -> None:
    writes = Writes()
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await callers.submit("q", "a")
        # every task waits on something: had the batcher a timer, "a" would wait on it unwritten
        await wait_all_tasks_blocked()
        assert writes.calls == [("q", ["a"])]
        assert callers.got == {"a": True}


async def test_items_submitted_while_a_write_is_in_flight_share_the_next_write() -> None:
    writes = Writes()
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await in_flight(writes, callers, "q", "a")
        assert writes.calls == [("q", ["a"])]  # in flight

        for item in ("b", "c", "d"):
            await callers.submit("q", item)
        await wait_all_tasks_blocked()
        assert writes.calls == [("q", ["a"])]  # they wait for the write in flight
        assert callers.got == {}

        writes.release()
        await wait_all_tasks_blocked()
    assert writes.calls == [("q", ["a"]), ("q", ["b", "c", "d"])]
    assert callers.got == {"a": True, "b": True, "c": True, "d": True}


async def test_a_batch_is_written_per_queue_and_split_at_max_batch() -> None:
    writes = Writes()
    many = [f"a{i}" for i in range(MAX_BATCH + 1)]
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await in_flight(writes, callers, "first", "x")
        await callers.submit("alpha", many[0])
        await callers.submit("beta", "b0")
        for item in many[1:]:
            await callers.submit("alpha", item)
        await callers.submit("beta", "b1")
        writes.release()
        # everything above joined while "x" was in flight, so it is one batch: a statement per
        # queue, and no statement over MAX_BATCH items
    assert writes.calls == [
        ("first", ["x"]),
        ("alpha", many[:MAX_BATCH]),
        ("alpha", many[MAX_BATCH:]),
        ("beta", ["b0", "b1"]),
    ]
    assert callers.got == dict.fromkeys(["x", *many, "b0", "b1"], True)


async def test_each_caller_gets_its_own_item_s_result() -> None:
    writes = Writes()
    writes.lost = {"b", "y"}
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await in_flight(writes, callers, "q", "first")
        for queue, item in [("q", "a"), ("other", "x"), ("q", "b"), ("other", "y"), ("q", "c")]:
            await callers.submit(queue, item)
        await wait_all_tasks_blocked()
        writes.release()
    assert writes.calls == [("q", ["first"]), ("q", ["a", "b", "c"]), ("other", ["x", "y"])]
    assert callers.got == {
        "first": True,
        "a": True,
        "b": False,  # its run lost its lease: nothing was written for it
        "c": True,
        "x": True,
        "y": False,
    }


async def test_a_write_error_reaches_every_caller_of_that_write_and_not_the_next_batch() -> None:
    writes = Writes()
    down = DatabaseUnavailable("the database went away")
    writes.fail = {1: down}  # the second write
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await in_flight(writes, callers, "q", "a")
        await callers.submit("q", "b")
        await callers.submit("q", "c")
        assert callers.hand_over("q", "d")
        writes.release()
        await wait_all_tasks_blocked()  # "b", "c", "d" share the second write, which fails
        assert len(writes.calls) == 2
        await callers.submit("q", "e")  # the next batch is written as usual
        await wait_all_tasks_blocked()
    assert writes.calls == [("q", ["a"]), ("q", ["b", "c", "d"]), ("q", ["e"])]
    assert callers.got == {"a": True, "b": down, "c": down, "d": down, "e": True}


async def test_a_failed_statement_fails_only_its_own_queue_s_items() -> None:
    writes = Writes()
    refused = LeaseLost("x", "refused")
    writes.fail = {2: refused}  # the batch's statement for queue "other"
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await in_flight(writes, callers, "q", "first")
        for queue, item in [("q", "a"), ("other", "x"), ("q", "b")]:
            await callers.submit(queue, item)
        await wait_all_tasks_blocked()
        writes.release()
    assert writes.calls == [("q", ["first"]), ("q", ["a", "b"]), ("other", ["x"])]
    assert callers.got == {"first": True, "a": True, "b": True, "x": refused}


async def test_a_write_that_outlasts_its_deadline_fails_its_callers_as_unavailable() -> None:
    writes = Writes()
    async with running(writes, timeout_s=0.05) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        writes.hold()  # never released: the write hangs, as on a stalled connection
        await callers.submit("q", "a")
        assert callers.hand_over("q", "b")
    assert writes.calls == [("q", ["a", "b"])]
    assert isinstance(callers.got["a"], DatabaseUnavailable)
    assert callers.got["b"] is callers.got["a"]


async def test_hand_over_calls_back_once_written_before_the_waiters_are_woken() -> None:
    writes = Writes()
    writes.lost = {"c"}
    async with running(writes) as batcher, anyio.create_task_group() as tg:
        callers = Callers(tg, batcher)
        await in_flight(writes, callers, "q", "a")
        await callers.submit("q", "b")
        assert callers.hand_over("q", "c")
        assert callers.hand_over("q", "d")
        await wait_all_tasks_blocked()
        assert callers.log == []  # nothing is called back before its write is made

        writes.release()
        await wait_all_tasks_blocked()
    assert writes.calls == [("q", ["a"]), ("q", ["b", "c", "d"])]
    assert callers.got == {"a": True, "b": True, "c": False, "d": True}
    # each callback once, in the batcher's pass over its batch, before the waiter of that batch
    assert callers.log == ["woken a", "on_written c", "on_written d", "woken b"]


async def test_a_closing_batcher_writes_what_it_was_given() -> None:
    writes = Writes()
    batcher: GroupCommit[str] = GroupCommit(writes, timeout_s=10.0)
    async with anyio.create_task_group() as outer:
        callers = Callers(outer, batcher)
        async with anyio.create_task_group() as inner:
            await inner.start(batcher.run)
            await in_flight(writes, callers, "q", "a")
            await callers.submit("q", "b")
            assert callers.hand_over("q", "c")
            await wait_all_tasks_blocked()
            inner.cancel_scope.cancel()  # shutting down while "a" is in flight
            writes.release()
        # the batcher stopped: the write in flight finished, and what was queued was written
        await wait_all_tasks_blocked()
    assert writes.calls == [("q", ["a"]), ("q", ["b", "c"])]
    assert callers.got == {"a": True, "b": True, "c": True}


async def test_after_close_submit_raises_batcher_closed_and_hand_over_queues_nothing() -> None:
    writes = Writes()
    async with running(writes) as batcher:
        assert await batcher.submit("q", "a") is True
    with pytest.raises(BatcherClosed):
        await batcher.submit("q", "late")
    called: list[tuple[bool, DurableError | None]] = []
    assert batcher.hand_over("q", "later", lambda *outcome: called.append(outcome)) is False
    await wait_all_tasks_blocked()
    assert called == []
    assert writes.calls == [("q", ["a"])]


async def test_an_unreachable_database_is_retried_for_the_items_whose_lease_holds() -> None:
    """A write that meets an unreachable database is tried again, with backoff, for the items
    whose run's lease still holds (looked up by the item's first element, its run id); an item
    whose lease may have lapsed comes back False, as a lost lease."""
    writes = Writes()
    down = DatabaseUnavailable("the database restarts")
    writes.fail = {1: down, 2: down}  # the batch's first two tries
    leases = {"h": 10.0, "l": 0.0}  # "holds", "lapsed": keyed by their first character
    batcher: GroupCommit[str] = GroupCommit(
        writes, timeout_s=10.0, lease_left=lambda key: leases[str(key)]
    )
    async with anyio.create_task_group() as outer:
        await outer.start(batcher.run)
        async with anyio.create_task_group() as tg:
            callers = Callers(tg, batcher)
            await in_flight(writes, callers, "q", "first")
            await callers.submit("q", "holds")
            await callers.submit("q", "lapsed")
            writes.release()
        outer.cancel_scope.cancel()
    assert writes.calls == [
        ("q", ["first"]),
        ("q", ["holds", "lapsed"]),
        ("q", ["holds"]),  # tried again: its lease holds
        ("q", ["holds"]),
    ]
    assert callers.got == {"first": True, "holds": True, "lapsed": False}
