"""The hook through which tracing follows spawns.

Tracing (:mod:`durable.tracing`) is a surface: it sits above the client, which must not import
it. The client calls :data:`spawn_tracer` instead, a no-op until tracing installs itself here
(importing ``durable`` imports it). A spawn goes::

    with spawn_tracer.spawning(queue, task_name) as traced:
        options = traced.options(options)  # the trace context in the task's headers
        info = ...  # the spawn
        traced.spawned(info)
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Protocol

from durable.protocol.records import SpawnInfo, SpawnOptions


class SpawnTrace:
    """The tracing of one spawn (or one batch): ``with`` it around the spawn, pass each task's
    options through :meth:`options`, report what was spawned. This base does nothing."""

    __slots__ = ()

    def __enter__(self) -> SpawnTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def options(self, options: SpawnOptions) -> SpawnOptions:
        """``options`` with the trace context in its headers (a new object; never mutated)."""
        return options

    def spawned(self, info: SpawnInfo) -> None:
        return None

    def spawned_many(self, infos: list[SpawnInfo]) -> None:
        return None


NO_TRACE = SpawnTrace()


class SpawnTracer(Protocol):
    def spawning(self, queue: str, task_name: str) -> SpawnTrace: ...

    def spawning_many(self, queue: str, task_names: Iterable[str]) -> SpawnTrace: ...


class _NoTracer:
    __slots__ = ()

    def spawning(self, queue: str, task_name: str) -> SpawnTrace:
        return NO_TRACE

    def spawning_many(self, queue: str, task_names: Iterable[str]) -> SpawnTrace:
        return NO_TRACE


#: What the client calls around every spawn; :func:`install_spawn_tracer` replaces it.
spawn_tracer: SpawnTracer = _NoTracer()


def install_spawn_tracer(tracer: SpawnTracer) -> None:
    """Route every spawn's tracing through ``tracer`` (``durable.tracing`` does, on import)."""
    global spawn_tracer
    spawn_tracer = tracer
