"""The low-level client: the SQL protocol one-to-one, typed results.

Services that drive runs themselves use it directly; the app and the worker are built on it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, TypedDict, TypeVar

import anyio

from durable.client import instruments
from durable.client.results import ResultWaiters
from durable.client.spawns import ALONE_OPTIONS, Spawn, SpawnBatcher, SpawnBatches
from durable.protocol import durations, embedded
from durable.protocol.codec import encode_json
from durable.protocol.connections import SpawnConnection, driver_connection
from durable.protocol.cron import CronExpr, Missed, ScheduleSource
from durable.protocol.dsn import resolve_dsn
from durable.protocol.errors import (
    BatcherClosed,
    DatabaseUnavailable,
    DurableError,
    InvalidArgument,
    ResultTimeout,
    ScheduleNotFound,
    TaskFailed,
    check_name,
    check_queue_name,
)
from durable.protocol.log import get_logger
from durable.protocol.records import (
    BatchInfo,
    BatchRecord,
    Checkpoint,
    Claim,
    CronSchedules,
    DependencyResult,
    Dependent,
    FailedRun,
    FailedWork,
    FailedWorkState,
    FailureGroup,
    FailureReason,
    FlowMinute,
    PausedQueue,
    QueueCount,
    QueueDepth,
    RateLimit,
    ReasonClass,
    RetryInfo,
    SpawnInfo,
    SpawnOptions,
    TaskPage,
    TaskRecord,
    TaskResult,
    TaskState,
    WorkerInfo,
)
from durable.protocol.store import (
    CHANNEL_DONE,
    CHANNEL_WORK,
    Listener,
    Store,
    spawn_many_on,
    spawn_on,
)

#: How long reading the task for a ResultTimeout's message may take.
RESULT_TIMEOUT_READ_S = 1.0
#: The days ahead of today whose history partitions are made before they are needed.
HISTORY_DAYS_AHEAD = 3

log = get_logger()

__all__ = ["CHANNEL_DONE", "CHANNEL_WORK", "Client", "TaskFilters"]

_NO_OPTIONS = SpawnOptions()

_E = TypeVar("_E", bound=StrEnum)


class TaskFilters(TypedDict, total=False):
    """The task browser's filters and page, as ``Client.list_tasks`` takes them (and
    ``Durable.list_tasks`` passes them on)."""

    queue: str | None
    task_name: str | None
    state: TaskState | str | None
    tags: Sequence[str] | None
    since: datetime | float | timedelta | None
    until: datetime | None
    task_id: uuid.UUID | None
    idempotency_key: str | None
    params: Any
    before: uuid.UUID | None
    limit: int


class Client:
    """``async with Client(dsn) as client: await client.spawn(...)``.

    With no DSN and no ``$DURABLE_DSN`` it starts (or joins) the embedded PostgreSQL under
    ``$DURABLE_HOME`` (default ``./.durable``), which needs the ``durable[embedded]`` extra
    (without it, connecting raises ``DatabaseUnavailable``). Connecting applies migrations unless
    ``migrate=False``, in which case an old schema is refused.

    ``async with`` also opens the client's task group, closed on exit: it runs the spawn
    batcher, through which spawns that other coroutines make while one is in flight share one
    statement and one commit (:mod:`durable.client.spawns`). A client connected with bare
    :meth:`connect` (and closed with :meth:`close`, perhaps from another task, as a blocking
    portal's calls are) has no task group: it sends each spawn on its own.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        migrate: bool = True,
        pool_size: int = 10,
        statement_cache_size: int = 100,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 30.0,
        server_settings: Mapping[str, str] | None = None,
    ) -> None:
        self._dsn = resolve_dsn(dsn)
        self._migrate = migrate
        self._pool_size = pool_size
        self._statement_cache_size = statement_cache_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._server_settings = dict(server_settings or {})
        self._store: Store | None = None
        self._embedded: embedded.EmbeddedServer | None = None
        self._results = ResultWaiters(self.listen)
        self._tasks: contextlib.AsyncExitStack | None = None  # the client's task group
        self._spawns: SpawnBatcher | None = None
        self._spawned: SpawnBatcher | None = None  # the last batcher, for its counts

    # --- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool (starting or joining the embedded server when no DSN is given) and migrate,
        or, with ``migrate=False``, check the schema and the protocol. Connecting twice does
        nothing.

        Raises:
            DatabaseUnavailable: the DSN is bad, the server is unreachable, or there is no DSN and
                no ``embedded`` extra.
            SchemaError: with ``migrate=False``, the database needs a migration (run
                ``durable migrate``), or its schema is newer than this package.
        """
        if self._store is not None:
            return
        dsn = self._dsn
        if dsn is None:
            self._embedded = await embedded.start_embedded()
            dsn = self._embedded.dsn
            log.info("embedded.using", home=str(self._embedded.home))
        try:
            self._store = await Store.open(
                dsn,
                max_size=self._pool_size,
                min_size=min(2, self._pool_size),
                migrate=self._migrate,
                statement_cache_size=self._statement_cache_size,
                connect_timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                server_settings=self._server_settings,
            )
        except BaseException:
            await self._stop_embedded()
            raise

    async def _start_tasks(self) -> None:
        """Open the client's task group and start the spawn batcher in it."""
        async with contextlib.AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            spawns = SpawnBatcher(lambda: self.store)
            await tg.start(spawns.run)
            stack.callback(tg.cancel_scope.cancel)  # on close: the batcher stops (see close)
            self._tasks, self._spawns, self._spawned = stack.pop_all(), spawns, spawns

    async def _stop_tasks(self) -> None:
        """Close the client's task group: the batcher writes the spawns it was given, then
        stops; later spawns go on their own."""
        tasks, self._tasks = self._tasks, None
        self._spawns = None
        if tasks is not None:
            await tasks.aclose()

    async def close(self) -> None:
        """Stop the client's task group, then close its connections (shielded: a cancelled
        caller still closes them)."""
        try:
            await self._stop_tasks()
        finally:
            with anyio.CancelScope(shield=True):
                await self._results.close()
                store, self._store = self._store, None
                if store is not None:
                    await store.close()
                await self._stop_embedded()

    @property
    def spawn_batches(self) -> SpawnBatches:
        """What the spawn batcher did since the client last connected (spawns sent on their
        own, at low load, are not counted)."""
        spawns = self._spawned
        if spawns is None:
            return SpawnBatches(0, 0, 0)
        return SpawnBatches(spawns.writes, spawns.items, spawns.refused)

    async def _stop_embedded(self) -> None:
        server, self._embedded = self._embedded, None
        if server is not None:
            await embedded.stop_embedded(server)

    async def __aenter__(self) -> Client:
        """Connect and open the client's task group (closed on exit, in the same task)."""
        await self.connect()
        if self._tasks is None:
            try:
                await self._start_tasks()
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._stop_tasks()  # here, in the task that opened it, whatever close does
        finally:
            await self.close()

    @property
    def connected(self) -> bool:
        """Whether the pool is open (``connect`` ran, ``close`` did not)."""
        return self._store is not None

    @property
    def store(self) -> Store:
        """The protocol access layer under this client (internal: one method per SQL function).

        Raises:
            DatabaseUnavailable: the client is not connected.
        """
        if self._store is None:
            raise DatabaseUnavailable("the client is not connected — use `async with` or connect()")
        return self._store

    @property
    def dsn(self) -> str:
        """The DSN the client is connected to (the embedded server's, when it started one)."""
        return self.store.dsn

    async def open_side_store(self) -> Store:
        """Another one-connection store with this client's settings (for another thread's loop)."""
        return await Store.open(
            self.dsn,
            min_size=1,
            max_size=1,
            migrate=False,
            statement_cache_size=self._statement_cache_size,
            connect_timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings,
        )

    @property
    def embedded_home(self) -> str | None:
        """Where the embedded server keeps its data, when this client uses it."""
        return str(self._embedded.home) if self._embedded else None

    # --- the protocol ---------------------------------------------------------------------------

    async def spawn(
        self,
        queue: str,
        task_name: str,
        params: Any,
        options: SpawnOptions | None = None,
        *,
        connection: SpawnConnection | None = None,
    ) -> SpawnInfo:
        """Spawn a task: ``durable.spawn(queue, task_name, params, options)``, one round trip.

        Returns ``SpawnInfo(task_id, run_id, attempt, created)``; ``created`` is False when the
        idempotency key or the ``unique`` option found an existing task. The task gets only the
        options given: the options of an ``@app.task`` elsewhere do not apply here. With
        ``connection`` (the caller's asyncpg connection, or SQLAlchemy's async connection or
        session on asyncpg), the spawn runs on it, in the caller's transaction: the task exists
        only if the caller commits (this client need not be connected).

        Raises:
            InvalidQueueName: ``queue`` is not a valid queue name.
            NotSerializable: ``params`` (or a header) is not JSON, or is over 16 MiB.
            InvalidArgument: an option the protocol refuses (an unknown dependency, say).

        Example:
            ```python
            info = await client.spawn("emails", "send_welcome", {"user_id": 7},
                                      SpawnOptions(idempotency_key="welcome-7"))
            ```
        """
        check_queue_name(queue)
        with instruments.spawn_tracer.spawning(queue, task_name) as traced:
            document = traced.options(options or _NO_OPTIONS).to_json()
            info = await self._send_spawn(queue, task_name, params, document, connection)
            traced.spawned(info)
        return info

    async def _send_spawn(
        self,
        queue: str,
        task_name: str,
        params: Any,
        options: dict[str, Any],
        connection: SpawnConnection | None,
    ) -> SpawnInfo:
        """The one place that decides how a spawn travels: on the caller's ``connection``, in
        its transaction (never batched: it cannot share another's commit); else through the
        spawn batcher while the client's task group runs it (alone at low load, batched under
        load; alone, too, when its options lock other rows); else on its own. Params and
        options are checked in the caller's task, so a bad spawn fails alone."""
        if connection is not None:
            conn = await driver_connection(connection)
            return await spawn_on(conn, queue, task_name, params, options)
        encoded = encode_json(params, "params")
        document = encode_json(options, "options")
        spawns = self._spawns
        if spawns is not None and isinstance(task_name, str):
            key = options.get("idempotency_key")
            spawn = Spawn(task_name, encoded, document, key if isinstance(key, str) else None)
            try:
                return await spawns.spawn(queue, spawn, alone=not ALONE_OPTIONS.isdisjoint(options))
            except BatcherClosed:
                pass  # closing: on its own
        return await self.store.spawn(queue, task_name, encoded, document)

    async def spawn_many(
        self,
        queue: str,
        items: Sequence[tuple[str, Any] | tuple[str, Any, SpawnOptions | None]],
        *,
        connection: SpawnConnection | None = None,
    ) -> list[SpawnInfo]:
        """Spawn many tasks in one round trip: ``items`` are ``(task_name, params[, options])``;
        ``connection`` as for :meth:`spawn`."""
        check_queue_name(queue)
        with instruments.spawn_tracer.spawning_many(queue, (item[0] for item in items)) as traced:
            no_options = traced.options(_NO_OPTIONS).to_json()  # shared by items without any
            prepared = [
                (
                    item[0],
                    item[1],
                    traced.options(item[2]).to_json() if len(item) > 2 and item[2] else no_options,
                )
                for item in items
            ]
            if connection is None:
                infos = await self.store.spawn_many(queue, prepared)
            else:
                conn = await driver_connection(connection)
                infos = await spawn_many_on(conn, queue, prepared)
            traced.spawned_many(infos)
        return infos

    async def claim(
        self,
        queue: str,
        worker_id: str,
        claim_timeout: float | timedelta = 60.0,
        qty: int = 1,
        *,
        code_version: str | None = None,
        started: Sequence[uuid.UUID] = (),
        skip_names: Sequence[str] = (),
        slots: int | None = None,
    ) -> list[Claim]:
        """Claim up to ``qty`` runs of ``queue`` under a lease of ``claim_timeout``; each run
        records ``code_version``, the code the worker runs (shown by ``durable show``).

        The runs come back in priority order; with ``slots`` (the worker's free handler slots),
        the first ``slots`` count as started from their claim and the others are reserved until
        the worker reports that their handlers started: ``started`` lists this worker's runs
        whose handlers started since its last report (here or in :meth:`extend_claims`). A
        reserved run whose worker dies goes back to its queue without spending an attempt.
        Without ``slots``, every claimed run counts as started. Runs of the task names in
        ``skip_names`` are left for other workers (names this worker's code does not know)."""
        check_queue_name(queue)
        return await self.store.claim(
            queue,
            worker_id,
            durations.seconds(claim_timeout, what="claim_timeout"),
            qty,
            code_version,
            started,
            skip_names,
            slots,
        )

    async def complete(self, queue: str, run_id: uuid.UUID, result: Any = None) -> None:
        """Complete a run with ``result``: the task ends ``completed``.

        Raises:
            LeaseLost: the run no longer holds its lease; nothing was written.
        """
        await self.store.complete(check_queue_name(queue), run_id, result)

    async def complete_runs(
        self, queue: str, outcomes: Sequence[tuple[uuid.UUID, Any]]
    ) -> dict[uuid.UUID, bool]:
        """Complete many runs in one statement: ``outcomes`` are ``(run_id, result)``. Maps each
        run to whether it completed; a run whose lease was lost is False and nothing is written
        for it (no exception: the others complete)."""
        return await self.store.complete_runs(check_queue_name(queue), outcomes)

    async def fail(
        self,
        queue: str,
        run_id: uuid.UUID,
        error: Mapping[str, Any] | None,
        reason: FailureReason | str = FailureReason.ERRORED,
        retry_at: datetime | None = None,
        *,
        retry_in: float | timedelta | None = None,
    ) -> uuid.UUID | None:
        """Fail the run; returns the next run's id, or None when the task ended.

        ``retry_at`` (a time) or ``retry_in`` (a delay from the database's clock) override the
        task's retry strategy for the next attempt."""
        return await self.store.fail(
            check_queue_name(queue),
            run_id,
            error,
            FailureReason(reason),
            retry_at,
            durations.seconds(retry_in, what="retry_in"),
        )

    async def extend_claim(
        self, queue: str, run_id: uuid.UUID, extend_by: float | timedelta | None = None
    ) -> datetime:
        """Extend a run's lease by ``extend_by`` seconds (default: the claim's timeout); returns the
        new expiry.

        Raises:
            LeaseLost: the run no longer holds its lease.
        """
        return await self.store.extend_claim(
            check_queue_name(queue), run_id, durations.seconds(extend_by, what="extend_by")
        )

    async def set_checkpoint(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        value: Any,
        extend_by: float | timedelta | None = None,
    ) -> None:
        """Record step ``step`` of a run with ``value`` and extend the run's lease.

        Raises:
            LeaseLost: the run no longer holds its lease; nothing was written.
            NotSerializable: ``value`` is not JSON.
        """
        await self.store.set_checkpoint(
            check_queue_name(queue),
            run_id,
            step,
            value,
            durations.seconds(extend_by, what="extend_by"),
        )

    async def set_checkpoints(
        self, queue: str, items: Sequence[tuple[uuid.UUID, str, Any]]
    ) -> list[bool]:
        """Record many ``(run_id, step, value)`` checkpoints in one statement, extending each
        run's lease. For each item, whether it was recorded; an item whose run lost its lease is
        False and nothing is written for it (no exception: the others are recorded)."""
        return await self.store.set_checkpoints(check_queue_name(queue), items)

    async def get_checkpoints(self, queue: str, task_id: uuid.UUID) -> list[Checkpoint]:
        """Every recorded step of a task, oldest first (``Checkpoint`` rows)."""
        return await self.store.get_checkpoints(check_queue_name(queue), task_id)

    async def schedule_run(
        self, queue: str, run_id: uuid.UUID, defer_seconds: float | timedelta
    ) -> uuid.UUID:
        """Hand a run back without spending an attempt: a new run of the same attempt becomes
        claimable after ``defer_seconds``. Returns the new run's id.

        Raises:
            LeaseLost: the run no longer holds its lease.
        """
        return await self.store.schedule_run(
            check_queue_name(queue), run_id, durations.seconds(defer_seconds, what="defer_seconds")
        )

    async def cancel(self, queue: str | None, task_id: uuid.UUID) -> None:
        """Cancel an unfinished task (and its children spawned with ``on_parent_cancel="cancel"``);
        ``queue`` None finds it on any queue.

        Raises:
            TaskNotFound: no such task.
            InvalidState: the task already ended.
        """
        await self.store.cancel(_optional_queue(queue), task_id)

    async def retry(
        self,
        queue: str | None,
        task_id: uuid.UUID,
        options: SpawnOptions | None = None,
        *,
        revive_dependents: bool = True,
    ) -> RetryInfo:
        """A new run for a failed or cancelled task (its checkpoints are kept). With
        ``revive_dependents``, the dependents its end cancelled are revived with it, down the
        chain, each waiting for its dependencies again (:meth:`revivable_dependents` lists
        them); ``RetryInfo.revived`` says which."""
        return await self.store.retry(
            _optional_queue(queue),
            task_id,
            (options or _NO_OPTIONS).to_json(),
            revive_dependents,
        )

    async def revivable_dependents(self, task_ids: Sequence[uuid.UUID]) -> list[Dependent]:
        """The dependents that a retry of each of ``task_ids`` would revive: cancelled because
        it ended (or, down the chain, because a dependent of it did), and blocked by nothing
        else that failed or was cancelled. Oldest first."""
        return await self.store.revivable_dependents(task_ids)

    async def get_task(self, queue: str | None, task_id: uuid.UUID) -> TaskRecord:
        """Read a task with its runs, oldest first (``queue`` None: any queue).

        Raises:
            TaskNotFound: no such task (or retention pruned it).
        """
        return await self.store.get_task(_optional_queue(queue), task_id)

    async def get_result(self, queue: str | None, task_id: uuid.UUID) -> TaskResult[Any]:
        """The task's outcome now, without waiting: ``TaskResult(state, result, failure)``.

        Raises:
            TaskNotFound: no such task.
        """
        return await self.store.get_result(_optional_queue(queue), task_id)

    async def result(
        self, queue: str | None, task_id: uuid.UUID, *, timeout: float | None = None
    ) -> TaskResult[Any]:
        """Wait until the task ends (woken by NOTIFY) and return its outcome; raise
        :class:`TaskFailed` if it failed or was cancelled, :class:`ResultTimeout` (a
        ``TimeoutError`` naming the task and its state) after ``timeout``."""
        try:
            with anyio.fail_after(timeout):
                outcome = await self._results.wait(task_id, lambda: self.get_result(queue, task_id))
        except TimeoutError:
            raise await self._result_timeout(queue, task_id, timeout) from None
        if outcome.state is not TaskState.COMPLETED:
            raise TaskFailed(task_id, str(outcome.state), outcome.failure)
        return outcome

    async def _result_timeout(
        self, queue: str | None, task_id: uuid.UUID, timeout: float | None
    ) -> ResultTimeout:
        """The error of a wait that timed out: the task's name and live state, read now (left
        out when they cannot be read within a second)."""
        name = state = None
        with anyio.move_on_after(RESULT_TIMEOUT_READ_S):
            try:
                record = await self.get_task(queue, task_id)
            except DurableError:
                pass
            else:
                name, state = record.task_name, str(record.state)
                if record.state is TaskState.PENDING and record.runs:
                    state = str(record.runs[-1].state)  # its live run's: running, sleeping, ...
        return ResultTimeout(task_id, name, state, timeout or 0.0)

    # --- parking: sleep, events, children; progress; limits -------------------------------------

    async def sleep(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        *,
        seconds: float | timedelta | None = None,
        until: datetime | None = None,
    ) -> bool:
        """Durable sleep as step ``step`` of the run: True when the run was parked (it ended
        'suspended'; a sleeping run of the task wakes at the recorded time), False when the
        step's time has already come."""
        if until is not None and until.tzinfo is None:
            raise InvalidArgument("sleep_until needs a timezone-aware datetime")
        return await self.store.sleep(
            check_queue_name(queue),
            run_id,
            step,
            durations.seconds(seconds, what="sleep seconds"),
            until,
        )

    async def await_event(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        event: str,
        timeout: float | timedelta | None = None,
    ) -> tuple[str, Any]:
        """Wait for ``event`` as step ``step``: ``("received", payload)``, ``("timeout", None)``
        or ``("suspended", None)`` (the run was parked until the event or the timeout)."""
        return await self.store.await_event(
            check_queue_name(queue), run_id, step, event, durations.seconds(timeout, what="timeout")
        )

    async def await_task(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        child: uuid.UUID,
        timeout: float | timedelta | None = None,
    ) -> tuple[str, Any]:
        """Wait for task ``child`` to end as step ``step``: ``("done", {state, result,
        failure})``, ``("timeout", None)`` or ``("suspended", None)``."""
        return await self.store.await_task(
            check_queue_name(queue), run_id, step, child, durations.seconds(timeout, what="timeout")
        )

    async def await_tasks(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        children: Sequence[uuid.UUID],
        timeout: float | timedelta | None = None,
    ) -> tuple[str, Any]:
        """Wait for every task of ``children`` to end as step ``step``: ``("done", [{task_id,
        state, result, failure}, ...])`` in the order given, ``("timeout", None)`` or
        ``("suspended", None)`` (the run was parked until the last of them ends)."""
        return await self.store.await_tasks(
            check_queue_name(queue),
            run_id,
            step,
            children,
            durations.seconds(timeout, what="timeout"),
        )

    async def emit_event(self, name: str, payload: Any = None) -> int:
        """Store event ``name`` (a later wait receives it at once) and wake every task waiting
        for it; returns how many were woken."""
        return await self.store.emit_event(name, payload)

    async def receive_message(
        self,
        queue: str,
        run_id: uuid.UUID,
        step: str,
        topic: str,
        timeout: float | timedelta | None = None,
    ) -> tuple[str, Any]:
        """Receive the oldest message on ``topic`` as step ``step``: ``("received", payload)``,
        ``("timeout", None)`` or ``("suspended", None)`` (parked until a message or the
        timeout)."""
        return await self.store.receive_message(
            check_queue_name(queue),
            run_id,
            step,
            check_name(topic, "topic"),
            durations.seconds(timeout, what="timeout"),
        )

    async def decide_patch(
        self, queue: str, run_id: uuid.UUID, step: str, passed: Sequence[str]
    ) -> bool:
        """Whether the run takes the new path at patch step ``step`` (``$patch:<change id>``),
        decided once for its task: False when the task's history (checkpoints, waits) goes beyond
        the steps ``passed`` in this run so far (it went past this point before the patch)."""
        return await self.store.decide_patch(check_queue_name(queue), run_id, step, passed)

    async def set_state(self, queue: str, run_id: uuid.UUID, key: str, value: Any) -> None:
        """Publish ``value`` under ``key`` for the run's task (the last write wins); fenced like
        a checkpoint, and extends the lease."""
        await self.store.set_state(check_queue_name(queue), run_id, check_name(key, "key"), value)

    async def set_progress(
        self, queue: str, run_id: uuid.UUID, pct: float, detail: Any = None
    ) -> None:
        """Record a run's progress (``pct`` from 0 to 100, any JSON ``detail``); extends its lease.

        Raises:
            LeaseLost: the run no longer holds its lease.
        """
        await self.store.set_progress(check_queue_name(queue), run_id, float(pct), detail)

    async def cancel_by(
        self,
        queue: str | None = None,
        task_name: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> int:
        """Cancel every live task matching all the given filters; returns how many."""
        return await self.store.cancel_by(_optional_queue(queue), task_name, tags)

    async def set_limit(
        self,
        queue: str,
        task_name: str,
        *,
        concurrency: int | None = None,
        rate: RateLimit | None = None,
        key_limit: int | None = None,
    ) -> None:
        """Record the cluster-wide limits of ``task_name`` on ``queue``: at most
        ``concurrency`` runs at once and at most ``key_limit`` at once per concurrency key
        (both across every queue), at most ``rate.allowed`` starts per ``rate.period`` on
        ``queue``. None of them: no limit."""
        await self.store.set_limit(
            check_queue_name(queue),
            task_name,
            concurrency,
            rate.allowed if rate else None,
            durations.seconds(rate.period, what="rate period") if rate else None,
            key_limit,
        )

    # --- to and from one task: messages, published state, batches, dependencies' results -------

    async def send_message(self, task_id: uuid.UUID, topic: str, payload: Any = None) -> bool:
        """Send ``payload`` to task ``task_id`` on ``topic``: a receive of the topic waiting now
        gets it (True: it woke the task), else it is stored for the task's next receive of the
        topic. :class:`TaskNotFound` for an unknown task, :class:`InvalidState` for one that
        ended."""
        return await self.store.send_message(task_id, check_name(topic, "topic"), payload)

    async def get_state(
        self, queue: str | None, task_id: uuid.UUID, key: str | None = None
    ) -> dict[str, Any]:
        """What task ``task_id`` published with ``set_state``: every key and its value, or only
        ``key`` (an empty dict when it published nothing under it)."""
        return await self.store.get_state(
            _optional_queue(queue), task_id, None if key is None else check_name(key, "key")
        )

    async def spawn_batch(
        self,
        items: Sequence[tuple[str, str, Any, SpawnOptions | None]],
        *,
        on_complete: tuple[str, str, Any, SpawnOptions | None] | None = None,
        on_exhausted: tuple[str, str, Any, SpawnOptions | None] | None = None,
        idempotency_key: str | None = None,
    ) -> BatchInfo:
        """Spawn ``items`` (``(queue, task_name, params, options)``) as one batch, in one round
        trip: once every member ended, ``on_complete`` is spawned if all of them completed, else
        ``on_exhausted`` (each ``(queue, task_name, params, options)``; its params become
        ``{batch_id, total, counts, params}``)."""
        if not items:
            raise InvalidArgument("a batch needs at least one item")
        callbacks = {
            name: _spawn_document(spec)
            for name, spec in (("on_complete", on_complete), ("on_exhausted", on_exhausted))
            if spec is not None
        }
        options = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
        queue = check_queue_name(items[0][0])  # the span's queue: a batch's usual one
        with instruments.spawn_tracer.spawning_many(queue, (item[1] for item in items)) as traced:
            documents = [
                _spawn_document((q, name, params, traced.options(opts or _NO_OPTIONS)))
                for q, name, params, opts in items
            ]
            batch = await self.store.spawn_batch(documents, callbacks, options)
            traced.spawned_many(batch.members)
        return batch

    async def get_batch(self, batch_id: uuid.UUID) -> BatchRecord:
        """A batch's counts, what is still pending, and its callback's task once it ended
        (:class:`BatchNotFound` for an unknown id)."""
        return await self.store.get_batch(batch_id)

    async def get_dependency_results(
        self, queue: str | None, task_id: uuid.UUID
    ) -> list[DependencyResult]:
        """The dependencies (``depends_on``) of task ``task_id`` with their results, in the
        order they were spawned."""
        return await self.store.get_dependency_results(_optional_queue(queue), task_id)

    # --- paused queues and cron schedules ---------------------------------------------------------

    async def pause_queue(self, queue: str) -> bool:
        """Pause ``queue``: it accepts spawns, but no worker claims from it until
        :meth:`resume_queue` (running tasks go on). Stored, so it outlives restarts. True when
        it was not paused already."""
        return await self.store.pause_queue(check_queue_name(queue))

    async def resume_queue(self, queue: str) -> bool:
        """Resume ``queue`` and wake its workers; True when it was paused."""
        return await self.store.resume_queue(check_queue_name(queue))

    async def list_paused_queues(self) -> list[PausedQueue]:
        """The paused queues, by name."""
        return await self.store.list_paused_queues()

    async def set_cron_schedule(
        self,
        name: str,
        expr: str,
        task_name: str,
        params: Any = None,
        *,
        queue: str,
        timezone: str = "UTC",
        missed: Missed | str = Missed.SKIP,
        options: SpawnOptions | None = None,
        source: ScheduleSource | str = ScheduleSource.API,
    ) -> bool:
        """Add (True) or update (False) cron schedule ``name``: spawn ``task_name`` on ``queue``
        with ``params`` and ``options`` at every slot of ``expr`` in ``timezone``. The workers
        serving ``queue`` fire it, once per slot. Refuses a bad expression
        (:class:`InvalidArgument`), time zone (:class:`InvalidTimeZone`) or ``missed`` policy
        before anything is sent."""
        CronExpr.parse(expr, timezone)  # refused here, with the field named
        return await self.store.set_cron_schedule(
            name,
            expr,
            timezone,
            check_queue_name(queue),
            task_name,
            params,
            (options or _NO_OPTIONS).to_json(),
            str(_enum(Missed, missed, "missed")),
            str(_enum(ScheduleSource, source, "source")),
        )

    async def remove_cron_schedule(self, name: str) -> None:
        """Remove cron schedule ``name`` (the tasks it spawned stay); :class:`ScheduleNotFound`
        if there is none."""
        if not await self.store.remove_cron_schedule(name):
            raise ScheduleNotFound(name)

    async def pause_cron_schedule(self, name: str) -> None:
        """Pause cron schedule ``name``: it fires nothing until resumed."""
        if not await self.store.pause_cron_schedule(name):
            raise ScheduleNotFound(name)

    async def resume_cron_schedule(self, name: str) -> None:
        """Resume cron schedule ``name`` from now on: the slots that passed while it was paused
        are not caught up."""
        if not await self.store.resume_cron_schedule(name):
            raise ScheduleNotFound(name)

    async def list_cron_schedules(self, queues: Sequence[str] | None = None) -> CronSchedules:
        """The cron schedules of ``queues`` (None: all), by name, and the database's time."""
        return await self.store.list_cron_schedules(
            None if queues is None else [check_queue_name(q) for q in queues]
        )

    async def fire_cron(self, name: str, slot: datetime) -> tuple[uuid.UUID, bool] | None:
        """Fire slot ``slot`` of schedule ``name``: its task's id and whether this call created
        it (a slot fired before returns its task), or None when the schedule is paused or
        gone. Workers call it; see :mod:`durable.runtime.cron`."""
        if slot.tzinfo is None:
            raise InvalidArgument("a cron slot must be a timezone-aware datetime")
        return await self.store.fire_cron(name, slot)

    # --- workers and operators ------------------------------------------------------------------

    async def register_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        ttl: float,
        *,
        concurrency: int | None = None,
    ) -> None:
        """Record a worker as alive for ``ttl`` seconds (with its host, pid, queues and
        concurrency).
        """
        await self.store.register_worker(worker_id, host, pid, queues, ttl, concurrency)

    async def worker_heartbeat(self, worker_id: str, ttl: float) -> bool:
        """Renew a worker's liveness for ``ttl`` seconds; False when its registration was gone."""
        return await self.store.worker_heartbeat(worker_id, ttl)

    async def extend_claims(
        self,
        worker_id: str,
        run_ids: Sequence[uuid.UUID],
        worker_ttl: float,
        *,
        busy: int | None = None,
        ahead: int | None = None,
        started: Sequence[uuid.UUID] = (),
    ) -> list[uuid.UUID]:
        """Extend every listed lease of this worker and its liveness, recording how many of its
        slots are ``busy`` and how many runs it claimed ``ahead``, and that the runs
        ``started`` run their handlers (no longer reserved); return the lost runs."""
        return await self.store.extend_claims(worker_id, run_ids, worker_ttl, busy, ahead, started)

    async def stop_worker(self, worker_id: str) -> None:
        """Mark a worker stopped (the end of a drain)."""
        await self.store.stop_worker(worker_id)

    async def queue_counts(self, tags: Sequence[str] | None = None) -> list[QueueCount]:
        """Tasks per queue and state; with ``tags``, only tasks carrying all of them."""
        return await self.store.queue_counts(tags)

    async def list_failed_runs(
        self, queue: str | None = None, limit: int = 50, tags: Sequence[str] | None = None
    ) -> list[FailedRun]:
        """The newest failed runs (``limit``), on one queue or all, optionally of tasks carrying all
        ``tags``.
        """
        return await self.store.list_failed_runs(_optional_queue(queue), limit, tags)

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
        """Tasks whose latest failure is not behind them, newest failure first: dead ones
        (``state`` failed) and ones that will run again (retrying). ``since`` is a time, or a
        duration back from now; ``limit`` None returns every match."""
        if limit is not None and limit < 1:
            raise InvalidArgument("limit must be at least 1 (or None for every row)")
        return await self.store.failed_work(
            _optional_queue(queue),
            task_name,
            _enum(FailureReason, reason, "reason"),
            _since(since),
            limit,
            _enum(FailedWorkState, state, "state"),
            _enum(ReasonClass, reason_class, "reason_class"),
            error_type,
            tags,
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
        """Failed work grouped by failure reason x error type x task name (and queue), with
        counts and first/last seen; the most frequent first. The filters are failed_work's."""
        return await self.store.failure_groups(
            _optional_queue(queue),
            task_name,
            _enum(FailureReason, reason, "reason"),
            _since(since),
            _enum(FailedWorkState, state, "state"),
            _enum(ReasonClass, reason_class, "reason_class"),
            error_type,
            tags,
        )

    async def finished_counts(self, window_s: float | timedelta = 60.0) -> list[QueueCount]:
        """Tasks that ended within the last ``window_s`` seconds, per queue and end state."""
        return await self.store.finished_counts(durations.seconds(window_s, what="window_s"))

    # --- the console ----------------------------------------------------------------------------

    async def list_tasks(
        self,
        *,
        queue: str | None = None,
        task_name: str | None = None,
        state: TaskState | str | None = None,
        tags: Sequence[str] | None = None,
        since: datetime | float | timedelta | None = None,
        until: datetime | None = None,
        task_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        params: Any = None,
        before: uuid.UUID | None = None,
        limit: int = 50,
    ) -> TaskPage:
        """A page of tasks, newest first, matching every filter given: ``state`` is the live
        state (a live task's run's), ``tags`` all of them, ``since``/``until`` the spawn time (a
        time, or for ``since`` a duration back from now), ``params`` a JSON value the params
        contain (``@>``). ``before`` is the previous page's ``next_before``; ``limit`` 1 to
        1000."""
        if not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be between 1 and 1000, got {limit}")
        if until is not None and until.tzinfo is None:
            raise InvalidArgument("until must be timezone-aware")
        rows = await self.store.list_tasks(
            _optional_queue(queue),
            task_name,
            _enum(TaskState, state, "state"),
            tags,
            _since(since),
            until,
            task_id,
            idempotency_key,
            params,
            before,
            limit,
        )
        return TaskPage(tasks=rows, next_before=rows[-1].task_id if len(rows) == limit else None)

    async def queue_depth(self) -> list[QueueDepth]:
        """Per queue with live work: tasks pending, running and sleeping, the runs that could
        start now and how long the oldest of them has waited. Reads the live runs only."""
        return await self.store.queue_depth()

    async def list_workers(self, gone_within: float | timedelta = 3600.0) -> list[WorkerInfo]:
        """The workers alive, and those gone within ``gone_within`` seconds; alive first."""
        return await self.store.list_workers(durations.seconds(gone_within, what="gone_within"))

    async def roll_up_flow(self, max_minutes: int = 60) -> int:
        """Add the runs that ended since the last rollup to the flow over time (workers call it
        every few seconds; concurrent calls skip). Returns how many minute rows it added to."""
        if max_minutes < 1:
            raise InvalidArgument("max_minutes must be at least 1")
        return await self.store.roll_up_flow(max_minutes)

    async def flow(
        self, since: datetime | float | timedelta = 3600.0, *, step_s: int = 60
    ) -> list[FlowMinute]:
        """The runs that ended since ``since`` (a time, or a duration back from now), per step of
        ``step_s`` seconds (whole minutes, aligned on the epoch) and queue, oldest first; see
        :mod:`durable.client.flow` for series and percentiles. Reads the window's minutes."""
        start = _since(since)
        assert start is not None
        if step_s < 60 or step_s % 60:
            raise InvalidArgument(f"step_s must be a whole number of minutes, got {step_s}")
        return await self.store.flow(start, step_s)

    async def ended_counts(self, since: datetime | float | timedelta = 86400.0) -> list[QueueCount]:
        """Tasks that ended since ``since``, per queue and end state (failed: for good), from
        the flow over time: the cost of the window's minutes, not of its tasks."""
        start = _since(since)
        assert start is not None
        return await self.store.ended_counts(start)

    async def replay(
        self,
        queue: str | None,
        task_id: uuid.UUID,
        from_step: str | None = None,
        options: SpawnOptions | None = None,
    ) -> SpawnInfo:
        """Run a finished task again with a new run: it resumes after its last checkpoint, or,
        with ``from_step``, from that step (its checkpoint and every later one are dropped)."""
        return await self.store.replay(
            _optional_queue(queue), task_id, from_step, (options or _NO_OPTIONS).to_json()
        )

    async def discard(self, queue: str | None, task_id: uuid.UUID) -> TaskState:
        """End a task for good: a live task is cancelled; it leaves the failed work and can no
        longer be retried or replayed. Returns its state before."""
        return await self.store.discard(_optional_queue(queue), task_id)

    async def prune_tasks(
        self,
        older_than: float | timedelta,
        states: Sequence[TaskState | str] = (TaskState.COMPLETED,),
        *,
        batch: int = 1000,
        task_names: Sequence[str] | None = None,
        except_names: Sequence[str] | None = None,
    ) -> int:
        """Delete finished tasks older than ``older_than`` (with their runs and checkpoints) in
        batches of ``batch``, each its own short transaction; return how many. ``task_names``:
        only those; ``except_names``: all but those. Live tasks are never deleted by age."""
        age = durations.seconds(older_than, what="older_than")
        if batch < 1:
            raise InvalidArgument("batch must be at least 1")
        names = None if task_names is None else list(task_names)
        excluded = None if except_names is None else list(except_names)
        total = 0
        while deleted := await self.store.prune_tasks(
            age, [str(s) for s in states], batch, names, excluded
        ):
            total += deleted
            if deleted < batch:
                break
        return total

    async def prune_bookkeeping(self, older_than: float | timedelta, *, batch: int = 1000) -> int:
        """Delete events, partition turns and stopped workers older than ``older_than``."""
        age = durations.seconds(older_than, what="older_than")
        total = 0
        while deleted := await self.store.prune_bookkeeping(age, batch):
            total += deleted
        return total

    async def move_to_history(self, *, batch: int = 5000, min_age: float | timedelta = 0.0) -> int:
        """Move one batch of the tasks that ended more than ``min_age`` ago (at most ``batch``,
        with their runs and checkpoints) from the hot tables to history; how many moved. Workers
        call it every ``history_interval`` seconds; :meth:`move_all_to_history` moves all now."""
        if batch < 1:
            raise InvalidArgument("batch must be at least 1")
        age = durations.seconds(min_age, what="min_age")
        return await self.store.move_to_history(batch, age)

    async def move_all_to_history(self, *, batch: int = 5000) -> int:
        """Move every finished task to history, batch after batch (each its own short
        transaction); how many moved. ``durable migrate --move-history`` calls it."""
        await self.store.ensure_history_partitions(HISTORY_DAYS_AHEAD)
        total = 0
        while moved := await self.move_to_history(batch=batch):
            total += moved
        return total

    async def ensure_history_partitions(self, days_ahead: int = 3) -> int:
        """Create the history partitions of today, the next ``days_ahead`` days and the earlier
        days whose finished tasks wait in the hot tables; how many days were added."""
        if days_ahead < 0:
            raise InvalidArgument("days_ahead must be at least 0")
        return await self.store.ensure_history_partitions(days_ahead)

    async def drop_history_partitions(self, older_than: float | timedelta) -> int:
        """Drop the day partitions of history whose every task ended more than ``older_than``
        ago (and what is kept of those tasks elsewhere); how many days went. Only for an age
        past which every finished task is to go, whatever its name and state."""
        age = durations.seconds(older_than, what="older_than")
        return await self.store.drop_history_partitions(age)

    async def refresh_hot_stats(self) -> bool:
        """``ANALYZE`` the hot tasks and runs when they hold far more rows than their statistics
        say (``durable.refresh_hot_stats``: after a vacuum found them empty, a burst is planned
        for an empty table until the next analyze); whether it did. Any role the protocol
        serves may call it; the workers do every round of their history upkeep."""
        return await self.store.refresh_hot_stats()

    async def may_vacuum_hot_tables(self) -> bool:
        """Whether this connection's role may VACUUM the hot tables and the history tables (it
        owns them: one owner, the role that migrated), as the workers do after moves and after
        retention."""
        return await self.store.may_vacuum_hot_tables()

    async def vacuum_hot_tables(self) -> None:
        """``VACUUM (SKIP_LOCKED, TRUNCATE false)`` the hot tables (runs, tasks, checkpoints); the
        role must own them (:meth:`may_vacuum_hot_tables`)."""
        await self.store.vacuum_hot_tables()

    async def vacuum_history_tables(self) -> None:
        """``VACUUM (SKIP_LOCKED, TRUNCATE false)`` the history tables, after retention deleted
        rows there; the role must own them (:meth:`may_vacuum_hot_tables` checks both)."""
        await self.store.vacuum_history_tables()

    async def listen(self, handlers: Mapping[str, Any]) -> Listener:
        """Listen on notification channels (``durable_work``, ``durable_done``) with one dedicated
        connection held until the listener is closed.
        """
        return await self.store.listen(handlers)


def _since(value: datetime | float | timedelta | None) -> datetime | None:
    """A time, or a duration back from now, as a time."""
    if value is None or isinstance(value, datetime):
        if value is not None and value.tzinfo is None:
            raise InvalidArgument("since must be timezone-aware (or a duration back from now)")
        return value
    return datetime.now(UTC) - timedelta(seconds=durations.seconds(value, what="since"))


def _enum(kind: type[_E], value: _E | str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return str(kind(value))
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidArgument(f"{what} {value!r} is not one of: {allowed}") from None


def _optional_queue(queue: str | None) -> str | None:
    return None if queue is None else check_queue_name(queue)


def _spawn_document(spec: tuple[str, str, Any, SpawnOptions | None]) -> dict[str, Any]:
    """One spawn, as the protocol's batch functions take it: ``{queue, task_name, params,
    options}``."""
    queue, task_name, params, options = spec
    return {
        "queue": check_queue_name(queue),
        "task_name": task_name,
        "params": params,
        "options": (options or _NO_OPTIONS).to_json(),
    }
