"""The hooks through which metrics and tracing watch a worker's runs.

Metrics (:mod:`durable.metrics`) and tracing (:mod:`durable.tracing`) are surfaces: they sit above
the runtime, which must not import them. They install themselves here instead (importing
``durable`` imports them), and the worker asks this module for its observers. Without any, nothing
is called per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from durable.protocol.records import Claim
from durable.runtime.outcome import RunEnded

if TYPE_CHECKING:
    from durable.client import Client


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStatus:
    """A worker at one instant, for its metrics and its health endpoints: its slots, how many run
    a handler (``busy``), how many runs wait claimed ahead of a slot, whether it is draining,
    whether the database answered its last call (``database_ok``) and its claim loop runs
    (``claiming``), and how many database calls failed so far, by what it was doing."""

    worker_id: str
    concurrency: int
    busy: int
    claimed_ahead: int
    draining: bool
    database_ok: bool
    claiming: bool
    database_errors: Mapping[str, int]

    @property
    def ready(self) -> bool:
        """Ready to take work: claiming, not draining, and the database reachable."""
        return self.claiming and not self.draining and self.database_ok


class RunWatch(Protocol):
    def run_ended(self, ended: RunEnded) -> None: ...


class RunObserver(Protocol):
    """Watches the runs a worker executes. ``run_started`` is called in the run's task before its
    handler; the watch it returns (None: not this run) is told how the run ended once the
    outcome is written, in the same task."""

    def run_started(self, claim: Claim) -> RunWatch | None: ...


class WorkerMetrics(RunObserver, Protocol):
    """A worker's metrics endpoint: an observer of its runs, served on a port of its own."""

    port: int

    async def listen(self) -> None: ...

    async def run(
        self,
        client: Client,
        db_timeout: float,
        status: Callable[[], WorkerStatus],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None: ...

    async def close(self) -> None: ...


#: ``(queues, host, port, interval, tasks) -> WorkerMetrics``; tasks are (queue, task name).
MetricsFactory = Callable[
    [Sequence[str], str, int, float, Iterable[tuple[str, str]]], WorkerMetrics
]

_observers: list[Callable[[], RunObserver | None]] = []
_metrics: MetricsFactory | None = None


def install_run_observer(make: Callable[[], RunObserver | None]) -> None:
    """Give every worker started from now on the observer ``make()`` returns (None: none)."""
    _observers.append(make)


def install_metrics(factory: MetricsFactory) -> None:
    """How a worker given a metrics port makes its endpoint (``durable.metrics`` installs it)."""
    global _metrics
    _metrics = factory


def worker_metrics(
    queues: Sequence[str], host: str, port: int, interval: float, tasks: Iterable[tuple[str, str]]
) -> WorkerMetrics | None:
    """A worker's metrics endpoint; None when no metrics surface is installed."""
    return None if _metrics is None else _metrics(queues, host, port, interval, tasks)


def run_observers() -> list[RunObserver]:
    """The installed observers a new worker uses (besides its metrics)."""
    return [observer for make in _observers if (observer := make()) is not None]


def combine_observers(*observers: RunObserver | None) -> RunObserver | None:
    """One observer for the given ones (None among them: absent); None when there are none."""
    present = tuple(o for o in observers if o is not None)
    if len(present) <= 1:
        return present[0] if present else None
    return _Observers(present)


class _Observers:
    __slots__ = ("_observers",)

    def __init__(self, observers: tuple[RunObserver, ...]) -> None:
        self._observers = observers

    def run_started(self, claim: Claim) -> RunWatch | None:
        watches = [w for o in self._observers if (w := o.run_started(claim)) is not None]
        if len(watches) <= 1:
            return watches[0] if watches else None
        return _Watches(watches)


class _Watches:
    __slots__ = ("_watches",)

    def __init__(self, watches: list[RunWatch]) -> None:
        self._watches = watches

    def run_ended(self, ended: RunEnded) -> None:
        for watch in reversed(self._watches):  # the last started ends first (tracing's context)
            watch.run_ended(ended)
