"""durable: durable asyncio tasks on PostgreSQL."""

from durable.app import Durable, TaskDefinition, TaskHandle
from durable.client import Client
from durable.context import TaskContext
from durable.errors import (
    DatabaseUnavailable,
    DurableError,
    InvalidArgument,
    InvalidQueueName,
    InvalidState,
    LeaseLost,
    NotSerializable,
    PayloadTooLarge,
    TaskFailed,
    TaskNotFound,
    UnknownTask,
)
from durable.records import (
    Checkpoint,
    Claim,
    Failure,
    FailureReason,
    RunRecord,
    RunState,
    SpawnInfo,
    SpawnOptions,
    TaskRecord,
    TaskResult,
    TaskState,
)
from durable.retry import Exponential, Fixed
from durable.worker import Worker

__all__ = [
    "Checkpoint",
    "Claim",
    "Client",
    "DatabaseUnavailable",
    "Durable",
    "DurableError",
    "Exponential",
    "Failure",
    "FailureReason",
    "Fixed",
    "InvalidArgument",
    "InvalidQueueName",
    "InvalidState",
    "LeaseLost",
    "NotSerializable",
    "PayloadTooLarge",
    "RunRecord",
    "RunState",
    "SpawnInfo",
    "SpawnOptions",
    "TaskContext",
    "TaskDefinition",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskRecord",
    "TaskResult",
    "TaskState",
    "UnknownTask",
    "Worker",
]
