"""Errors raised by durable.

Every error derives from :class:`DurableError`; data travels as attributes::

    DurableError
    ├── InvalidQueueName      queue name does not match ^[a-z][a-z0-9_]{0,47}$
    ├── UnknownTask           no handler registered under that task name
    ├── NotSerializable       params, a result or a step value is not JSON
    │   └── PayloadTooLarge   ... or its JSON is over the size limit (store.MAX_PAYLOAD_BYTES)
    ├── DatabaseUnavailable   bad DSN, unreachable or lost database
    ├── LeaseLost             the run is no longer the task's live, unexpired run
    ├── TaskNotFound          no task with that id on that queue
    ├── BatchNotFound         no batch with that id
    ├── InvalidState          the operation does not fit the task's state
    ├── InvalidArgument       an argument the protocol refuses (also a ValueError)
    │   └── InvalidTimeZone   not an IANA time zone this machine knows
    ├── ScheduleNotFound      no cron schedule of that name
    ├── SchemaError           the database schema or protocol does not match this durable
    ├── EventTimeout          a wait in a task (await_event, result, gather, recv) timed out
    ├── PatchRetired          a task took the old path of a patch its code retired
    ├── TaskFailed            the awaited task ended failed or cancelled
    ├── ResultTimeout         ``result(timeout=...)`` passed its timeout (also a TimeoutError)
    └── TaskDiscarded         what an on_discard hook is given: why the task ended unsuccessfully

``Snooze(seconds)`` is not an error: a handler raises (or returns) it to run again later without
spending an attempt. ``NonRetryable(...)`` is not durable's error either: a handler raises it to
end its task ``failed`` now, whatever attempts are left.

Driver errors are translated at the store boundary (``raise ... from exc``).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

from durable.protocol.states import DiscardReason, Failure

QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class DurableError(Exception):
    """Root of every error durable raises."""


class InvalidQueueName(DurableError):
    """A queue name that is not lowercase letters, digits and ``_``, starting with a letter, at most
    48 characters (``^[a-z][a-z0-9_]{0,47}$``).

    Raised by the client before anything is sent, and by SQL (SQLSTATE ``DU004``) for a client in
    another language.

    Attributes:
        queue: the name that was refused.
    """

    def __init__(self, queue: object) -> None:
        self.queue = queue
        super().__init__(
            f"{queue!r} — use lowercase letters, digits and _ (start with a letter, max 48)"
        )


class UnknownTask(DurableError):
    """A task name this app has no handler for (``app.spawn("name", ...)`` without ``queue=``,
    ``ctx.spawn("name", ...)``).

    A worker that claims a task it has no handler for does not raise this: it hands the run back
    for ``unknown_task_defer`` seconds, spending no attempt.

    Attributes:
        task_name: the name that was looked up.
    """

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        super().__init__(
            f"{task_name!r} is not registered with this app — decorate it with @app.task "
            "or check the name"
        )


class NotSerializable(DurableError):
    """A value durable cannot store as JSON, refused before anything is sent.

    Params, headers, step values, results and errors must be JSON: objects that are not JSON,
    integers beyond 64 bits, NaN and infinities, a NUL character and lone surrogates are refused.

    Attributes:
        what: which value (``params``, ``result``, ``the value of step 'load'``).
        detail: why it is not JSON.
    """

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"{what} is not JSON: {detail}")


class PayloadTooLarge(NotSerializable):
    """A value whose JSON is over the limit: raised before anything is sent, nothing is written."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        self.what = what
        self.size = size
        self.limit = limit
        self.detail = (
            f"{size:,} bytes of JSON, over the limit of {limit:,} bytes — store large data "
            "elsewhere (an object store, a table of your own) and pass a reference"
        )
        DurableError.__init__(self, f"{what} is too large: {self.detail}")


class DatabaseUnavailable(DurableError):
    """PostgreSQL cannot be reached: a bad DSN, a server down, a connection lost, a call past its
    deadline (``command_timeout``), or no DSN and no ``embedded`` extra.

    Its reason class is ``transport``: a task that raises it is retried like any error.

    Attributes:
        host: the host the DSN names, when known.
        port: the port the DSN names, when known.
    """

    def __init__(self, message: str, *, host: str | None = None, port: int | None = None) -> None:
        self.host = host
        self.port = port
        super().__init__(message)


class LeaseLost(DurableError):
    """A write of a run that is no longer its task's live run under an unexpired lease (SQLSTATE
    ``DU001``): the lease expired, the run was reaped, released or cancelled. Nothing was written.

    A worker stops the run when it sees this; another run may own the task now.

    Attributes:
        run_id: the run whose write was refused.
    """

    def __init__(self, run_id: Any, detail: str = "") -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id} no longer holds its lease{': ' + detail if detail else ''} — "
            "another run owns the task now, or it was cancelled; nothing was written"
        )


class TaskNotFound(DurableError):
    """No task with this id (on this queue, when one is given): SQLSTATE ``DU002``. A task that
    retention pruned is not found either.

    Attributes:
        task_id: the id looked up.
        queue: the queue it was looked up on, or None.
    """

    def __init__(self, task_id: Any, queue: str | None = None) -> None:
        self.task_id = task_id
        self.queue = queue
        where = f" on queue {queue!r}" if queue else ""
        super().__init__(f"no task {task_id}{where}")


class BatchNotFound(DurableError):
    """No batch with this id (``app.get_batch``): SQLSTATE ``DU006``.

    Attributes:
        batch_id: the id looked up.
    """

    def __init__(self, batch_id: Any) -> None:
        self.batch_id = batch_id
        super().__init__(f"no batch {batch_id}")


class InvalidState(DurableError):
    """The operation does not fit the task's state (SQLSTATE ``DU003``): cancelling a task that
    already ended, retrying one that has not, sending a message to a task that ended.

    Attributes:
        state: the task's state, when the database said it.
    """

    def __init__(self, message: str, *, state: str | None = None) -> None:
        self.state = state
        super().__init__(message)


class InvalidArgument(DurableError, ValueError):
    """An argument the protocol refuses (a negative duration, an empty step name): DU005."""


class InvalidTimeZone(InvalidArgument):
    """A time zone that is not an IANA name this machine's tz database knows."""

    def __init__(self, timezone: object) -> None:
        self.timezone = timezone
        super().__init__(
            f"invalid time zone {timezone!r} — use an IANA name such as 'Europe/Paris' or 'UTC' "
            "(on a machine without a tz database, pip install tzdata)"
        )


class ScheduleNotFound(DurableError):
    """No cron schedule of that name (see ``durable cron list``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no cron schedule named {name!r} — see `durable cron list`")


class BatcherClosed(DurableError):
    """Internal: a worker's write batcher stopped before this write was made; write it directly."""

    def __init__(self) -> None:
        super().__init__("the write batcher is closed")


class EventTimeout(DurableError, TimeoutError):
    """Raised inside a task by ``ctx.await_event`` (or ``ctx.result``, ``ctx.gather``,
    ``ctx.recv``) when its timeout passed first. Recorded: a replay of the task raises it again at
    the same step."""

    def __init__(self, what: str, step: str) -> None:
        self.step = step
        super().__init__(f"{what} did not arrive within its timeout (step {step!r})")


class Suspended(BaseException):
    """Internal: the run was parked (a sleep or a wait) and has ended; the executor writes no
    outcome. A BaseException so that a handler's ``except Exception`` does not swallow it."""


class NonRetryable(Exception):
    """Raise from a handler to end the task ``failed`` now, without a retry: the same input will
    fail the same way. ``NonRetryable("bad input")``; wrapping the error that says why,
    ``raise NonRetryable("bad input") from exc`` or ``NonRetryable(exc)``.

    The run's error records ``type`` ``NonRetryable``, ``retryable`` false and the ``cause``
    (its type, module and message); its reason class is the cause's (``validation`` without
    one). The task's ``on_discard`` hook is told ``non_retryable``."""

    def __init__(self, reason: str | BaseException = "", /) -> None:
        self.wrapped = reason if isinstance(reason, BaseException) else None
        if isinstance(reason, BaseException):
            message = f"{type(reason).__qualname__}: {reason}".rstrip(": ")
        else:
            message = reason
        super().__init__(message)
        if self.wrapped is not None:
            self.__cause__ = self.wrapped

    @property
    def cause(self) -> BaseException | None:
        """The error it wraps: the one given, else the one it was raised ``from``."""
        return self.wrapped if self.wrapped is not None else self.__cause__


class PatchRetired(DurableError, NonRetryable):
    """Raised inside a task by ``ctx.deprecate_patch(change_id)`` when the task took the old path
    of that patch: the code that took it is gone, so the task stops here instead of going on
    down the new path with an old history. Deploy the code with ``ctx.patched(change_id)`` again
    and retry the task. The same input fails the same way until then (reason class
    ``validation``), so the task is not retried by itself (a :class:`NonRetryable`)."""

    durable_reason_class = "validation"

    def __init__(self, change_id: str) -> None:
        self.change_id = change_id
        super().__init__(
            f"this task took the old path of patch {change_id!r}, which the code retired — "
            f"deploy the code with ctx.patched({change_id!r}) again, then retry the task"
        )


class Snooze(Exception):
    """Raise (or return) ``Snooze(seconds)`` from a handler to run the task again later without
    spending an attempt."""

    def __init__(self, seconds: float | timedelta) -> None:
        delay = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if not (0 <= delay < math.inf):
            raise ValueError(f"snooze needs a non-negative number of seconds, got {seconds!r}")
        self.seconds = delay
        super().__init__(f"snoozed for {delay:g}s")


class SchemaError(DurableError):
    """The database schema or protocol does not match this version of durable (old, newer, or
    gapped)."""


class TaskFailed(DurableError):
    """The awaited task ended ``failed`` or ``cancelled``: raised by ``handle.result()``,
    ``app.result()`` and, inside a task, ``ctx.result()``.

    Attributes:
        task_id: the task.
        state: ``failed`` or ``cancelled``.
        failure: the [Failure][durable.Failure] of the run that ended it (reason, error document),
            or None.

    Example:
        ```python
        try:
            outcome = await handle.result(timeout=30)
        except TaskFailed as exc:
            print(exc.state, exc.failure.reason if exc.failure else None)
        ```
    """

    def __init__(self, task_id: Any, state: str, failure: Failure | None) -> None:
        self.task_id = task_id
        self.state = state
        self.failure = failure
        reason = failure.reason if failure else "unknown"
        message = failure.message if failure else ""
        super().__init__(f"task {task_id} ended {state} ({reason}): {message}".rstrip(": "))


class ResultTimeout(DurableError, TimeoutError):
    """``handle.result(timeout=...)`` (or ``app.result``) gave up waiting: task ``task_id``
    (named ``task_name``) was still ``state`` when ``timeout_s`` passed. The task goes on; wait
    again, or cancel it. A :class:`TimeoutError` too."""

    def __init__(
        self, task_id: Any, task_name: str | None, state: str | None, timeout_s: float
    ) -> None:
        self.task_id = task_id
        self.task_name = task_name
        self.state = state
        self.timeout_s = timeout_s
        named = f"task {task_name!r} ({task_id})" if task_name else f"task {task_id}"
        still = f"still {state}" if state else "not ended"
        super().__init__(
            f"{named} {still} after {timeout_s:g}s — it goes on; wait again or cancel it"
        )


class TaskDiscarded(DurableError):
    """The ``error`` an ``on_discard(ctx, error)`` hook receives: task ``task_id`` ended
    ``state`` (failed or cancelled) for ``reason`` (a :class:`DiscardReason`: ``exhausted``,
    ``non_retryable``, ``cancelled``, ``discarded``, ``cancellation_policy``,
    ``dependency_failed``, ``parent_cancelled``), and ``failure`` says how (the failure reason
    and the error of the run that ended it: ``failure.error["type"]`` is the handler's exception
    type, ``JobTimeout``, ``WorkerCrashed``, ``DependencyFailed``, ...)."""

    def __init__(
        self, task_id: Any, state: str, reason: DiscardReason, failure: Failure | None
    ) -> None:
        self.task_id = task_id
        self.state = state
        self.reason = reason
        self.failure = failure
        how = failure.message if failure else ""
        super().__init__(f"task {task_id} ended {state} ({reason}): {how}".rstrip(": "))


#: The longest topic, state key or event name, in characters.
MAX_NAME_CHARS = 255


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a name of 1 to :data:`MAX_NAME_CHARS` characters (a topic, a
    state key), else raise :class:`InvalidArgument` naming ``what``."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        shown = f"{len(value)} characters" if isinstance(value, str) else repr(value)
        raise InvalidArgument(
            f"{what} must be a string of 1 to {MAX_NAME_CHARS} characters, got {shown}"
        )
    return value


def check_queue_name(queue: object) -> str:
    """Return ``queue`` if it is a valid queue name, else raise :class:`InvalidQueueName`."""
    if not isinstance(queue, str) or not QUEUE_NAME_RE.fullmatch(queue):
        raise InvalidQueueName(queue)
    return queue
