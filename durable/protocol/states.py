"""The protocol's closed vocabularies: the states of tasks and runs, failure reasons and their
classes, and a task's failure as recorded. A leaf: it imports nothing of durable, so the errors
(``TaskFailed`` carries a :class:`Failure`) and the records can both use it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

JSON = Any


class TaskState(StrEnum):
    """The state of a task: its live run's state while it has one, else how it ended.

    ``pending`` (waiting to be claimed, maybe for its start time, a retry's delay or its
    dependencies), ``running``, ``sleeping`` (parked by a sleep or a wait, holding no worker slot),
    and the three ends: ``completed``, ``failed`` (its last attempt failed), ``cancelled``.
    """

    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the task ended: completed, failed or cancelled."""
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)


class RunState(StrEnum):
    """The state of a run, one attempt at a task.

    Live: ``pending``, ``running``, ``sleeping`` (parked until a time, an event, a message or
    another task's end). Ended: ``completed``, ``failed``, ``cancelled``, ``released`` (handed back
    without an outcome: deferred, snoozed, released on drain; a new run takes over, no attempt
    spent) and ``suspended`` (parked: a ``sleeping`` run of the same attempt takes over).
    """

    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"  # ended without an outcome: deferred, snoozed or released on drain
    SUSPENDED = "suspended"  # parked by a sleep or a wait: a sleeping run takes over


class FailureReason(StrEnum):
    """Why a run failed.

    ``errored`` (the handler raised), ``job_timeout`` (it outlived the task's ``timeout``),
    ``heartbeat_timeout`` (no ``ctx.heartbeat()`` or checkpoint within ``heartbeat_timeout``, or its
    lease lapsed while its worker was alive: a blocked event loop), ``crash`` (the lease lapsed and
    the worker is gone: SIGKILL, OOM, a lost machine), ``cancelled``. Every reason but ``cancelled``
    spends an attempt.
    """

    ERRORED = "errored"
    JOB_TIMEOUT = "job_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    CRASH = "crash"
    CANCELLED = "cancelled"


class ReasonClass(StrEnum):
    """A bounded classification of a failure, from its reason and error type (see
    :mod:`durable.protocol.failures`)."""

    TRANSPORT = "transport"
    VALIDATION = "validation"
    TIMEOUT = "timeout"
    CRASH = "crash"
    EXHAUSTED = "exhausted"
    UNKNOWN = "unknown"


class DiscardReason(StrEnum):
    """Why a task ended without completing, as its ``on_discard`` hook is told
    (:class:`~durable.protocol.errors.TaskDiscarded`)."""

    EXHAUSTED = "exhausted"  # its last attempt failed
    NON_RETRYABLE = "non_retryable"  # a failure not to be retried ended it before that
    CANCELLED = "cancelled"  # app.cancel, cancel_by
    DISCARDED = "discarded"  # an operator's discard of a live task
    CANCELLATION_POLICY = "cancellation_policy"  # its Cancellation(max_delay, max_duration)
    DEPENDENCY_FAILED = "dependency_failed"  # a task in its depends_on failed or was cancelled
    PARENT_CANCELLED = "parent_cancelled"  # the task that spawned it was cancelled


class FailedWorkState(StrEnum):
    """Where a row of failed work stands: ``failed`` (dead: it runs again only if an operator
    retries it) or ``retrying`` (it will run again by itself).
    """

    FAILED = "failed"  # dead: runs again only if an operator retries it
    RETRYING = "retrying"  # failed at least once and will run again (it has a live run)


class Recovery(StrEnum):
    """What an operator's retry of failed work would do."""

    RETRY_FROM_CHECKPOINT = "retry_from_checkpoint"  # a new run replays the recorded steps
    RETRY = "retry"  # a new run, from the start: nothing was checkpointed
    NONE = "none"  # nothing to do: the task will run again by itself


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Why a task's last run failed: the reason, and the error when the handler raised."""

    reason: FailureReason
    run_id: uuid.UUID | None = None
    attempt: int | None = None
    error: dict[str, JSON] | None = None

    @property
    def message(self) -> str:
        """The error's ``"Type: message"``, or ``""`` when the run failed without an error document
        (a crash, a timeout before any error).
        """
        if not self.error:
            return ""
        return f"{self.error.get('type', '')}: {self.error.get('message', '')}".strip(": ")

    @classmethod
    def from_json(cls, doc: dict[str, JSON] | None) -> Failure | None:
        """Read the ``failure`` document the protocol returns (``reason``, ``run_id``, ``attempt``,
        ``error``); None for none.
        """
        if not doc:
            return None
        run_id = doc.get("run_id")
        return cls(
            reason=FailureReason(doc["reason"]),
            run_id=uuid.UUID(run_id) if run_id else None,
            attempt=doc.get("attempt"),
            error=doc.get("error"),
        )
