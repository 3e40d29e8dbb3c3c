"""The registry: the tasks, cron jobs and retention rules an app declares, and the client they
spawn through. The runtime (worker, executor, context, cron) is given a registry, never the app.

It is also the one place that turns a task, given by definition or by name, and the options of
one spawn into a queue and a :class:`SpawnOptions` (:meth:`Registry.resolve`): ``app.spawn``,
``ctx.spawn``, ``app.cron`` and ``definition.spawn`` all go through it.
"""

from __future__ import annotations

import dataclasses
import inspect
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, Unpack, cast, overload

from durable.client import Client
from durable.protocol.connections import SpawnConnection
from durable.protocol.cron import CronExpr, Missed
from durable.protocol.errors import InvalidArgument, UnknownTask, check_queue_name
from durable.protocol.failures import ErrorMatch, check_error_matches
from durable.protocol.log import get_logger
from durable.protocol.records import (
    BatchInfo,
    DefinitionOptions,
    RateLimit,
    ReasonClass,
    Retention,
    SpawnInfo,
    SpawnKwargs,
    SpawnOptions,
    TaskResult,
    spawn_options,
)
from durable.protocol.retry import Backoff
from durable.runtime.cron import CronJob
from durable.runtime.retention import PruneRule, prune_rules
from durable.runtime.versions import check_version, derive_version

log = get_logger()

Handler = Callable[..., Any]
#: ``on_discard(ctx, error)``, sync or async: the task ended without completing (failed for
#: good, or cancelled); ``error`` is a :class:`~durable.protocol.errors.TaskDiscarded`.
DiscardHook = Callable[[Any, BaseException], Any]
#: ``concurrency_key(params) -> str``: the key a spawn's run counts under (``key_limit``).
ConcurrencyKey = Callable[[Any], str]

#: A task's params type (its handler's second parameter) and result type (what it returns).
P = TypeVar("P")
R = TypeVar("R")


#: The spawn options a definition sets (the others of TaskKwargs are its own).
_DEFINITION_OPTIONS = frozenset(DefinitionOptions.__annotations__)


class TaskKwargs(DefinitionOptions, total=False):
    """What ``@app.task`` takes: the spawn options every spawn of the task gets, and the options
    only a definition has."""

    name: str | None
    queue: str | None
    backoff: Backoff | None
    retry_on: Sequence[ErrorMatch] | None
    discard_on: Sequence[ErrorMatch] | None
    global_limit: int | None
    rate_limit: RateLimit | None
    concurrency_key: ConcurrencyKey | None
    key_limit: int | None
    on_discard: DiscardHook | None
    retention: Retention | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDefinition(Generic[P, R]):
    """A registered handler, its queue and the options every spawn of it gets.

    Typed from the handler: ``TaskDefinition[P, R]`` spawns with params of type ``P`` and its
    handles' results are ``R``."""

    registry: Registry = field(repr=False, compare=False)
    name: str
    fn: Handler
    queue: str
    #: The spawn options of ``@app.task``; a spawn's own options go on top.
    defaults: SpawnOptions = field(default_factory=SpawnOptions)
    backoff: Backoff | None = None
    #: The only errors retried (exception types, reason classes); None: every error.
    retry_on: tuple[ErrorMatch, ...] | None = None
    #: Errors that end the task ``failed`` now, without a retry.
    discard_on: tuple[ErrorMatch, ...] = ()
    global_limit: int | None = None
    rate_limit: RateLimit | None = None
    #: A spawn's concurrency key, from its params (``lambda p: p["tenant"]``): at most
    #: ``key_limit`` runs of this task name per key at once, across every worker and queue.
    concurrency_key: ConcurrencyKey | None = None
    key_limit: int | None = None
    on_discard: DiscardHook | None = None
    retention: Retention | None = None

    async def __call__(self, ctx: Any, params: P) -> R:
        """Call the handler directly (no durability): useful in unit tests of the handler."""
        result = self.fn(ctx, params)
        if inspect.isawaitable(result):
            return cast(R, await result)
        return cast(R, result)

    def options(self, **overrides: Unpack[SpawnKwargs]) -> SpawnOptions:
        """The options of one spawn: this definition's, with ``overrides`` on top."""
        return self.defaults.merged(overrides)

    @overload
    async def spawn(
        self: TaskDefinition[None, R],
        params: None = None,
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> TaskHandle[R]: ...

    @overload
    async def spawn(
        self,
        params: P,
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> TaskHandle[R]: ...

    async def spawn(
        self,
        params: Any = None,
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> TaskHandle[R]:
        """Spawn this task; options given here override the ones on ``@app.task``. With
        ``connection`` (your asyncpg connection, or SQLAlchemy's async connection or session),
        the spawn runs in your transaction: the task exists only if you commit.

        Returns a ``TaskHandle`` whose ``created`` is False when an idempotency key or the
        ``unique`` option found an existing task.

        Raises:
            NotSerializable: ``params`` (or a header) is not JSON, or is over 16 MiB.
            InvalidArgument: an option the protocol refuses (an unknown ``depends_on`` id, say).
            DatabaseUnavailable: PostgreSQL cannot be reached; nothing was written.

        Example:
            ```python
            handle = await send_welcome.spawn({"user_id": 7}, idempotency_key="welcome-7", delay=60)
            ```
        """
        handle = await self.registry.spawn(
            self, params, queue=queue, connection=connection, **options
        )
        return cast("TaskHandle[R]", handle)

    async def spawn_many(
        self,
        params: Sequence[P],
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> list[TaskHandle[R]]:
        """Spawn this task once per item of ``params``, in one statement (one transaction, or
        yours with ``connection``); the handles in the order given."""
        handles = await self.registry.spawn_many(
            [(self, p) for p in params], queue=queue, connection=connection, **options
        )
        return cast("list[TaskHandle[R]]", handles)


@dataclass(slots=True)
class TaskHandle(Generic[R]):
    """What a spawn returns: the task's identity, and ``await handle.result()``."""

    client: Client = field(repr=False, compare=False)
    queue: str
    task_name: str
    task_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    created: bool

    async def result(self, timeout: float | None = None) -> TaskResult[R]:
        """Wait until the task ends; raise :class:`TaskFailed` if it failed or was cancelled.

        Raises:
            TaskFailed: the task ended ``failed`` or ``cancelled`` (``.failure`` says why).
            TimeoutError: it did not end within ``timeout`` seconds.

        Example:
            ```python
            outcome = await handle.result(timeout=30)
            print(outcome.state, outcome.result)
            ```
        """
        outcome = await self.client.result(self.queue, self.task_id, timeout=timeout)
        return cast("TaskResult[R]", outcome)


class Registry(Mapping[str, "TaskDefinition[Any, Any]"]):
    """Task definitions by name, cron jobs and retention rules; ``client`` spawns them."""

    def __init__(
        self,
        client: Client,
        *,
        default_queue: str = "default",
        retention: Retention | None = None,
        retention_interval: float = 60.0,
        version: str | None = None,
    ) -> None:
        if retention_interval <= 0:
            raise ValueError("retention_interval must be positive")
        self._version = None if version is None else check_version(version)
        self.client = client
        self.default_queue = check_queue_name(default_queue)
        #: How long finished tasks are kept; workers prune every ``retention_interval`` s.
        self.retention = retention
        self.retention_interval = retention_interval
        self.crons: list[CronJob] = []
        self._tasks: dict[str, TaskDefinition[Any, Any]] = {}

    @property
    def code_version(self) -> str:
        """The version of this code: the one declared (``Durable(version=...)``), else one
        derived from the source of the registered handlers. Each run records its worker's."""
        if self._version is not None:
            return self._version
        return derive_version((d.name, d.fn) for d in self._tasks.values())

    def __getitem__(self, name: str) -> TaskDefinition[Any, Any]:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def register(self, fn: Handler, **options: Unpack[TaskKwargs]) -> TaskDefinition[Any, Any]:
        """Register handler ``fn`` under ``name`` (default: its ``__name__``)."""
        global_limit = options.get("global_limit")
        if global_limit is not None and global_limit < 1:
            raise ValueError("global_limit must be at least 1")
        check_key_limit(options.get("concurrency_key"), options.get("key_limit"))
        task_name = options.get("name") or fn.__name__
        if task_name in self._tasks:
            raise ValueError(f"a task named {task_name!r} is already registered")
        on_discard = options.get("on_discard")
        retry_on = check_error_matches(options.get("retry_on"), "retry_on")
        discard_on = check_error_matches(options.get("discard_on"), "discard_on") or ()
        spawn_defaults = {
            k: v for k, v in options.items() if k in DefinitionOptions.__annotations__
        }
        # the database applies the reason classes too (to a crash as well): every class of
        # discard_on, and retry_on when it lists classes only (with an exception type in it,
        # only this worker can tell which failures it retries)
        discard_classes = [m for m in discard_on if isinstance(m, ReasonClass)]
        if discard_classes:
            spawn_defaults["discard_on"] = discard_classes
        if retry_on is not None and all(isinstance(m, ReasonClass) for m in retry_on):
            spawn_defaults["retry_on"] = list(retry_on)
        definition: TaskDefinition[Any, Any] = TaskDefinition(
            registry=self,
            name=task_name,
            fn=fn,
            queue=check_queue_name(options.get("queue") or self.default_queue),
            defaults=spawn_options({**spawn_defaults, "on_discard": on_discard is not None}),
            backoff=options.get("backoff"),
            retry_on=retry_on,
            discard_on=discard_on,
            global_limit=global_limit,
            rate_limit=options.get("rate_limit"),
            concurrency_key=options.get("concurrency_key"),
            key_limit=options.get("key_limit"),
            on_discard=on_discard,
            retention=options.get("retention"),
        )
        definition.defaults.to_json()  # validate the defaults now rather than at the first spawn
        self._tasks[task_name] = definition
        return definition

    def resolve(
        self,
        task: TaskDefinition[Any, Any] | str,
        queue: str | None,
        overrides: Mapping[str, Any],
        *,
        fallback_queue: str | None = None,
        params: Any = None,
    ) -> tuple[str, str, SpawnOptions]:
        """The queue, task name and options of a spawn of ``task`` with ``params``: a
        registered task gets its definition's queue and options under the ones given (and its
        concurrency key from ``params``, unless one is given); an unknown one runs on ``queue``,
        else ``fallback_queue``, with only the options given (:class:`UnknownTask` if neither
        queue is known)."""
        definition = self._tasks.get(task) if isinstance(task, str) else task
        task_name = task if isinstance(task, str) else task.name
        if definition is not None:
            options = definition.defaults.merged(overrides)
            if definition.concurrency_key is not None and options.concurrency_key is None:
                options = dataclasses.replace(
                    options, concurrency_key=_key_of(definition, task_name, params)
                )
            return queue or definition.queue, task_name, options
        target = queue or fallback_queue
        if target is None:
            raise UnknownTask(task_name)
        return target, task_name, spawn_options(overrides)

    async def spawn(
        self,
        task: TaskDefinition[Any, Any] | str,
        params: Any = None,
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> TaskHandle[Any]:
        """Spawn ``task`` (see :meth:`resolve`), on ``connection`` when given."""
        target, task_name, resolved = self.resolve(task, queue, options, params=params)
        return await self.spawn_with(target, task_name, params, resolved, connection=connection)

    async def spawn_with(
        self,
        queue: str,
        task_name: str,
        params: Any,
        options: SpawnOptions,
        *,
        connection: SpawnConnection | None = None,
    ) -> TaskHandle[Any]:
        """Spawn with options resolved already."""
        info: SpawnInfo = await self.client.spawn(
            queue, task_name, params, options, connection=connection
        )
        log.info(
            "task.spawned",
            queue=queue,
            task_name=task_name,
            task_id=str(info.task_id),
            run_id=str(info.run_id),
            attempt=info.attempt,
            created=info.created,
            in_transaction=connection is not None,
        )
        return TaskHandle(
            self.client, queue, task_name, info.task_id, info.run_id, info.attempt, info.created
        )

    async def spawn_many(
        self,
        items: Sequence[tuple[TaskDefinition[Any, Any] | str, Any]],
        *,
        queue: str | None = None,
        connection: SpawnConnection | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> list[TaskHandle[Any]]:
        """Spawn ``items`` (``(task, params)`` pairs, each resolved as a spawn of it is, with
        ``options`` on top) in one statement: they must resolve to one queue."""
        queues: set[str] = set()
        prepared: list[tuple[str, Any, SpawnOptions | None]] = []
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise InvalidArgument(f"a spawn_many item is a (task, params) pair, got {item!r}")
            task, params = item
            target, task_name, resolved = self.resolve(task, queue, options, params=params)
            queues.add(target)
            prepared.append((task_name, params, resolved))
        if not prepared:
            return []
        if len(queues) > 1:
            raise InvalidArgument(
                f"spawn_many spawns on one queue, in one statement; these tasks run on"
                f" {sorted(queues)} — call it once per queue (with one connection= to keep them"
                " in one transaction)"
            )
        (target,) = queues
        infos = await self.client.spawn_many(target, prepared, connection=connection)
        log.info(
            "tasks.spawned",
            queue=target,
            count=len(infos),
            created=sum(info.created for info in infos),
            in_transaction=connection is not None,
        )
        return [
            TaskHandle(
                self.client, target, name, info.task_id, info.run_id, info.attempt, info.created
            )
            for (name, _, _), info in zip(prepared, infos, strict=True)
        ]

    async def spawn_batch(
        self,
        items: Sequence[tuple[TaskDefinition[Any, Any] | str, Any]],
        *,
        on_complete: TaskDefinition[Any, Any] | str | None = None,
        on_exhausted: TaskDefinition[Any, Any] | str | None = None,
        callback_params: Any = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchInfo:
        """Spawn ``items`` (``(task, params)`` pairs) as one batch, each task resolved as a spawn
        of it is (:meth:`resolve`; ``queue`` for those not registered here), with a callback once
        every member ended (see ``Durable.batch``)."""
        specs = []
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise InvalidArgument(f"a batch item is a (task, params) pair, got {item!r}")
            task, params = item
            target, task_name, options = self.resolve(task, queue, {}, params=params)
            specs.append((target, task_name, params, options))
        callbacks = {}
        for role, callback in (("on_complete", on_complete), ("on_exhausted", on_exhausted)):
            if callback is not None:
                target, task_name, options = self.resolve(
                    callback, queue, {}, params=callback_params
                )
                # spawned once by the batch: its own key, uniqueness and dependencies do not apply
                options = dataclasses.replace(options, unique=None, depends_on=None)
                callbacks[role] = (target, task_name, callback_params, options)
        batch = await self.client.spawn_batch(
            specs,
            on_complete=callbacks.get("on_complete"),
            on_exhausted=callbacks.get("on_exhausted"),
            idempotency_key=idempotency_key,
        )
        log.info(
            "batch.spawned",
            batch_id=str(batch.batch_id),
            members=len(batch.members),
            created=batch.created,
        )
        return batch

    def add_cron(
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
        """Spawn ``task`` with ``params`` at every slot of ``expr`` (see ``Durable.cron``)."""
        target, task_name, resolved = self.resolve(task, queue, options, params=params)
        try:
            policy = Missed(missed)
        except ValueError:
            raise InvalidArgument(
                f"missed must be one of skip, latest, all — got {missed!r}"
            ) from None
        job = CronJob(
            name=name or f"{task_name}:{expr}",
            schedule=CronExpr.parse(expr, timezone),
            task_name=task_name,
            queue=check_queue_name(target),
            params=params,
            options=resolved,
            missed=policy,
        )
        if any(existing.name == job.name for existing in self.crons):
            raise ValueError(f"a cron job named {job.name!r} is already registered")
        self.crons.append(job)
        return job

    def prune_rules(self) -> list[PruneRule]:
        """The retention rules of the app and its tasks (empty: nothing is pruned by age)."""
        per_task = {d.name: d.retention for d in self._tasks.values() if d.retention}
        return prune_rules(self.retention, per_task)

    def definitions_on(self, queues: Sequence[str]) -> list[TaskDefinition[Any, Any]]:
        """The definitions whose queue is one of ``queues``."""
        return [d for d in self._tasks.values() if d.queue in queues]


def check_key_limit(concurrency_key: ConcurrencyKey | None, key_limit: int | None) -> None:
    """A definition's per-key limit: at least 1, and only with a ``concurrency_key``."""
    if key_limit is not None and key_limit < 1:
        raise ValueError("key_limit must be at least 1")
    if key_limit is not None and concurrency_key is None:
        raise ValueError("key_limit needs a concurrency_key (a function of the params)")
    if concurrency_key is not None and not callable(concurrency_key):
        raise ValueError("concurrency_key must be a function of the params, e.g. lambda p: p['t']")


def _key_of(definition: TaskDefinition[Any, Any], task_name: str, params: Any) -> str:
    """The concurrency key of a spawn of ``definition`` with ``params``."""
    assert definition.concurrency_key is not None
    try:
        key = definition.concurrency_key(params)
    except Exception as exc:  # the user's function: any error is bad input
        raise InvalidArgument(
            f"the concurrency_key of task {task_name!r} failed on its params: {exc!r}"
            " — spawn it with the params the key reads"
        ) from exc
    if not isinstance(key, str) or not key:
        raise InvalidArgument(
            f"the concurrency_key of task {task_name!r} returned {key!r}"
            " — it must return a non-empty string"
        )
    return key
