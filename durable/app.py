"""Durable: the task registry, ``@app.task``, the app's lifecycle, spawning by name, results."""

from __future__ import annotations

import inspect
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Unpack, overload

import anyio
import structlog

from durable.client import Client
from durable.cron import CronExpr, CronJob
from durable.errors import TaskFailed, UnknownTask, check_queue_name
from durable.records import (
    Cancellation,
    FailedWork,
    FailedWorkState,
    FailureGroup,
    FailureReason,
    RateLimit,
    ReasonClass,
    Retention,
    SpawnInfo,
    SpawnKwargs,
    SpawnOptions,
    TaskRecord,
    TaskResult,
    TaskState,
    Unique,
    spawn_options,
)
from durable.retention import PruneRule, prune_rules
from durable.retry import Backoff, RetryStrategy
from durable.store import CHANNEL_DONE, Listener
from durable.worker import Worker, WorkerOptions

log = structlog.get_logger("durable")

Handler = Callable[..., Any]
#: ``on_discard(ctx, error)``, sync or async: the task failed for good.
DiscardHook = Callable[[Any, BaseException], Any]

#: How often a result() waiter checks that the LISTEN connection is still open (no query).
LISTENER_CHECK_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDefinition:
    """A registered handler and its default spawn options."""

    app: Durable
    name: str
    fn: Handler
    queue: str
    max_attempts: int | None = None
    retry: RetryStrategy | None = None
    timeout: float | timedelta | None = None
    heartbeat_timeout: float | timedelta | None = None
    priority: int = 0
    headers: dict[str, Any] | None = None
    backoff: Backoff | None = None
    tags: Sequence[str] | None = None
    unique: Unique | None = None
    cancellation: Cancellation | None = None
    global_limit: int | None = None
    rate_limit: RateLimit | None = None
    on_discard: DiscardHook | None = None
    retention: Retention | None = None

    async def __call__(self, ctx: Any, params: Any) -> Any:
        """Call the handler directly (no durability): useful in unit tests of the handler."""
        result = self.fn(ctx, params)
        if inspect.isawaitable(result):
            return await result
        return result

    def options(self, **overrides: Unpack[SpawnKwargs]) -> SpawnOptions:
        defaults = {
            "max_attempts": self.max_attempts,
            "retry": self.retry,
            "timeout": self.timeout,
            "heartbeat_timeout": self.heartbeat_timeout,
            "priority": self.priority,
            "headers": self.headers,
            "tags": self.tags,
            "unique": self.unique,
            "cancellation": self.cancellation,
            "on_discard": self.on_discard is not None,
        }
        return spawn_options(defaults, overrides)

    async def spawn(
        self, params: Any = None, *, queue: str | None = None, **options: Unpack[SpawnKwargs]
    ) -> TaskHandle:
        """Spawn this task; options given here override the ones on ``@app.task``."""
        return await self.app.spawn_with(
            queue or self.queue, self.name, params, self.options(**options)
        )


@dataclass(slots=True)
class TaskHandle:
    """What a spawn returns: the task's identity, and ``await handle.result()``."""

    app: Durable
    queue: str
    task_name: str
    task_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    created: bool

    async def result(self, timeout: float | None = None) -> TaskResult:
        """Wait until the task ends; raise :class:`TaskFailed` if it failed or was cancelled."""
        return await self.app.result(self.task_id, timeout=timeout, queue=self.queue)


@dataclass(slots=True)
class _ResultWaiters:
    events: dict[uuid.UUID, set[anyio.Event]] = field(default_factory=dict)

    def notify(self, payload: str) -> None:
        """A ``durable_done`` payload: one task id, or several separated by commas."""
        for text in payload.split(","):
            try:
                task_id = uuid.UUID(text)
            except ValueError:
                continue
            for event in self.events.pop(task_id, ()):
                event.set()


class Durable:
    """The application: register tasks, spawn them, await results, run workers.

    ``Durable(dsn)`` > ``$DURABLE_DSN`` > the embedded PostgreSQL under ``$DURABLE_HOME``.
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
    ) -> None:
        if retention_interval <= 0:
            raise ValueError("retention_interval must be positive")
        self.default_queue = check_queue_name(default_queue)
        #: How long finished tasks are kept; workers prune every ``retention_interval`` s.
        self.retention = retention
        self.retention_interval = retention_interval
        self.client = Client(
            dsn,
            migrate=migrate,
            pool_size=pool_size,
            statement_cache_size=statement_cache_size,
            command_timeout=command_timeout,
        )
        self.registry: dict[str, TaskDefinition] = {}
        self.crons: list[CronJob] = []
        self._waiters = _ResultWaiters()
        self._listener: Listener | None = None
        self._listener_lock = anyio.Lock()
        self._entered = 0

    # --- registry -------------------------------------------------------------------------------

    @overload
    def task(self, fn: Handler, /) -> TaskDefinition: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        retry: RetryStrategy | None = None,
        timeout: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        priority: int = 0,
        headers: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        tags: Sequence[str] | None = None,
        unique: Unique | None = None,
        cancellation: Cancellation | None = None,
        global_limit: int | None = None,
        rate_limit: RateLimit | None = None,
        on_discard: DiscardHook | None = None,
        retention: Retention | None = None,
    ) -> Callable[[Handler], TaskDefinition]: ...

    def task(
        self,
        fn: Handler | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        retry: RetryStrategy | None = None,
        timeout: float | timedelta | None = None,
        heartbeat_timeout: float | timedelta | None = None,
        priority: int = 0,
        headers: dict[str, Any] | None = None,
        backoff: Backoff | None = None,
        tags: Sequence[str] | None = None,
        unique: Unique | None = None,
        cancellation: Cancellation | None = None,
        global_limit: int | None = None,
        rate_limit: RateLimit | None = None,
        on_discard: DiscardHook | None = None,
        retention: Retention | None = None,
    ) -> TaskDefinition | Callable[[Handler], TaskDefinition]:
        """Register a handler ``(ctx, params) -> JSON``; bare or with options.

        The task's stored name is its contract: pass ``name=`` for anything long-lived, so that
        renaming the function does not strand tasks in flight.

        ``global_limit`` (runs at once) and ``rate_limit`` (starts per period) hold across every
        worker: a worker serving the task's queue records them when it starts. ``on_discard(ctx,
        error)`` is called once when the task fails for good (its last attempt failed).
        ``retention`` overrides the app's for this task name (see :class:`durable.Retention`).
        """
        if global_limit is not None and global_limit < 1:
            raise ValueError("global_limit must be at least 1")

        def register(handler: Handler) -> TaskDefinition:
            task_name = name or handler.__name__
            if task_name in self.registry:
                raise ValueError(f"a task named {task_name!r} is already registered")
            definition = TaskDefinition(
                app=self,
                name=task_name,
                fn=handler,
                queue=check_queue_name(queue or self.default_queue),
                max_attempts=max_attempts,
                retry=retry,
                timeout=timeout,
                heartbeat_timeout=heartbeat_timeout,
                priority=priority,
                headers=headers,
                backoff=backoff,
                tags=tags,
                unique=unique,
                cancellation=cancellation,
                global_limit=global_limit,
                rate_limit=rate_limit,
                on_discard=on_discard,
                retention=retention,
            )
            # validate the defaults now rather than at the first spawn
            definition.options().to_json()
            self.registry[task_name] = definition
            return definition

        return register(fn) if fn is not None else register

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Durable:
        if self._entered == 0:
            await self.client.connect()
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
            with anyio.CancelScope(shield=True):
                listener, self._listener = self._listener, None
                if listener is not None:
                    await listener.close()
                await self.client.close()

    # --- producing ------------------------------------------------------------------------------

    async def spawn(
        self,
        task_name: str,
        params: Any = None,
        *,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> TaskHandle:
        """Spawn by name. A producer that does not register the task must name its ``queue``;
        the options of ``@app.task`` apply only where the task is registered."""
        definition = self.registry.get(task_name)
        if definition is not None:
            return await self.spawn_with(
                queue or definition.queue, task_name, params, definition.options(**options)
            )
        if queue is None:
            raise UnknownTask(task_name)
        return await self.spawn_with(queue, task_name, params, spawn_options({}, options))

    async def spawn_with(
        self, queue: str, task_name: str, params: Any, options: SpawnOptions
    ) -> TaskHandle:
        info: SpawnInfo = await self.client.spawn(queue, task_name, params, options)
        log.info(
            "task.spawned",
            queue=queue,
            task_name=task_name,
            task_id=str(info.task_id),
            run_id=str(info.run_id),
            attempt=info.attempt,
            created=info.created,
        )
        return TaskHandle(
            self, queue, task_name, info.task_id, info.run_id, info.attempt, info.created
        )

    # --- results and operations -----------------------------------------------------------------

    async def result(
        self, task_id: uuid.UUID, *, timeout: float | None = None, queue: str | None = None
    ) -> TaskResult:
        """Wait for the task to end (woken by NOTIFY); raise :class:`TaskFailed` unless done."""
        await self._ensure_listener()
        with anyio.fail_after(timeout):
            while True:
                event = anyio.Event()
                self._waiters.events.setdefault(task_id, set()).add(event)
                try:
                    outcome = await self.client.get_result(queue, task_id)
                    if outcome.state.finished:
                        break
                    await self._until_notified(event)
                finally:
                    waiting = self._waiters.events.get(task_id)
                    if waiting is not None:
                        waiting.discard(event)
                        if not waiting:
                            del self._waiters.events[task_id]
        if outcome.state is not TaskState.COMPLETED:
            raise TaskFailed(task_id, str(outcome.state), outcome.failure)
        return outcome

    async def _until_notified(self, event: anyio.Event) -> None:
        """Wait for the task's notification, or for the LISTEN connection to have been lost and
        re-opened (a notification may have been missed meanwhile): no query per waiting task."""
        while True:
            with anyio.move_on_after(LISTENER_CHECK_S):
                await event.wait()
                return
            if self._listener is None or self._listener.closed:
                await self._ensure_listener()
                return

    async def _ensure_listener(self) -> None:
        async with self._listener_lock:
            if self._listener is None or self._listener.closed:
                self._listener = await self.client.listen({CHANNEL_DONE: self._waiters.notify})

    async def cancel(self, task_id: uuid.UUID, *, queue: str | None = None) -> None:
        await self.client.cancel(queue, task_id)
        log.info("task.cancelled", task_id=str(task_id), queue=queue)

    async def retry(self, task_id: uuid.UUID, *, queue: str | None = None) -> SpawnInfo:
        return await self.client.retry(queue, task_id)

    async def get_task(self, task_id: uuid.UUID, *, queue: str | None = None) -> TaskRecord:
        return await self.client.get_task(queue, task_id)

    async def emit_event(self, name: str, payload: Any = None) -> int:
        """Emit event ``name``: every task waiting in ``ctx.await_event(name)`` wakes with
        ``payload``, and a later wait receives it at once. Returns how many tasks were woken."""
        woken = await self.client.emit_event(name, payload)
        log.info("event.emitted", event_name=name, woken=woken)
        return woken

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

    async def replay(
        self, task_id: uuid.UUID, *, from_step: str | None = None, queue: str | None = None
    ) -> SpawnInfo:
        """Run a finished task again from its last checkpoint (or from step ``from_step``)."""
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
        per_task = {d.name: d.retention for d in self.registry.values() if d.retention}
        return prune_rules(self.retention, per_task)

    def cron(
        self,
        expr: str,
        task: TaskDefinition | str,
        params: Any = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> CronJob:
        """Spawn ``task`` with ``params`` at every slot of cron expression ``expr`` (UTC), once
        per slot however many workers run the scheduler: every worker serving the task's queue
        runs it, and the slot's idempotency key keeps one spawn per slot."""
        definition = self.registry.get(task) if isinstance(task, str) else task
        task_name = task if isinstance(task, str) else task.name
        task_queue = queue or (definition.queue if definition else None)
        if task_queue is None:
            raise UnknownTask(task_name)
        job = CronJob(
            name=name or f"{task_name}:{expr}",
            schedule=CronExpr.parse(expr),
            task_name=task_name,
            queue=check_queue_name(task_queue),
            params=params,
            options=definition.options(**options) if definition else spawn_options({}, options),
        )
        if any(existing.name == job.name for existing in self.crons):
            raise ValueError(f"a cron job named {job.name!r} is already registered")
        self.crons.append(job)
        return job

    # --- consuming ------------------------------------------------------------------------------

    async def run_worker(
        self,
        queues: list[str] | tuple[str, ...] | None = None,
        concurrency: int = 10,
        claim_timeout: float = 60.0,
        *,
        poll_interval: float = 2.0,
        grace_period: float = 30.0,
        unknown_task_defer: float = 60.0,
        worker_id: str | None = None,
        handle_signals: bool = True,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        metrics_interval: float = 5.0,
        task_status: anyio.abc.TaskStatus[Worker] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Claim and run tasks until cancelled or, with ``handle_signals``, SIGTERM/SIGINT drain.

        ``queues`` defaults to every queue a registered task uses. With ``metrics_port`` (0: any
        free port) the worker serves Prometheus metrics at ``http://metrics_host:port/metrics``
        (needs ``durable[metrics]``), refreshing queue depths every ``metrics_interval`` seconds.
        """
        if queues is None:
            queues = sorted({d.queue for d in self.registry.values()}) or [self.default_queue]
        options = WorkerOptions(
            queues=tuple(queues),
            concurrency=concurrency,
            claim_timeout=claim_timeout,
            poll_interval=poll_interval,
            grace_period=grace_period,
            unknown_task_defer=unknown_task_defer,
            worker_id=worker_id,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            metrics_interval=metrics_interval,
        )
        async with self:
            worker = Worker(self, options)
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
