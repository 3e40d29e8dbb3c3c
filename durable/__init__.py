"""durable: durable asyncio tasks on PostgreSQL.

The public face: every name a user needs, re-exported from the layer that defines it (see
``docs/architecture.md``). Importing it also plugs the optional surfaces, tracing and metrics,
into the client and the runtime (they install themselves when imported; each costs nothing
until used).
"""

from importlib import metadata as _metadata

from durable import metrics as _metrics  # noqa: F401 — installs itself (see above)
from durable import tracing as _tracing  # noqa: F401 — installs itself (see above)
from durable.app import Durable
from durable.blocking import SyncDurable, SyncTaskHandle
from durable.client import Client
from durable.protocol.connections import SpawnConnection
from durable.protocol.cron import Missed
from durable.protocol.errors import (
    BatchNotFound,
    DatabaseUnavailable,
    DurableError,
    EventTimeout,
    InvalidArgument,
    InvalidQueueName,
    InvalidState,
    InvalidTimeZone,
    LeaseLost,
    NonRetryable,
    NotSerializable,
    PatchRetired,
    PayloadTooLarge,
    ResultTimeout,
    ScheduleNotFound,
    SchemaError,
    Snooze,
    TaskDiscarded,
    TaskFailed,
    TaskNotFound,
    UnknownTask,
)
from durable.protocol.failures import reason_class_counts
from durable.protocol.records import (
    BatchInfo,
    BatchRecord,
    Cancellation,
    Checkpoint,
    ChildTask,
    Claim,
    CronSchedule,
    DependencyResult,
    Dependent,
    DiscardReason,
    FailedWork,
    FailedWorkState,
    Failure,
    FailureGroup,
    FailureReason,
    FlowMinute,
    PausedQueue,
    Progress,
    QueueDepth,
    RateLimit,
    ReasonClass,
    Recovery,
    Retention,
    RetryInfo,
    RunRecord,
    RunState,
    SpawnInfo,
    SpawnOptions,
    TaskPage,
    TaskRecord,
    TaskResult,
    TaskState,
    TaskSummary,
    Unique,
    WorkerInfo,
)
from durable.protocol.retry import Exponential, Fixed
from durable.runtime.context import TaskContext
from durable.runtime.registry import TaskDefinition, TaskHandle
from durable.runtime.sync_context import SyncTaskContext
from durable.runtime.worker import Worker

try:
    __version__ = _metadata.version("durable")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BatchInfo",
    "BatchNotFound",
    "BatchRecord",
    "Cancellation",
    "Checkpoint",
    "ChildTask",
    "Claim",
    "Client",
    "CronSchedule",
    "DatabaseUnavailable",
    "DependencyResult",
    "Dependent",
    "DiscardReason",
    "Durable",
    "DurableError",
    "EventTimeout",
    "Exponential",
    "FailedWork",
    "FailedWorkState",
    "Failure",
    "FailureGroup",
    "FailureReason",
    "Fixed",
    "FlowMinute",
    "InvalidArgument",
    "InvalidQueueName",
    "InvalidState",
    "InvalidTimeZone",
    "LeaseLost",
    "Missed",
    "NonRetryable",
    "NotSerializable",
    "PatchRetired",
    "PausedQueue",
    "PayloadTooLarge",
    "Progress",
    "QueueDepth",
    "RateLimit",
    "ReasonClass",
    "Recovery",
    "ResultTimeout",
    "Retention",
    "RetryInfo",
    "RunRecord",
    "RunState",
    "ScheduleNotFound",
    "SchemaError",
    "Snooze",
    "SpawnConnection",
    "SpawnInfo",
    "SpawnOptions",
    "SyncDurable",
    "SyncTaskContext",
    "SyncTaskHandle",
    "TaskContext",
    "TaskDefinition",
    "TaskDiscarded",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskPage",
    "TaskRecord",
    "TaskResult",
    "TaskState",
    "TaskSummary",
    "Unique",
    "UnknownTask",
    "Worker",
    "WorkerInfo",
    "reason_class_counts",
]
