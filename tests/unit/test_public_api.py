"""The public face of the package is pinned: a change to it is a deliberate change to this list."""

from importlib import metadata

import durable


def test_public_names_are_pinned() -> None:
    assert durable.__all__ == [
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
    assert durable.__all__ == sorted(durable.__all__)
    for name in durable.__all__:
        assert hasattr(durable, name), name


def test_failure_reasons_are_the_contract() -> None:
    assert [r.value for r in durable.FailureReason] == [
        "errored",
        "job_timeout",
        "heartbeat_timeout",
        "crash",
        "cancelled",
    ]


def test_reason_classes_are_the_contract() -> None:
    assert [c.value for c in durable.ReasonClass] == [
        "transport",
        "validation",
        "timeout",
        "crash",
        "exhausted",
        "unknown",
    ]


def test_version_is_the_installed_distributions() -> None:
    assert durable.__version__ == metadata.version("durable")
    assert "__version__" not in durable.__all__  # a dunder, not one of the pinned names
