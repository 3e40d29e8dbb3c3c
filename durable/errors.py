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
    ├── InvalidState          the operation does not fit the task's state
    ├── InvalidArgument       an argument the protocol refuses (also a ValueError)
    ├── SchemaError           the database schema does not match this durable
    └── TaskFailed            the awaited task ended failed or cancelled

Driver errors are translated at the store boundary (``raise ... from exc``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable.records import Failure

QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


class DurableError(Exception):
    """Root of every error durable raises."""


class InvalidQueueName(DurableError):
    def __init__(self, queue: object) -> None:
        self.queue = queue
        super().__init__(
            f"{queue!r} — use lowercase letters, digits and _ (start with a letter, max 48)"
        )


class UnknownTask(DurableError):
    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        super().__init__(
            f"{task_name!r} is not registered with this app — decorate it with @app.task "
            "or check the name"
        )


class NotSerializable(DurableError):
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
    def __init__(self, message: str, *, host: str | None = None, port: int | None = None) -> None:
        self.host = host
        self.port = port
        super().__init__(message)


class LeaseLost(DurableError):
    def __init__(self, run_id: Any, detail: str = "") -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id} no longer holds its lease{': ' + detail if detail else ''} — "
            "another run owns the task now, or it was cancelled; nothing was written"
        )


class TaskNotFound(DurableError):
    def __init__(self, task_id: Any, queue: str | None = None) -> None:
        self.task_id = task_id
        self.queue = queue
        where = f" on queue {queue!r}" if queue else ""
        super().__init__(f"no task {task_id}{where}")


class InvalidState(DurableError):
    def __init__(self, message: str, *, state: str | None = None) -> None:
        self.state = state
        super().__init__(message)


class InvalidArgument(DurableError, ValueError):
    """An argument the protocol refuses (a negative duration, an empty step name): DU005."""


class BatcherClosed(DurableError):
    """Internal: a worker's write batcher stopped before this write was made; write it directly."""

    def __init__(self) -> None:
        super().__init__("the write batcher is closed")


class SchemaError(DurableError):
    """The database schema does not match this version of durable (old, newer, or gapped)."""


class TaskFailed(DurableError):
    def __init__(self, task_id: Any, state: str, failure: Failure | None) -> None:
        self.task_id = task_id
        self.state = state
        self.failure = failure
        reason = failure.reason if failure else "unknown"
        message = failure.message if failure else ""
        super().__init__(f"task {task_id} ended {state} ({reason}): {message}".rstrip(": "))


def check_queue_name(queue: object) -> str:
    """Return ``queue`` if it is a valid queue name, else raise :class:`InvalidQueueName`."""
    if not isinstance(queue, str) or not QUEUE_NAME_RE.fullmatch(queue):
        raise InvalidQueueName(queue)
    return queue
