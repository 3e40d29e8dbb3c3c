"""TaskContext: what a handler sees of its run — identity, checkpointed steps, heartbeats."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Final, ParamSpec, TypeVar, Unpack, overload

import anyio
import orjson

from durable.client import Client
from durable.protocol import durations
from durable.protocol.codec import RawJson, encode_json
from durable.protocol.errors import (
    BatcherClosed,
    EventTimeout,
    InvalidArgument,
    LeaseLost,
    PatchRetired,
    Suspended,
    TaskFailed,
    check_name,
)
from durable.protocol.log import get_logger
from durable.protocol.records import (
    ChildTask,
    Claim,
    DependencyResult,
    Failure,
    SpawnKwargs,
    TaskResult,
    TaskState,
)
from durable.runtime.deadlines import ride_out
from durable.runtime.group_commit import RunWrites
from durable.runtime.outcome import Outcome
from durable.runtime.registry import Registry, TaskDefinition

A = ParamSpec("A")
T = TypeVar("T")
P = TypeVar("P")

#: The deadline of one try of a run's write when the worker gave none.
WRITE_TIMEOUT_S = 30.0

#: What :meth:`TaskContext.begin_step` returns for a step that has no checkpoint yet.
NOT_RECORDED: Final = object()


def run_fields(claim: Claim) -> dict[str, Any]:
    """The keys every run event carries: queue, task_name, task_id, run_id, attempt."""
    return {
        "queue": claim.queue,
        "task_name": claim.task_name,
        "task_id": str(claim.task_id),
        "run_id": str(claim.run_id),
        "attempt": claim.attempt,
    }


@functools.cache
def _scope_class() -> type[anyio.CancelScope]:
    return type(anyio.CancelScope())


def cancel_scope(*, shield: bool = False) -> anyio.CancelScope:
    """``anyio.CancelScope(shield=shield)`` for the per-run hot path: the event loop's own scope
    class, looked up once (durable runs on asyncio only) instead of on every call."""
    return _scope_class()(shield=shield)


class RunControl:
    """The executor's handle on one run: liveness marks and the reason it was stopped."""

    def __init__(
        self,
        claim: Claim,
        on_finish: Callable[[], None] | None = None,
        on_end: Callable[[RunControl], None] | None = None,
        *,
        lease_until: float | None = None,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.claim = claim
        #: When (``time.monotonic()``) the run's lease surely ends unless renewed: the claim's
        #: or the last renewal's send time plus the lease. None: unknown (no write is retried).
        self.lease_until = lease_until
        #: The deadline of one try of a write of the run (the worker's database deadline).
        self.write_timeout_s = write_timeout_s
        self.ids = run_fields(claim)  # the run's log fields, computed once
        self._on_finish = on_finish
        self._on_end = on_end
        self.last_beat = time.monotonic()
        self.scope = cancel_scope()
        #: Why the worker stopped the run: lease_lost, heartbeat_timeout or released.
        self.stop_reason: Outcome | None = None
        self.started = False  # it holds a handler slot (a claimed-ahead run waits for one)
        #: Claimed ahead of a free slot: the database holds it reserved until its worker
        #: reports its start (RESERVED in sql/protocol/00_model.sql).
        self.reserved = False
        self.finished = False  # the handler is done; only its outcome write is left

    def lease_left(self) -> float:
        """Seconds the run's lease surely holds still (0 when lost, lapsed or unknown): how long
        a write that met an unreachable database may be tried again."""
        if self.lease_until is None or self.stop_reason is Outcome.LEASE_LOST:
            return 0.0
        return max(0.0, self.lease_until - time.monotonic())

    async def ride_out(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()``, a write of this run, tried again while the database is unreachable
        and the lease holds (:func:`~durable.runtime.deadlines.ride_out`)."""
        return await ride_out(
            op, timeout_s=self.write_timeout_s, lease_left=self.lease_left, what=what, ids=self.ids
        )

    def renewed(self, until: float) -> None:
        """Its lease was extended, surely until ``until`` (monotonic)."""
        if self.lease_until is not None:
            self.lease_until = max(self.lease_until, until)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def start(self) -> None:
        """It got its handler slot and runs now: its heartbeat clock starts with it."""
        self.started = True
        self.beat()

    def finish(self) -> None:
        """The handler is done (its outcome write may still be in flight): its slot is free."""
        if self.finished:
            return
        self.finished = True
        if self._on_finish is not None:
            self._on_finish()

    def end(self) -> None:
        """Its outcome is written (or given up): the worker lets go of it."""
        if self._on_end is not None:
            self._on_end(self)

    def stop(self, reason: Outcome) -> None:
        """Cancel the run's scope, remembering why (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()


class TaskContext:
    """Passed to every handler as its first argument."""

    def __init__(
        self,
        client: Client,
        registry: Registry,
        control: RunControl,
        writes: RunWrites | None = None,
    ) -> None:
        claim = control.claim
        self._client = client
        self._registry = registry
        self._control = control
        self._writes = writes
        self.task_id: uuid.UUID = claim.task_id
        self.run_id: uuid.UUID = claim.run_id
        self.attempt: int = claim.attempt
        self.max_attempts: int = claim.max_attempts
        self.task_name: str = claim.task_name
        self.queue: str = claim.queue
        self.headers: dict[str, Any] = claim.headers
        #: The task's params, as the handler gets them (an ``on_discard`` hook reads them here).
        self.params: Any = claim.params
        self._recorded: dict[str, Any] | None = None if claim.has_checkpoints else {}
        self._seen: dict[str, int] = {}
        #: Every step this run passed, in order: a patch looks at the history beyond them.
        self._passed: list[str] = []

    @property
    def stopped(self) -> bool:
        """The worker stopped this run, or its handler is done: nothing more runs for it."""
        return self._control.finished or self._control.stop_reason is not None

    @functools.cached_property
    def log(self) -> Any:
        """A structlog logger bound to this run's identity (bound on first use)."""
        return get_logger().bind(**self._control.ids)

    @overload
    async def step(
        self, name: str, fn: Callable[A, Awaitable[T]], /, *args: A.args, **kwargs: A.kwargs
    ) -> T: ...

    @overload
    async def step(
        self, name: str, fn: Callable[A, T], /, *args: A.args, **kwargs: A.kwargs
    ) -> T: ...

    async def step(
        self, name: str, fn: Callable[A, Any], /, *args: A.args, **kwargs: A.kwargs
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this task and checkpoint its JSON result; return
        it (typed as what ``fn`` returns, sync or async).

        On a later attempt the recorded value is returned without calling ``fn``. The same name
        used again within one run (a loop) gets its own checkpoint: ``name``, ``name#2``, ...
        Sync functions run in a worker thread.

        Raises:
            NotSerializable: ``fn``'s result is not JSON (nothing is recorded; the run fails).
            LeaseLost: the run lost its lease before the checkpoint was written: the run stops.

        Example:
            ```python
            profile = await ctx.step("load-profile", load_profile, params["user_id"])
            for chunk in chunks:
                await ctx.step("load", load_chunk, chunk)  # load, load#2, ...
            ```
        """
        key, recorded = await self.begin_step(name)
        if recorded is not NOT_RECORDED:
            return recorded
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args, **kwargs)
        else:
            value = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
            if inspect.isawaitable(value):
                value = await value
        return await self.end_step(key, value)

    async def begin_step(self, name: str) -> tuple[str, Any]:
        """The first half of :meth:`step`: the step's checkpoint name and its recorded value
        (:data:`NOT_RECORDED` when its body must run now)."""
        key = self._next_key(name)
        recorded = await self._load_recorded()
        if key in recorded:
            return key, recorded[key]
        self._check_lease()  # a run known to have lost its lease starts no more step bodies
        return key, NOT_RECORDED

    async def end_step(self, key: str, value: Any) -> Any:
        """The second half of :meth:`step`: checkpoint ``value`` as step ``key``; return it as
        recorded (what a replay will return)."""
        encoded = encode_json(value, f"the value of step {key!r}")
        await self._write(self._checkpoint(key, encoded))
        self._control.beat()
        recorded = await self._load_recorded()
        recorded[key] = orjson.loads(bytes(encoded))
        return recorded[key]

    async def sleep(self, name: str, seconds: float | timedelta) -> None:
        """Durable sleep, recorded as step ``name``: the run is parked (its worker slot freed)
        and the task resumes after ``seconds`` on whichever worker claims it then, even across
        restarts of every worker; finished steps are replayed, not re-run.

        Raises:
            InvalidArgument: a negative duration or an empty name.

        Example:
            ```python
            await ctx.sleep("wait-a-day", timedelta(days=1))
            ```
        """
        await self._sleep(name, seconds=durations.seconds(seconds, what="sleep seconds"))

    async def sleep_until(self, name: str, when: datetime) -> None:
        """:meth:`sleep` until ``when`` (timezone-aware)."""
        await self._sleep(name, until=when)

    async def _sleep(
        self, name: str, *, seconds: float | None = None, until: datetime | None = None
    ) -> None:
        key = self._next_key(name)
        recorded = await self._load_recorded()
        if key in recorded:
            return  # this run was claimed once the recorded time had come
        self._check_lease()
        if await self._write(
            self._client.sleep(self.queue, self.run_id, key, seconds=seconds, until=until)
        ):
            raise Suspended
        recorded[key] = {"slept": True}

    async def await_event(self, name: str, *, timeout: float | timedelta | None = None) -> Any:
        """Wait for event ``name`` (``app.emit_event``) and return its payload. The run is parked
        meanwhile; an event emitted before the wait is received at once. Raises
        :class:`EventTimeout` when ``timeout`` seconds pass first.

        Raises:
            EventTimeout: no event within ``timeout`` (recorded: a replay raises it again).

        Example:
            ```python
            try:
                answer = await ctx.await_event(f"survey:{params['user']}", timeout=3600)
            except EventTimeout:
                answer = None
            ```
        """
        key = self._next_key(f"$event:{name}")

        async def wait() -> tuple[str, Any]:
            status, payload = await self._client.await_event(
                self.queue, self.run_id, key, name, timeout
            )
            return status, {"payload": payload}  # as the step records it

        value = await self._wait(key, wait)
        if value.get("timed_out"):
            raise EventTimeout(f"event {name!r}", key)
        return value.get("payload")

    async def spawn(
        self,
        task: TaskDefinition[P, Any] | str,
        params: P | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> ChildTask:
        """Spawn a child task, durably: a replay of this task (after a crash) finds the same
        child instead of spawning another. ``name`` tells apart children of one task name (by
        default the n-th spawn of a task name in this handler is the n-th child)."""
        task_name = task if isinstance(task, str) else task.name
        key = self._next_key(f"$spawn:{name or task_name}")
        recorded = await self._load_recorded()
        if key not in recorded:
            self._check_lease()
            if options.get("idempotency_key") is None:
                options["idempotency_key"] = f"durable:child:{self.task_id}:{key}"
            child_queue, _, spawn_opts = self._registry.resolve(
                task, queue, options, fallback_queue=self.queue, params=params
            )
            info = await self._write(
                self._client.spawn(
                    child_queue,
                    task_name,
                    params,
                    dataclasses.replace(spawn_opts, parent_task_id=self.task_id),
                )
            )
            doc = {"task_id": str(info.task_id), "queue": child_queue, "task_name": task_name}
            await self._write(self._checkpoint(key, encode_json(doc, "a child's identity")))
            self._control.beat()
            recorded[key] = doc
        doc = recorded[key]
        return ChildTask(uuid.UUID(doc["task_id"]), doc["queue"], doc["task_name"])

    async def result(
        self, child: ChildTask | uuid.UUID | Any, *, timeout: float | timedelta | None = None
    ) -> TaskResult[Any]:
        """Wait for a task (a child from :meth:`spawn`, or any task id) to end, parked
        meanwhile. Returns its :class:`TaskResult`; raises :class:`TaskFailed` if it failed or
        was cancelled, :class:`EventTimeout` if ``timeout`` passed first. Recorded: a replay
        gets the same outcome without waiting.

        Raises:
            TaskFailed: the task ended failed or cancelled (recorded: a replay raises it again).
            EventTimeout: it did not end within ``timeout``.
            TaskNotFound: no such task.
        """
        child_id: uuid.UUID = child if isinstance(child, uuid.UUID) else child.task_id
        key = self._next_key(f"$result:{child_id}")
        value = await self._wait(
            key, lambda: self._client.await_task(self.queue, self.run_id, key, child_id, timeout)
        )
        if value.get("timed_out"):
            raise EventTimeout(f"the result of task {child_id}", key)
        state = TaskState(value["state"])
        if state is not TaskState.COMPLETED:
            raise TaskFailed(child_id, str(state), Failure.from_json(value.get("failure")))
        return TaskResult(state=state, result=value.get("result"))

    async def gather(
        self,
        children: Iterable[ChildTask | uuid.UUID],
        *,
        timeout: float | timedelta | None = None,
    ) -> list[TaskResult[Any]]:
        """Wait for every task of ``children`` (from :meth:`spawn`, or any task ids) to end, parked
        meanwhile: the run parks once and wakes once, when the last of them ended, however many
        they are. Returns their results (:class:`TaskResult`) in the order given; a failed or
        cancelled task is a result too (its ``state`` and ``failure`` say so), not an exception,
        so one failure does not hide the others' results. Raises :class:`EventTimeout` if
        ``timeout`` passed first. Recorded: a replay gets the same results without waiting.

        Raises:
            EventTimeout: they did not all end within ``timeout``.
            TaskNotFound: an unknown task id.

        Example:
            ```python
            children = [await ctx.spawn(resize, {"image": i}, name=f"resize-{i}") for i in images]
            results = await ctx.gather(children, timeout=3600)  # parks once, wakes once
            ```
        """
        ids = [child if isinstance(child, uuid.UUID) else child.task_id for child in children]
        if not ids:
            return []
        key = self._next_key("$gather")

        async def wait() -> tuple[str, Any]:
            status, outcomes = await self._client.await_tasks(
                self.queue, self.run_id, key, ids, timeout
            )
            return status, {"outcomes": outcomes}  # as the step records it

        value = await self._wait(key, wait)
        if value.get("timed_out"):
            raise EventTimeout(f"the end of {len(ids)} tasks", key)
        return [
            TaskResult(
                state=TaskState(outcome["state"]),
                result=outcome.get("result"),
                failure=Failure.from_json(outcome.get("failure")),
            )
            for outcome in value["outcomes"]
        ]

    async def dependency_results(self) -> list[DependencyResult]:
        """The tasks this task was spawned to depend on (``depends_on``), in the order they
        were spawned, with their results: they all completed before this task could start. Read
        from the database each time (they are stored there already), not recorded as a step."""
        return await self._client.get_dependency_results(self.queue, self.task_id)

    async def recv(self, topic: str, *, timeout: float | timedelta | None = None) -> Any:
        """Receive the next message sent to this task on ``topic`` (``app.send``) and return its
        payload. Messages of a topic arrive in the order they were sent, and each is received
        once; with none waiting the run is parked (its worker slot freed) until one is sent.
        Raises :class:`EventTimeout` when ``timeout`` seconds pass first. Recorded: a replay gets
        the same message without taking another.

        Raises:
            EventTimeout: no message within ``timeout``.
            InvalidArgument: an empty topic, or one over 255 characters.

        Example:
            ```python
            decision = await ctx.recv("decision", timeout=timedelta(days=3))
            ```
        """
        check_name(topic, "topic")
        key = self._next_key(f"$recv:{topic}")

        async def wait() -> tuple[str, Any]:
            status, payload = await self._client.receive_message(
                self.queue, self.run_id, key, topic, timeout
            )
            return status, {"payload": payload}  # as the step records it

        value = await self._wait(key, wait)
        if value.get("timed_out"):
            raise EventTimeout(f"a message on topic {topic!r}", key)
        return value.get("payload")

    async def set_state(self, key: str, value: Any) -> None:
        """Publish where this task stands: ``value`` (any JSON) under ``key``, for anyone to read
        with ``app.get_state(task_id, key)``; the last write of a key wins. A write of the run
        like :meth:`progress`: it extends the lease."""
        self._check_lease()
        await self._write(
            self._control.ride_out(
                "state", lambda: self._client.set_state(self.queue, self.run_id, key, value)
            )
        )
        self._control.beat()

    async def patched(self, change_id: str) -> bool:
        """Whether this task takes the new path of a code change, marked ``change_id``::

            if await ctx.patched("charge-in-cents"):
                ...  # the new code
            else:
                ...  # the code tasks in flight ran before the change

        Decided once per task, the first time it reaches this point, and recorded (step
        ``$patch:<change_id>``): True for a task that reaches it for the first time, with this
        code deployed; False for a task whose earlier runs went past this point without it (its
        recorded steps or waits go beyond the steps this run has passed so far), which must
        replay the old path to match its history."""
        key = self._next_key(f"$patch:{check_name(change_id, 'change id')}")
        recorded = await self._load_recorded()
        if key in recorded:
            return recorded[key] is True
        self._check_lease()
        new_path: bool = await self._write(
            self._client.decide_patch(self.queue, self.run_id, key, self._passed)
        )
        recorded[key] = new_path
        return new_path

    async def deprecate_patch(self, change_id: str) -> None:
        """Where ``if await ctx.patched(change_id)`` was, once the old path is gone from the
        code: a task that reaches this point takes the new path, and one that took the old path
        (it recorded False, or its history went past this point before the patch) raises
        :class:`PatchRetired` instead of going on down the wrong one."""
        if not await self.patched(change_id):
            raise PatchRetired(change_id)

    async def progress(self, pct: float, detail: Any = None) -> None:
        """Record how far the task got (0 to 100) and any JSON ``detail``; shown by ``get_task``
        and ``durable show``. Extends the lease like a heartbeat. While the database is
        unreachable it is tried again with backoff, as long as the run's lease holds."""
        self._check_lease()
        await self._write(
            self._control.ride_out(
                "progress",
                lambda: self._client.set_progress(self.queue, self.run_id, pct, detail),
            )
        )
        self._control.beat()

    async def _wait(
        self, key: str, wait: Callable[[], Awaitable[tuple[str, Any]]]
    ) -> dict[str, Any]:
        """The recorded value of wait step ``key``; the first time, ``wait()`` asks the database,
        which answers at once or parks the run (then :class:`Suspended` ends the handler)."""
        recorded = await self._load_recorded()
        value: dict[str, Any] | None = recorded.get(key)
        if value is None:
            self._check_lease()
            status, found = await self._write(wait())
            if status == "suspended":
                raise Suspended
            value = {"timed_out": True} if status == "timeout" else found
            recorded[key] = value
        return value

    def _next_key(self, name: str) -> str:
        """The checkpoint name of the next use of ``name`` in this run: ``name``, ``name#2``..."""
        if not isinstance(name, str) or not name:
            # refused here, not in a batched write, where it would fail other runs' checkpoints
            raise InvalidArgument(f"step name must be a non-empty string, got {name!r}")
        count = self._seen.get(name, 0) + 1
        self._seen[name] = count
        key = name if count == 1 else f"{name}#{count}"
        self._passed.append(key)
        return key

    async def heartbeat(self, extend_by: float | None = None) -> None:
        """Tell the supervisor this run is alive; with ``extend_by`` also extend the lease now."""
        self._check_lease()
        self._control.beat()
        if extend_by is not None:
            extend_s = durations.seconds(extend_by, what="extend_by")
            await self._write(
                self._control.ride_out(
                    "heartbeat",
                    lambda: self._client.extend_claim(self.queue, self.run_id, extend_s),
                )
            )

    async def _checkpoint(self, key: str, encoded: RawJson) -> None:
        """Record the step: batched with other runs' checkpoints when the worker batches."""
        if self._writes is not None:
            try:
                if await self._writes.checkpoints.submit(self.queue, (self.run_id, key, encoded)):
                    return
            except BatcherClosed:
                pass  # shutting down: write it on its own (that raises LeaseLost if it was lost)
            else:
                raise LeaseLost(self.run_id, "run is not running under an unexpired lease")
        await self._control.ride_out(
            "checkpoint",
            lambda: self._client.set_checkpoint(self.queue, self.run_id, key, encoded, None),
        )

    def _check_lease(self) -> None:
        if self._control.stop_reason is Outcome.LEASE_LOST:
            raise LeaseLost(self.run_id, "the worker found the lease lost")

    async def _write(self, op: Any) -> Any:
        try:
            return await op
        except LeaseLost:
            self._control.stop(Outcome.LEASE_LOST)
            raise

    async def _load_recorded(self) -> dict[str, Any]:
        if self._recorded is None:
            checkpoints = await self._client.get_checkpoints(self.queue, self.task_id)
            self._recorded = {c.step_name: c.value for c in checkpoints}
        return self._recorded
