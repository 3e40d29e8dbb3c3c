"""Typed records the client returns. Frozen, slotted, built from rows by the store."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Literal, TypedDict, TypeVar, get_args

from durable.protocol.cron import Missed, ScheduleSource
from durable.protocol.durations import seconds
from durable.protocol.retry import RetryStrategy
from durable.protocol.states import (
    JSON,
    DiscardReason,
    FailedWorkState,
    Failure,
    FailureReason,
    ReasonClass,
    Recovery,
    RunState,
    TaskState,
)

__all__ = [
    "JSON",
    "DiscardReason",
    "FailedWorkState",
    "Failure",
    "FailureReason",
    "ReasonClass",
    "Recovery",
    "RunState",
    "TaskState",
]

TASK_STATES: tuple[str, ...] = tuple(TaskState)

#: The result type of a task: what its handler returns.
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class Unique:
    """Uniqueness beyond idempotency keys: a spawn that duplicates a task (same queue, task name
    and ``keys`` of params; all of params when ``keys`` is None) created within ``period`` seconds
    (None: ever) and now in one of ``states`` returns that task instead of a new one.

    ``replace`` lists the fields the duplicate updates on the existing task while it has not
    started: ``params``, ``headers``, ``tags``, ``max_attempts``, ``priority``, ``scheduled_at``
    (from ``delay``/``at``). ``debounce`` pushes its start to ``debounce`` seconds after each
    duplicate (and delays the first spawn as much); its default ``states`` are ``pending``
    alone, so a burst after the task started (or completed) spawns a new one.
    """

    keys: Sequence[str] | None = None
    states: Sequence[str] | None = None
    period: float | timedelta | None = None
    replace: Sequence[str] = ()
    debounce: float | timedelta | None = None

    REPLACEABLE: ClassVar[frozenset[str]] = frozenset(
        {"params", "headers", "tags", "max_attempts", "priority", "scheduled_at"}
    )

    def __post_init__(self) -> None:
        if self.keys is not None and (
            isinstance(self.keys, str) or not all(isinstance(k, str) for k in self.keys)
        ):
            raise ValueError("unique keys must be a list of params keys")
        if self.states is not None:
            unknown = set(self.states) - set(TASK_STATES)
            if isinstance(self.states, str) or unknown:
                raise ValueError(f"unique states must be task states {TASK_STATES}, got {unknown}")
        unknown = set(self.replace) - self.REPLACEABLE
        if isinstance(self.replace, str) or unknown:
            raise ValueError(f"unique replace: unknown fields {sorted(unknown)}")

    def to_json(self) -> dict[str, JSON]:
        """The ``unique`` document of the spawn options (``keys``, ``states``, ``period``,
        ``replace``, ``debounce``: the fields that are set).
        """
        doc: dict[str, JSON] = {}
        if self.keys is not None:
            doc["keys"] = list(self.keys)
        if self.states is not None:
            doc["states"] = list(self.states)
        if (period := seconds(self.period, what="unique period")) is not None:
            doc["period"] = period
        if self.replace:
            doc["replace"] = list(self.replace)
        if (debounce := seconds(self.debounce, what="unique debounce")) is not None:
            doc["debounce"] = debounce
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancellation:
    """A cancellation policy: the task is cancelled (reason ``cancelled``) when it has not
    started ``max_delay`` seconds after its scheduled start, or when ``max_duration`` seconds
    have passed since its first start (all attempts, sleeps and waits included)."""

    max_duration: float | timedelta | None = None
    max_delay: float | timedelta | None = None

    def to_json(self) -> dict[str, JSON]:
        """The ``cancellation`` document of the spawn options (``max_duration``, ``max_delay``)."""
        doc: dict[str, JSON] = {}
        if (duration := seconds(self.max_duration, what="max_duration")) is not None:
            doc["max_duration"] = duration
        if (delay := seconds(self.max_delay, what="max_delay")) is not None:
            doc["max_delay"] = delay
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """How long finished tasks are kept, per end state (None: kept until pruned by hand).

    On ``Durable(retention=...)`` it applies to every task name without a rule of its own;
    on ``@app.task(retention=...)`` to that task (a state it leaves None falls back to the
    app's). Workers prune in bounded batches, with the tasks' runs and checkpoints."""

    completed: float | timedelta | None = None
    failed: float | timedelta | None = None
    cancelled: float | timedelta | None = None

    def __post_init__(self) -> None:
        for state in ("completed", "failed", "cancelled"):
            value = seconds(getattr(self, state), what=f"retention of {state} tasks")
            if value is not None and value < 0:
                raise ValueError(f"retention of {state} tasks must not be negative")

    def ages(self) -> dict[TaskState, float]:
        """Seconds to keep, per end state that has a rule."""
        ages = {
            TaskState.COMPLETED: seconds(self.completed, what="retention"),
            TaskState.FAILED: seconds(self.failed, what="retention"),
            TaskState.CANCELLED: seconds(self.cancelled, what="retention"),
        }
        return {state: age for state, age in ages.items() if age is not None}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``allowed`` starts of a task name per ``period`` seconds, across all workers."""

    allowed: int
    period: float | timedelta

    def __post_init__(self) -> None:
        if self.allowed < 1:
            raise ValueError("a rate limit allows at least 1 start per period")
        if seconds(self.period, what="rate limit period") <= 0:
            raise ValueError("a rate limit's period must be positive")


#: What a child task does when its parent is cancelled (Temporal's parent close policy):
#: ``cancel`` (the default: it is cancelled with its parent, in the same transaction) or
#: ``abandon`` (it runs on).
ParentCancelPolicy = Literal["cancel", "abandon"]


def _meta(
    *, to_json: Callable[[Any], JSON] | None = None, cli: str | None = None
) -> dict[str, Any]:
    """What a field of :class:`SpawnOptions` says of itself: how it goes into the options
    document (``to_json``; by default as it is) and, when ``durable spawn`` offers it, the help
    of its flag (``cli``)."""
    return {"to_json": to_json, "cli": cli}


def _reason_classes(what: str) -> Callable[[Any], JSON]:
    def encode(classes: Sequence[ReasonClass | str]) -> JSON:
        return [str(c) for c in check_reason_classes(classes, what)]

    return encode


def check_reason_classes(classes: object, what: str) -> tuple[ReasonClass, ...]:
    """``classes`` as reason classes (a spawn's ``retry_on``/``discard_on``); ValueError naming
    ``what`` for anything else (an exception type belongs on ``@app.task``)."""
    if isinstance(classes, str | type) or not isinstance(classes, Sequence | set | frozenset):
        classes = (classes,)
    checked: list[ReasonClass] = []
    for item in classes:
        if isinstance(item, str) and item in ReasonClass.__members__.values():
            checked.append(ReasonClass(item))
            continue
        hint = (
            " — exception types belong on @app.task, whose worker holds them"
            if isinstance(item, type)
            else ""
        )
        known = ", ".join(c.value for c in ReasonClass)
        raise ValueError(f"{what} takes reason classes ({known}), got {item!r}{hint}")
    return tuple(checked)


def _uuid_list(ids: Sequence[uuid.UUID]) -> list[str]:
    return [str(uuid.UUID(str(d))) for d in ids]


def _duration(what: str) -> Callable[[Any], JSON]:
    return lambda value: seconds(value, what=what)


def _to_json(value: Any) -> JSON:
    return value.to_json()


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnOptions:
    """Options of one spawn. Durations are seconds (float) or ``timedelta``.

    Its fields are the one list of spawn options: they make the ``options`` document the SQL
    protocol takes (:meth:`to_json`), the keyword arguments of ``spawn`` and ``@app.task``
    (:class:`SpawnKwargs`, :class:`DefinitionOptions`; a test holds them equal) and the flags of
    ``durable spawn``.
    """

    idempotency_key: str | None = field(
        default=None, metadata=_meta(cli="a second spawn with this key returns the first task")
    )
    max_attempts: int | None = field(
        default=None, metadata=_meta(cli="attempts before the task fails for good (default 3)")
    )
    retry: RetryStrategy | None = field(default=None, metadata=_meta(to_json=_to_json))
    timeout: float | timedelta | None = field(
        default=None, metadata=_meta(to_json=_duration("timeout"), cli="seconds a run may take")
    )
    heartbeat_timeout: float | timedelta | None = field(
        default=None,
        metadata=_meta(
            to_json=_duration("heartbeat_timeout"), cli="seconds a run may go without a heartbeat"
        ),
    )
    priority: int = field(default=0, metadata=_meta(cli="higher runs first (default 0)"))
    delay: float | timedelta | None = field(
        default=None,
        metadata=_meta(to_json=_duration("delay"), cli="seconds from now before the first start"),
    )
    at: datetime | None = field(
        default=None,
        metadata=_meta(
            to_json=datetime.isoformat, cli="the first start: an ISO 8601 time with its offset"
        ),
    )
    headers: dict[str, JSON] | None = field(default=None, metadata=_meta())
    tags: Sequence[str] | None = field(
        default=None, metadata=_meta(to_json=list, cli="a tag (repeat for several)")
    )
    partition_key: str | None = field(
        default=None, metadata=_meta(cli="claims take turns across partitions of a queue")
    )
    concurrency_key: str | None = field(
        default=None,
        metadata=_meta(cli="the key the task name's key_limit counts per (e.g. a tenant)"),
    )
    unique: Unique | None = field(default=None, metadata=_meta(to_json=_to_json))
    cancellation: Cancellation | None = field(default=None, metadata=_meta(to_json=_to_json))
    depends_on: Sequence[uuid.UUID] | None = field(
        default=None,
        metadata=_meta(
            to_json=_uuid_list, cli="a task that must complete first (repeat for several)"
        ),
    )
    parent_task_id: uuid.UUID | None = field(default=None, metadata=_meta(to_json=str))
    on_parent_cancel: ParentCancelPolicy | None = field(
        default=None,
        metadata=_meta(
            cli="a child (ctx.spawn) whose parent is cancelled: cancel (default) or abandon it"
        ),
    )
    retry_on: Sequence[ReasonClass | str] | None = field(
        default=None,
        metadata=_meta(
            to_json=_reason_classes("retry_on"),
            cli="a reason class to retry; failures of other classes end the task (repeat)",
        ),
    )
    discard_on: Sequence[ReasonClass | str] | None = field(
        default=None,
        metadata=_meta(
            to_json=_reason_classes("discard_on"),
            cli="a reason class whose failure ends the task at once (repeat for several)",
        ),
    )
    #: The task has an ``on_discard`` hook (set from ``@app.task``): when it ends without
    #: completing, the transaction that ends it records a ``durable.on_discard`` task, which a
    #: worker claims to call the hook.
    on_discard: bool = field(default=False, metadata=_meta())

    def __post_init__(self) -> None:
        if self.tags is not None and (
            isinstance(self.tags, str) or not all(isinstance(t, str) and t for t in self.tags)
        ):
            raise ValueError("tags must be a list of non-empty strings")
        if self.partition_key is not None and not isinstance(self.partition_key, str):
            raise ValueError("partition_key must be a string")
        if self.concurrency_key is not None and not isinstance(self.concurrency_key, str):
            raise ValueError("concurrency_key must be a string")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.delay is not None and self.at is not None:
            raise ValueError("give delay or at, not both")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        if self.headers is not None and not isinstance(self.headers, dict):
            raise ValueError("headers must be a JSON object (a dict)")
        for what in ("retry_on", "discard_on"):
            if getattr(self, what) is not None:
                check_reason_classes(getattr(self, what), what)
        if self.on_parent_cancel is not None and self.on_parent_cancel not in get_args(
            ParentCancelPolicy
        ):
            raise ValueError(
                f"on_parent_cancel must be 'cancel' or 'abandon', got {self.on_parent_cancel!r}"
            )

    def to_json(self) -> dict[str, JSON]:
        """The ``options`` document the SQL protocol takes: every field that is set (not None,
        not its default of 0 or False, not an empty list), encoded as its field says."""
        doc: dict[str, JSON] = {}
        for name, encode in _SPAWN_FIELDS:
            value = getattr(self, name)
            if value is None or value is False or (value == 0 and name == "priority"):
                continue
            if isinstance(value, list | tuple) and not value:
                continue
            doc[name] = value if encode is None else encode(value)
        return doc

    def merged(self, overrides: Mapping[str, Any]) -> SpawnOptions:
        """These options with every override that was given (not None) on top."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


#: (name, encoder) of each spawn option, in the order of the fields.
_SPAWN_FIELDS: tuple[tuple[str, Callable[[Any], JSON] | None], ...] = tuple(
    (f.name, f.metadata["to_json"]) for f in dataclasses.fields(SpawnOptions)
)


class DefinitionOptions(TypedDict, total=False):
    """The spawn options a task definition (``@app.task``) sets for every spawn of the task;
    None means "not given"."""

    max_attempts: int | None
    retry: RetryStrategy | None
    timeout: float | timedelta | None
    heartbeat_timeout: float | timedelta | None
    priority: int | None
    headers: dict[str, Any] | None
    tags: Sequence[str] | None
    unique: Unique | None
    cancellation: Cancellation | None


class SpawnKwargs(DefinitionOptions, total=False):
    """The options one spawn takes (see :class:`SpawnOptions`): a definition's, and those that
    belong to one spawn only."""

    idempotency_key: str | None
    delay: float | timedelta | None
    at: datetime | None
    partition_key: str | None
    concurrency_key: str | None
    depends_on: Sequence[uuid.UUID] | None
    on_parent_cancel: ParentCancelPolicy | None
    #: Reason classes only (``@app.task`` takes exception types too: :class:`TaskKwargs`).
    retry_on: Sequence[ReasonClass | str] | None
    discard_on: Sequence[ReasonClass | str] | None


def spawn_options(overrides: Mapping[str, Any]) -> SpawnOptions:
    """The options of a spawn of a task nobody registered here: the overrides given, on the
    defaults."""
    return _NO_OPTIONS.merged(overrides)


_NO_OPTIONS = SpawnOptions()


@dataclass(frozen=True, slots=True)
class SpawnInfo:
    """What a spawn returns: the task, its first run, the attempt, and ``created`` (False when an
    idempotency key or a ``unique`` option found an existing task, whose ids these are).
    """

    task_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    created: bool


@dataclass(frozen=True, slots=True)
class RetryInfo(SpawnInfo):
    """What a retry returns: the retried task's new run, and ``revived``, the dependents its
    failure had cancelled that were revived with it (each waits for its dependencies again)."""

    revived: tuple[SpawnInfo, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependent:
    """A dependent that a retry would revive: cancelled because ``dependency`` ended (its
    failure named it), directly or down a chain of dependencies."""

    task_id: uuid.UUID
    queue: str
    task_name: str
    dependency: uuid.UUID


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim:
    """A run this worker now holds under a lease."""

    run_id: uuid.UUID
    task_id: uuid.UUID
    queue: str
    task_name: str
    params: JSON
    headers: dict[str, JSON]
    attempt: int
    max_attempts: int
    timeout: float | None
    heartbeat_timeout: float | None
    lease_expires_at: datetime
    has_checkpoints: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult(Generic[R]):
    """A task's outcome: its state, its result (what the handler returned, typed ``R`` by the
    task's definition; None unless the task completed) and why it failed, if it did."""

    state: TaskState
    result: R = None  # type: ignore[assignment]  # None until the task completed
    failure: Failure | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One run of a task (``TaskRecord.runs``), as the database keeps it until the task is pruned.

    Attributes:
        run_id: the run, also its lease token.
        attempt: the attempt it belongs to, from 1 (a run that spent no attempt keeps the number).
        state: a [RunState][durable.RunState].
        claimed_by: the worker that claimed it, or None.
        available_at: when it could start; ``datetime.max`` while only an event, a message, a
            task's end or its dependencies can release it.
        started_at: when it was claimed.
        finished_at: when it ended.
        lease_expires_at: its lease while it runs.
        failure_reason: why it failed, if it did.
        error: the error document (``type``, ``module``, ``message``, ``traceback``,
            ``reason_class``), if the handler raised.
        result: what it returned, if it completed.
        code_version: the code version of the worker that claimed it.
    """

    run_id: uuid.UUID
    attempt: int
    state: RunState
    claimed_by: str | None
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None
    failure_reason: FailureReason | None
    error: dict[str, JSON] | None
    result: JSON = None
    code_version: str | None = None
    #: Its handler never started as far as the database knows: claimed, and not reported
    #: started by its worker. A reaped run that is still reserved ended ``released`` with its
    #: reap's reason, and spent no attempt.
    reserved: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
    """A task as ``app.get_task`` and ``client.get_task`` read it, with every run, oldest first.

    Attributes:
        task_id: the task (a UUIDv7: ordered by creation).
        queue: its queue.
        task_name: the name its handler is registered under.
        params: what it was spawned with.
        headers: its headers (the trace context among them).
        state: its [TaskState][durable.TaskState] (the live run's state while it has one).
        attempt: its current or last attempt.
        max_attempts: how many attempts it may spend.
        idempotency_key: the key it was spawned with, or None.
        created_at: when it was spawned.
        result: what its handler returned, once it completed.
        failure: why its last run failed, if it did.
        runs: every run, oldest first.
        tags: its tags.
        progress: what ``ctx.progress`` last recorded.
        partition_key: its partition for fair claiming.
        parent_task_id: the task that spawned it with ``ctx.spawn``.
        depends_on: the tasks it waits for (``depends_on=``).
        pending_dependencies: those of them not completed yet.
        waiting_for: what its parked run waits for (an event, tasks, a message).
        scheduled_at: its first start (``delay``/``at``).
        discarded_at: when an operator discarded it.
        on_parent_cancel: ``cancel`` or ``abandon``: what cancelling its parent does to it.
        batch_ids: the batches (``app.batch``) it is a member of.
    """

    task_id: uuid.UUID
    queue: str
    task_name: str
    params: JSON
    headers: dict[str, JSON]
    state: TaskState
    attempt: int
    max_attempts: int
    idempotency_key: str | None
    created_at: datetime
    result: JSON
    failure: Failure | None
    runs: list[RunRecord] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    progress: Progress | None = None
    partition_key: str | None = None
    #: Its concurrency key (``@app.task(concurrency_key=...)``), limited by ``key_limit``.
    concurrency_key: str | None = None
    parent_task_id: uuid.UUID | None = None
    depends_on: list[uuid.UUID] = field(default_factory=list)
    pending_dependencies: list[uuid.UUID] = field(default_factory=list)
    waiting_for: list[dict[str, JSON]] = field(default_factory=list)
    scheduled_at: datetime | None = None
    discarded_at: datetime | None = None
    on_parent_cancel: ParentCancelPolicy = "cancel"
    batch_ids: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """What ``ctx.progress()`` last recorded: a percentage, a JSON detail, when, by which run."""

    pct: float
    detail: JSON = None
    at: datetime | None = None
    run_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A step's recorded value (``client.get_checkpoints``): ``step_name`` (``load``, ``load#2``,
    ``$event:...``), its JSON ``value``, the run that wrote it and when.
    """

    step_name: str
    value: JSON
    run_id: uuid.UUID
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueCount:
    queue: str
    state: TaskState
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedRun:
    """One failed run, newest first in ``list_failed_runs``."""

    task_id: uuid.UUID
    run_id: uuid.UUID
    queue: str
    task_name: str
    task_state: TaskState
    attempt: int
    max_attempts: int
    failure_reason: FailureReason
    error: dict[str, JSON] | None
    finished_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedWork:
    """A task whose latest failure is not behind it: dead (``failed``: its last attempt failed,
    or it was cancelled) or ``retrying``. Newest failure first in ``failed_work``.

    ``retryable`` says what the runtime did and would do with the failure: True when it is
    retried (``retrying``, or retried until its attempts ran out), False when it is not (the
    error was recorded not to be retried: a ``NonRetryable``, a task's ``discard_on`` or
    ``retry_on``, a result that is not JSON; or the task was cancelled). The reason class
    ``validation`` says the same input will likely fail again. ``recovery`` is what ``retry``
    would do.
    """

    task_id: uuid.UUID
    run_id: uuid.UUID | None
    queue: str
    task_name: str
    state: FailedWorkState
    attempt: int
    max_attempts: int
    failure_reason: FailureReason
    reason_class: ReasonClass
    error: dict[str, JSON] | None
    failed_at: datetime
    retryable: bool
    recovery: Recovery
    last_checkpoint: str | None = None
    tags: list[str] = field(default_factory=list)

    @property
    def error_type(self) -> str | None:
        """The error's type name (``error["type"]``), or None when the run failed without one."""
        return self.error.get("type") if self.error else None


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureGroup:
    """Failed work grouped by failure reason x error type x task name (and queue)."""

    failure_reason: FailureReason
    reason_class: ReasonClass
    error_type: str | None
    task_name: str
    queue: str
    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSummary:
    """A row of the task browser (``list_tasks``): a task without its runs and payloads.
    ``state`` is the live state (a live task's run's), ``failure_reason`` and ``error_type``
    those of its latest failure, ``progress`` its last reported percentage."""

    task_id: uuid.UUID
    queue: str
    task_name: str
    state: TaskState
    attempt: int
    max_attempts: int
    priority: int
    created_at: datetime
    scheduled_at: datetime | None
    finished_at: datetime | None
    idempotency_key: str | None
    tags: list[str]
    failure_reason: FailureReason | None
    error_type: str | None
    progress: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPage:
    """A page of the task browser, newest first. ``next_before`` is the cursor of the next page
    (pass it as ``before=``); None when this page is the last."""

    tasks: list[TaskSummary]
    next_before: uuid.UUID | None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDepth:
    """A queue's live work (``queue_depth``): tasks pending, running and sleeping, the runs that
    could start now (``available``: the depth) and how long the oldest of them has waited."""

    queue: str
    pending: int
    running: int
    sleeping: int
    available: int
    oldest_available_s: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A worker as the workers page shows it (``list_workers``): its slots (``concurrency``),
    how many run a handler (``busy``) and how many runs it claimed ahead, as it said at
    ``stats_at``; ``running`` counts the runs it holds in the database."""

    worker_id: str
    host: str | None
    pid: int | None
    queues: list[str]
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    stopped_at: datetime | None
    alive: bool
    concurrency: int | None
    busy: int | None
    claimed_ahead: int | None
    stats_at: datetime | None
    running: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowMinute:
    """The runs of one queue that ended in one minute (``flow``): completed, failed (of which
    ``dead`` ended their task), cancelled; the failed ones per reason class; and histograms of
    start lag and run time, ``{bucket: count}`` (see :mod:`durable.client.flow`)."""

    minute: datetime
    queue: str
    completed: int
    failed: int
    dead: int
    cancelled: int
    failed_classes: dict[str, int]
    lag_ms: dict[int, int]
    run_ms: dict[int, int]


@dataclass(frozen=True, slots=True)
class ChildTask:
    """What ``ctx.spawn`` returns: the child's identity, for ``await ctx.result(child)``."""

    task_id: uuid.UUID
    queue: str
    task_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchInfo:
    """What ``app.batch`` returns: the batch's id, whether this call created it (False: its
    idempotency key found an earlier batch), and its members in the order given."""

    batch_id: uuid.UUID
    created: bool
    members: list[SpawnInfo]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRecord:
    """A batch: its members' count, how many are still pending and how many ended in each state
    (``completed``, ``failed``, ``cancelled``), and its callback's task once every member ended
    (or, in ``callback_error``, why it could not be spawned)."""

    batch_id: uuid.UUID
    total: int
    pending: int
    counts: dict[str, int]
    on_complete: str | None
    on_exhausted: str | None
    callback_task_id: uuid.UUID | None
    callback_error: dict[str, JSON] | None
    idempotency_key: str | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """Whether every member ended (the callback, if any, was spawned then)."""
        return self.finished_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyResult:
    """One dependency of a task spawned with ``depends_on``: its id, name, state (``completed``
    by the time the task runs) and result."""

    task_id: uuid.UUID
    task_name: str
    state: TaskState
    result: JSON = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PausedQueue:
    """A paused queue: it accepts spawns, and no worker claims from it until it is resumed."""

    queue: str
    paused_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class CronSchedule:
    """A cron schedule as stored: ``task_name`` on ``queue`` with ``params`` and ``options`` (a
    spawn options document) at every slot of ``expr`` read in ``timezone``.

    ``fired_through``: the slots up to this instant are dealt with (fired, skipped by the
    ``missed`` policy, or passed while paused); ``last_slot`` and ``last_task_id``: the newest
    slot fired and its task.
    """

    name: str
    expr: str
    timezone: str
    queue: str
    task_name: str
    params: Any
    options: dict[str, Any]
    missed: Missed
    source: ScheduleSource
    paused_at: datetime | None
    fired_through: datetime
    last_slot: datetime | None
    last_task_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @property
    def paused(self) -> bool:
        """Whether the schedule is paused (``app.pause_cron``): it fires nothing until resumed."""
        return self.paused_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class CronSchedules:
    """The cron schedules of some queues, read at ``now`` on the database's clock."""

    now: datetime
    schedules: list[CronSchedule]
