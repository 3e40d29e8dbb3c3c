"""How a run ended, as its worker wrote it, and why a worker stopped a run early: one vocabulary
for the executor, the worker, the leases' supervisor and the observers (metrics, tracing).

===================== ======================================= ========================
outcome               what the worker wrote                    stops a run early?
===================== ======================================= ========================
``completed``         ``complete``
``errored``           ``fail(errored)``: the handler raised
``job_timeout``       ``fail(job_timeout)``
``heartbeat_timeout`` ``fail(heartbeat_timeout)``              yes: the supervisor
``released``          ``schedule_run(0)``: handed back         yes: a drain
``snoozed``           ``schedule_run(seconds)``
``suspended``         nothing: parked by a sleep or a wait
``lease_lost``        nothing: another run owns the task      yes: lease renewal
``unwritten``         nothing: the write failed or timed out
===================== ======================================= ========================
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from durable.protocol.records import FailureReason


class Outcome(StrEnum):
    COMPLETED = "completed"
    ERRORED = "errored"
    JOB_TIMEOUT = "job_timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    RELEASED = "released"
    SNOOZED = "snoozed"
    SUSPENDED = "suspended"
    LEASE_LOST = "lease_lost"
    UNWRITTEN = "unwritten"

    @property
    def failure_reason(self) -> FailureReason | None:
        """The failure reason a failed outcome is recorded with; None for the others."""
        return _FAILURE_REASONS.get(self)

    @property
    def label(self) -> str:
        """The outcome as metrics and traces name it: the three failures are ``failed``."""
        return "failed" if self in _FAILURE_REASONS else self.value


_FAILURE_REASONS = {
    Outcome.ERRORED: FailureReason.ERRORED,
    Outcome.JOB_TIMEOUT: FailureReason.JOB_TIMEOUT,
    Outcome.HEARTBEAT_TIMEOUT: FailureReason.HEARTBEAT_TIMEOUT,
}


@dataclass(frozen=True, slots=True)
class RunEnded:
    """What observers are told once a run's outcome is written (or given up): the outcome, and
    the handler's exception when a failure has one."""

    outcome: Outcome
    error: BaseException | None = None

    @property
    def reason(self) -> FailureReason | None:
        return self.outcome.failure_reason
