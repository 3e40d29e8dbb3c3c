"""Typed records the client returns. Frozen, slotted, built from rows by the store."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from durable.retry import RetryStrategy, seconds

JSON = Any


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RELEASED = "released"  # ended without an outcome: deferred or released on drain


class FailureReason(StrEnum):
    ERRORED = "errored"
    JOB_TIMEOUT = "job_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    CRASH = "crash"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnOptions:
    """Options of one spawn. Durations are seconds (float) or ``timedelta``."""

    idempotency_key: str | None = None
    max_attempts: int | None = None
    retry: RetryStrategy | None = None
    timeout: float | timedelta | None = None
    heartbeat_timeout: float | timedelta | None = None
    priority: int = 0
    delay: float | timedelta | None = None
    at: datetime | None = None
    headers: dict[str, JSON] | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.delay is not None and self.at is not None:
            raise ValueError("give delay or at, not both")
        if self.at is not None and self.at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        if self.headers is not None and not isinstance(self.headers, dict):
            raise ValueError("headers must be a JSON object (a dict)")

    def to_json(self) -> dict[str, JSON]:
        """The ``options`` document the SQL protocol takes (only the fields that are set)."""
        doc: dict[str, JSON] = {}
        if self.idempotency_key is not None:
            doc["idempotency_key"] = self.idempotency_key
        if self.max_attempts is not None:
            doc["max_attempts"] = self.max_attempts
        if self.retry is not None:
            doc["retry"] = self.retry.to_json()
        if (timeout := seconds(self.timeout, what="timeout")) is not None:
            doc["timeout"] = timeout
        if (hb := seconds(self.heartbeat_timeout, what="heartbeat_timeout")) is not None:
            doc["heartbeat_timeout"] = hb
        if self.priority:
            doc["priority"] = self.priority
        if (delay := seconds(self.delay, what="delay")) is not None:
            doc["delay"] = delay
        if self.at is not None:
            doc["at"] = self.at.isoformat()
        if self.headers is not None:
            doc["headers"] = self.headers
        return doc


@dataclass(frozen=True, slots=True)
class SpawnInfo:
    task_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    created: bool


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
class Failure:
    """Why a task's last run failed: the reason, and the error when the handler raised."""

    reason: FailureReason
    run_id: uuid.UUID | None = None
    attempt: int | None = None
    error: dict[str, JSON] | None = None

    @property
    def message(self) -> str:
        if not self.error:
            return ""
        return f"{self.error.get('type', '')}: {self.error.get('message', '')}".strip(": ")

    @classmethod
    def from_json(cls, doc: dict[str, JSON] | None) -> Failure | None:
        if not doc:
            return None
        run_id = doc.get("run_id")
        return cls(
            reason=FailureReason(doc["reason"]),
            run_id=uuid.UUID(run_id) if run_id else None,
            attempt=doc.get("attempt"),
            error=doc.get("error"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskResult:
    state: TaskState
    result: JSON = None
    failure: Failure | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord:
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


@dataclass(frozen=True, slots=True)
class Checkpoint:
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
