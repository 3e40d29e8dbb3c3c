"""Durable: the task registry, ``@app.task``, the app's lifecycle, spawning by name, results."""

from __future__ import annotations

import dataclasses
import functools
import signal
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, TypeVar, Unpack, cast, overload

import anyio

from durable.blocking import SyncDurable
from durable.client import Client
from durable.client.client import TaskFilters
from durable.protocol.connections import SpawnConnection
from durable.protocol.cron import Missed
from durable.protocol.errors import DurableError
from durable.protocol.log import get_logger
from durable.protocol.records import (
    BatchInfo,
    BatchRecord,
    CronSchedule,
    FailedWork,
    FailedWorkState,
    FailureGroup,
    FailureReason,
    PausedQueue,
    ReasonClass,
    Retention,
    RetryInfo,
    SpawnInfo,
    SpawnKwargs,
    SpawnOptions,
    TaskPage,
    TaskRecord,
    TaskResult,
    TaskState,
)
from durable.runtime.context import TaskContext
from durable.runtime.cron import CronJob
from durable.runtime.registry import (
    Handler,
    Registry,
    TaskDefinition,
    TaskHandle,
    TaskKwargs,
    check_key_limit,
)
from durable.runtime.retention import PruneRule
from durable.runtime.sync_context import SyncTaskContext
from durable.runtime.worker import Worker, WorkerKwargs, WorkerOptions

log = get_logger()

P = TypeVar("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns: it registers the handler it decorates."""

    @overload
    def __call__(self, fn: Callable[[TaskContext, P], Awaitable[R]], /) -> TaskDefinition[P, R]: ...

    @overload
    def __call__(self, fn: Callable[[SyncTaskContext, P], R], /) -> TaskDefinition[P, R]: ...


class Durable:
    """The application: register tasks, spawn them, await results, run workers.

    ``Durable(dsn)`` > ``$DURABLE_DSN`` > the embedded PostgreSQL under ``$DURABLE_HOME`` (the
    ``durable[embedded]`` extra; without it, connecting raises ``DatabaseUnavailable``).
    ``async with app:`` connects and migrates; a worker (``durable worker module:app`` or
    ``app.run_worker()``) connects by itself.

    Args:
        dsn: the PostgreSQL DSN; None reads ``$DURABLE_DSN``, else starts the embedded server.
        default_queue: the queue of tasks that name none.
        migrate: bring the schema and the protocol up to date when connecting; with False,
            only check them (run ``durable migrate`` in your deploy step).
        pool_size: connections in the pool.
        statement_cache_size: asyncpg's prepared-statement cache; 0 behind pgbouncer in
            transaction mode.
        command_timeout: the deadline of each database call from your code, in seconds.
        retention: how long finished tasks are kept (``Retention``); None keeps them.
        retention_interval: how often each worker prunes, in seconds.
        version: the code version every run records; None derives it from the handlers' source.

    Raises:
        InvalidQueueName: ``default_queue`` is not a valid queue name.

    Example:
        ```python
        app = Durable("postgresql://localhost/app", default_queue="emails")

        @app.task(name="send_welcome", max_attempts=5)
        async def send_welcome(ctx: TaskContext, params: dict) -> dict:
            return await ctx.step("send", send_email, params["user_id"])

        async with app:
            handle = await send_welcome.spawn({"user_id": 7}, idempotency_key="welcome-7")
            outcome = await handle.result(timeout=30)
        ```
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        default_queue: str = "default",
        migrate: bool = True,
        pool_size: int = 10,
        statement_cache_size: int = 100,
        command_timeout: float | None = 30.0,
        retention: Retention | None = None,
        retention_interval: float = 60.0,
        version: str | None = None,
    ) -> None:
        self.client = Client(
            dsn,
            migrate=migrate,
            pool_size=pool_size,
            statement_cache_size=statement_cache_size,
            command_timeout=command_timeout,
        )
        #: The tasks, cron jobs and retention rules of this app: what its workers run.
        self.registry = Registry(
            self.client,
            default_queue=default_queue,
            retention=retention,
            retention_interval=retention_interval,
            version=version,
        )
        #: The blocking API (Django, Flask, WSGI, scripts): ``app.sync.spawn(task, params)``,
        #: run on a background event loop of its own (see :mod:`durable.blocking`).
        self.sync = SyncDurable(self.registry)
        self._entered = 0

    @property
    def default_queue(self) -> str:
        """The queue of tasks spawned without one."""
        return self.registry.default_queue

    @property
    def retention(self) -> Retention | None:
        """How long finished tasks are kept; workers prune every ``retention_interval`` s."""
        return self.registry.retention

    @property
    def retention_interval(self) -> float:
        """How often each worker prunes finished tasks, in seconds (jittered)."""
        return self.registry.retention_interval

    @property
    def crons(self) -> list[CronJob]:
        """The cron schedules declared in code with ``app.cron``, which workers store when they
        start.
        """
        return self.registry.crons

    @property
    def version(self) -> str:
        """This code's version, recorded by every run its workers claim: ``version=`` when
        given, else derived from the source of the registered handlers."""
        return self.registry.code_version

    # --- registry -------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[[TaskContext, P], Awaitable[R]], /) -> TaskDefinition[P, R]: ...

    @overload
    def task(self, fn: Callable[[SyncTaskContext, P], R], /) -> TaskDefinition[P, R]: ...

    @overload
    def task(self, fn: None = None, /, **options: Unpack[TaskKwargs]) -> TaskDecorator: ...

    def task(
        self, fn: Handler | None = None, /, **options: Unpack[TaskKwargs]
    ) -> TaskDefinition[Any, Any] | TaskDecorator:
        """Register a handler ``(ctx, params) -> JSON``; bare or with options.

        An ``async def`` handler takes a :class:`TaskContext`; a plain ``def`` one runs in a
        worker thread and takes a :class:`SyncTaskContext`, whose calls block. The definition
        is typed from the handler: ``TaskDefinition[P, R]`` for ``(ctx, params: P) -> R``.

        The task's stored name is its contract: pass ``name=`` for anything long-lived, so that
        renaming the function does not strand tasks in flight.

        ``global_limit`` (runs at once) and ``rate_limit`` (starts per period) hold across every
        worker: a worker serving the task's queue records them when it starts; ``global_limit``
        holds across every queue the task name runs on. ``concurrency_key`` (a function of the
        params, e.g. ``lambda p: p["tenant"]``, evaluated at spawn and stored on the task) with
        ``key_limit=N``: at most N runs of the task name per key at once, across every worker
        and queue. ``on_discard(ctx,
        error)`` is called when the task ends without completing (its attempts ran out, or it
        was cancelled, discarded, or cancelled by a policy, a dependency or its parent), with
        ``ctx.params`` and a :class:`durable.TaskDiscarded` saying why; at least once, by
        whichever worker claims the hook's task, so make it idempotent.
        ``retention`` overrides the app's for this task name (see :class:`durable.Retention`).

        Every error is retried while attempts are left, unless: the handler raised
        :class:`durable.NonRetryable`; the error is one of ``discard_on`` (exception types, or
        reason classes such as ``"validation"``); or ``retry_on`` is given and the error is none
        of it. Such an error ends the task ``failed`` at once (``on_discard`` is told
        ``non_retryable``). A result that is not JSON is not retried either.

        Raises:
            ValueError: an option out of range (``global_limit`` below 1, a bad ``retry``).
            InvalidQueueName: ``queue`` is not a valid queue name.

        Example:
            ```python
            @app.task(name="charge", queue="payments", max_attempts=5, retry=Fixed(30))
            async def charge(ctx: TaskContext, params: dict) -> str:
                return await ctx.step("charge", charge_card, params["order"])

            @app.task  # bare: named after the function, on the default queue
            def resize(ctx: SyncTaskContext, params: dict) -> None: ...
            ```
        """
        global_limit = options.get("global_limit")
        if global_limit is not None and global_limit < 1:  # refused before the decorator is used
            raise ValueError("global_limit must be at least 1")
        check_key_limit(options.get("concurrency_key"), options.get("key_limit"))

        if fn is not None:
            return self.registry.register(fn, **options)
        return cast(TaskDecorator, functools.partial(self.registry.register, **options))

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Durable:
        if self._entered == 0:
            if self.sync.is_open:
                raise DurableError(
                    "app.sync is open: this app's pool belongs to its background event loop —"
                    " close it (app.sync.close()) or use another Durable(...) from async code"
                )
            await self.client.__aenter__()  # its task group: exited in __aexit__, this task
        self._entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered -= 1
        if self._entered == 0:
            await self.client.__aexit__(exc_type, exc, tb)  # shields what it must

    # --- producing ------------------------------------------------------------------------------

    async def spawn(
        self,
        task_name: str,
        params: Any = None,
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> TaskHandle[Any]:
        """Spawn by name. A producer that does not register the task must name its ``queue``;
        the options of ``@app.task`` apply only where the task is registered. With
        ``connection`` (your asyncpg connection, or SQLAlchemy's async connection or session on
        asyncpg) the spawn runs in your transaction: the task exists only if you commit.

        The keyword options are those of ``SpawnOptions`` (``idempotency_key``, ``delay`` or
        ``at``, ``priority``, ``tags``, ``depends_on``, ...), overriding the definition's.

        Raises:
            UnknownTask: the task is not registered here and no ``queue`` was given.
            NotSerializable: ``params`` is not JSON, or is over 16 MiB.
            InvalidArgument: an option the protocol refuses.

        Example:
            ```python
            handle = await app.spawn("charge", {"order": 7}, queue="payments",
                                     idempotency_key="order-7")
            ```
        """
        return await self.registry.spawn(
            task_name, params, queue=queue, connection=connection, **options
        )

    async def spawn_many(
        self,
        items: Sequence[tuple[TaskDefinition[Any, Any] | str, Any]],
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> list[TaskHandle[Any]]:
        """Spawn ``items`` — ``(task, params)`` pairs of one queue, each with the options of its
        ``@app.task`` and ``options`` on top — in one statement and one transaction (yours, with
        ``connection``); the handles in the order given."""
        return await self.registry.spawn_many(items, queue=queue, connection=connection, **options)

    async def spawn_with(
        self,
        queue: str,
        task_name: str,
        params: Any,
        options: SpawnOptions,
        *,
        connection: SpawnConnection | None = None,
    ) -> TaskHandle[Any]:
        """Spawn on ``queue`` with a ready-made ``SpawnOptions``, which replace the definition's
        options (used by the CLI and by tools that build options themselves).
        """
        return await self.registry.spawn_with(
            queue, task_name, params, options, connection=connection
        )

    # --- results and operations -----------------------------------------------------------------

    async def result(
        self, task_id: uuid.UUID, *, timeout: float | None = None, queue: str | None = None
    ) -> TaskResult[Any]:
        """Wait for the task to end (woken by NOTIFY); raise :class:`TaskFailed` unless done.

        Raises:
            TaskFailed: the task ended ``failed`` or ``cancelled``.
            TimeoutError: it did not end within ``timeout`` seconds.
            TaskNotFound: no such task.
        """
        return await self.client.result(queue, task_id, timeout=timeout)

    async def cancel(self, task_id: uuid.UUID, *, queue: str | None = None) -> None:
        """Cancel an unfinished task, and its live children spawned with the default
        ``on_parent_cancel="cancel"``; a running handler stops at its worker's next lease renewal.

        Raises:
            TaskNotFound: no such task.
            InvalidState: the task already ended.
        """
        await self.client.cancel(queue, task_id)
        log.info("task.cancelled", task_id=str(task_id), queue=queue)

    async def retry(
        self, task_id: uuid.UUID, *, queue: str | None = None, revive_dependents: bool = True
    ) -> RetryInfo:
        """A new run for a failed or cancelled task, resuming after its last checkpoint; with
        ``revive_dependents`` (the default) the dependents its end cancelled are revived too
        (``RetryInfo.revived``), each waiting for its dependencies again.

        Raises:
            TaskNotFound: no such task.
            InvalidState: the task has not ended, ended ``completed`` or was discarded, or (for
                a dependent) one of its dependencies is still failed or cancelled: retry that
                one first.
        """
        info = await self.client.retry(queue, task_id, revive_dependents=revive_dependents)
        log.info(
            "task.retried",
            task_id=str(task_id),
            run_id=str(info.run_id),
            revived=[str(d.task_id) for d in info.revived],
        )
        return info

    async def get_task(self, task_id: uuid.UUID, *, queue: str | None = None) -> TaskRecord:
        """Read a task with every run, oldest first (``TaskRecord``).

        Raises:
            TaskNotFound: no such task (or retention pruned it).
        """
        return await self.client.get_task(queue, task_id)

    async def emit_event(self, name: str, payload: Any = None) -> int:
        """Emit event ``name``: every task waiting in ``ctx.await_event(name)`` wakes with
        ``payload``, and a later wait receives it at once. Returns how many tasks were woken."""
        woken = await self.client.emit_event(name, payload)
        log.info("event.emitted", event_name=name, woken=woken)
        return woken

    async def send(self, task_id: uuid.UUID, topic: str, payload: Any = None) -> bool:
        """Send ``payload`` (any JSON) to task ``task_id`` on ``topic``, for its
        ``ctx.recv(topic)``: stored until received, in the order sent, each message received
        once. True when it woke the task (it was waiting in ``recv`` on the topic).
        :class:`TaskNotFound` for an unknown task, :class:`InvalidState` for one that ended.

        Example:
            ```python
            woke = await app.send(task_id, "decision", {"approved": True})
            ```
        """
        woke = await self.client.send_message(task_id, topic, payload)
        log.info("message.sent", task_id=str(task_id), topic=topic, woke=woke)
        return woke

    async def get_state(self, task_id: uuid.UUID, key: str, *, queue: str | None = None) -> Any:
        """What task ``task_id`` last published under ``key`` with ``ctx.set_state`` (None when
        it published nothing under it)."""
        return (await self.client.get_state(queue, task_id, key)).get(key)

    async def batch(
        self,
        items: Sequence[tuple[TaskDefinition[Any, Any] | str, Any]],
        *,
        on_complete: TaskDefinition[Any, Any] | str | None = None,
        on_exhausted: TaskDefinition[Any, Any] | str | None = None,
        callback_params: Any = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchInfo:
        """Spawn ``items`` — ``(task, params)`` pairs, each task spawned with the options of its
        ``@app.task`` — as one batch, in one transaction. Once every member ended (completed,
        failed for good or cancelled), one callback task is spawned, once: ``on_complete`` if
        every member completed, else ``on_exhausted``; it gets ``{"batch_id", "total", "counts":
        {"completed", "failed", "cancelled"}, "params": callback_params}``. ``queue`` is where
        tasks this app does not register run; ``idempotency_key`` makes a second call return the
        first batch."""
        return await self.registry.spawn_batch(
            items,
            on_complete=on_complete,
            on_exhausted=on_exhausted,
            callback_params=callback_params,
            queue=queue,
            idempotency_key=idempotency_key,
        )

    async def get_batch(self, batch_id: uuid.UUID) -> BatchRecord:
        """A batch: how many members, how many still pending, the counts per end state, and its
        callback's task once every member ended."""
        return await self.client.get_batch(batch_id)

    async def cancel_by(
        self,
        *,
        queue: str | None = None,
        task_name: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> int:
        """Cancel every live task matching all the given filters (at least one); how many."""
        count = await self.client.cancel_by(queue, task_name, tags)
        log.info("tasks.cancelled", queue=queue, task_name=task_name, tags=tags, count=count)
        return count

    # --- the operator's view ---------------------------------------------------------------------

    async def failed_work(
        self,
        queue: str | None = None,
        task_name: str | None = None,
        reason: FailureReason | str | None = None,
        since: datetime | float | timedelta | None = None,
        limit: int | None = 100,
        *,
        state: FailedWorkState | str | None = None,
        reason_class: ReasonClass | str | None = None,
        error_type: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[FailedWork]:
        """Failed work, newest failure first: tasks that are dead (``failed``) or will run
        again (``retrying``), with their reason, reason class, error and recovery."""
        return await self.client.failed_work(
            queue,
            task_name,
            reason,
            since,
            limit,
            state=state,
            reason_class=reason_class,
            error_type=error_type,
            tags=tags,
        )

    async def failure_groups(
        self,
        queue: str | None = None,
        task_name: str | None = None,
        reason: FailureReason | str | None = None,
        since: datetime | float | timedelta | None = None,
        *,
        state: FailedWorkState | str | None = None,
        reason_class: ReasonClass | str | None = None,
        error_type: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[FailureGroup]:
        """Failed work grouped by failure reason x error type x task name, with counts and
        first/last seen (the filters are :meth:`failed_work`'s)."""
        return await self.client.failure_groups(
            queue,
            task_name,
            reason,
            since,
            state=state,
            reason_class=reason_class,
            error_type=error_type,
            tags=tags,
        )

    async def list_tasks(self, **filters: Unpack[TaskFilters]) -> TaskPage:
        """A page of the task browser, newest first: see :meth:`Client.list_tasks` for the
        filters (queue, task name, live state, tags, spawn time, task id, idempotency key,
        params containment) and the page (``before``, ``limit``)."""
        return await self.client.list_tasks(**filters)

    async def replay(
        self, task_id: uuid.UUID, *, from_step: str | None = None, queue: str | None = None
    ) -> SpawnInfo:
        """Run a finished task again from its last checkpoint (or from step ``from_step``).

        Raises:
            TaskNotFound: no such task.
            InvalidState: the task has not ended, or was discarded.
        """
        info = await self.client.replay(queue, task_id, from_step)
        log.info(
            "task.replayed", task_id=str(task_id), from_step=from_step, run_id=str(info.run_id)
        )
        return info

    async def discard(self, task_id: uuid.UUID, *, queue: str | None = None) -> TaskState:
        """End a task for good (a live one is cancelled); returns its state before."""
        before = await self.client.discard(queue, task_id)
        log.info("task.discarded", task_id=str(task_id), before=str(before))
        return before

    def prune_rules(self) -> list[PruneRule]:
        """The retention rules of this app and its tasks (empty: nothing is pruned by age)."""
        return self.registry.prune_rules()

    def cron(
        self,
        expr: str,
        task: TaskDefinition[Any, Any] | str,
        params: Any = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        timezone: str = "UTC",
        missed: Missed | str = Missed.SKIP,
        **options: Unpack[SpawnKwargs],
    ) -> CronJob:
        """Spawn ``task`` with ``params`` at every slot of cron expression ``expr`` read in IANA
        ``timezone``, once per slot however many workers fire it: every worker serving the
        task's queue runs the scheduler. ``missed`` (``skip``, ``latest`` or ``all``) says what
        happens to the slots that pass while no worker runs (see :mod:`durable.runtime.cron`).
        Declared in code: the workers that run this app write it to the database when they
        start, where ``pause_cron`` and ``resume_cron`` act on it."""
        return self.registry.add_cron(
            expr,
            task,
            params,
            name=name,
            queue=queue,
            timezone=timezone,
            missed=missed,
            **options,
        )

    async def add_cron(
        self,
        name: str,
        expr: str,
        task: TaskDefinition[Any, Any] | str,
        params: Any = None,
        *,
        queue: str | None = None,
        timezone: str = "UTC",
        missed: Missed | str = Missed.SKIP,
        **options: Unpack[SpawnKwargs],
    ) -> bool:
        """Add (True) or update (False) cron schedule ``name`` at run time: stored in the
        database, fired by the workers serving the task's queue (within ``cron_refresh``
        seconds), whatever code they run. Refuses the name of a schedule declared in code."""
        target, task_name, resolved = self.registry.resolve(task, queue, options, params=params)
        created = await self.client.set_cron_schedule(
            name,
            expr,
            task_name,
            params,
            queue=target,
            timezone=timezone,
            missed=missed,
            options=resolved,
        )
        log.info("cron.added" if created else "cron.updated", cron=name, queue=target)
        return created

    async def remove_cron(self, name: str) -> None:
        """Remove cron schedule ``name`` (:class:`ScheduleNotFound` if there is none)."""
        await self.client.remove_cron_schedule(name)
        log.info("cron.removed", cron=name)

    async def pause_cron(self, name: str) -> None:
        """Pause cron schedule ``name``, declared in code or added at run time: it fires
        nothing until :meth:`resume_cron`."""
        await self.client.pause_cron_schedule(name)
        log.info("cron.paused", cron=name)

    async def resume_cron(self, name: str) -> None:
        """Resume cron schedule ``name`` from now on (the slots it missed are not caught up)."""
        await self.client.resume_cron_schedule(name)
        log.info("cron.resumed", cron=name)

    async def cron_schedules(self, queues: Sequence[str] | None = None) -> list[CronSchedule]:
        """The cron schedules stored in the database (of ``queues``; None: all), by name."""
        return (await self.client.list_cron_schedules(queues)).schedules

    async def pause_queue(self, queue: str) -> bool:
        """Pause ``queue``: it accepts spawns, but no worker claims from it until
        :meth:`resume_queue` (running tasks finish). Stored in the database: it outlives
        restarts. True when it was not paused already."""
        changed = await self.client.pause_queue(queue)
        log.info("queue.paused", queue=queue, changed=changed)
        return changed

    async def resume_queue(self, queue: str) -> bool:
        """Resume ``queue``: its workers claim from it again at once. True when it was
        paused."""
        changed = await self.client.resume_queue(queue)
        log.info("queue.resumed", queue=queue, changed=changed)
        return changed

    async def paused_queues(self) -> list[PausedQueue]:
        """The paused queues, by name."""
        return await self.client.list_paused_queues()

    # --- consuming ------------------------------------------------------------------------------

    async def run_worker(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        claim_timeout: float | None = None,
        *,
        handle_signals: bool = True,
        task_status: anyio.abc.TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
        **options: Unpack[WorkerKwargs],
    ) -> None:
        """Claim and run tasks until cancelled or, with ``handle_signals``, SIGTERM/SIGINT drain.

        ``queues`` defaults to every queue a registered task uses; the other options and their
        defaults are :class:`~durable.runtime.worker.WorkerOptions`'s (``concurrency=10``,
        ``claim_timeout=60.0``, ...). With ``metrics_port`` (0: any free port) the worker serves
        Prometheus metrics at ``http://metrics_host:port/metrics`` (needs ``durable[metrics]``),
        refreshing queue depths every ``metrics_interval`` seconds.

        Raises:
            InvalidArgument: a metrics port without the ``metrics`` extra, or already in use.

        Example:
            ```python
            async with anyio.create_task_group() as tg:
                worker = await tg.start(app.run_worker)  # returns once the worker claims
                ...
                worker.drain()  # stop claiming, finish what runs, then return
            ```
        """
        if queues is None:
            queues = sorted({d.queue for d in self.registry.values()}) or [self.default_queue]
        worker_options = WorkerOptions(queues=tuple(queues), **options)
        worker_options = dataclasses.replace(
            worker_options,
            concurrency=worker_options.concurrency if concurrency is None else concurrency,
            claim_timeout=worker_options.claim_timeout if claim_timeout is None else claim_timeout,
        )
        async with self:
            worker = Worker(self.registry, worker_options)
            async with anyio.create_task_group() as tg:
                if handle_signals and threading.current_thread() is threading.main_thread():
                    tg.start_soon(_drain_on_signal, worker)
                await tg.start(_run_then_stop, worker, tg.cancel_scope)
                task_status.started(worker)


async def _run_then_stop(
    worker: Worker,
    scope: anyio.CancelScope,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # Not in a finally: cancelling the scope there would swallow an error the worker raises
    # before it started (tg.start() would see a cancelled scope, not the error).
    await worker.run(task_status=task_status)
    scope.cancel()  # the worker is done: stop watching signals


async def _drain_on_signal(worker: Worker) -> None:
    """The first SIGTERM/SIGINT drains gracefully; a second one releases running tasks now."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("worker.signal", worker=worker.worker_id, signal=signal.Signals(signum).name)
            worker.drain(force=worker.draining)
