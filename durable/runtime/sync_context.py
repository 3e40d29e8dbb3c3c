"""SyncTaskContext: what a plain ``def`` handler sees of its run.

A ``def`` handler runs in a worker thread, so it cannot ``await``. Its context offers the same
things as :class:`~durable.runtime.context.TaskContext`, as ordinary calls: each one runs the
async context's method on the worker's event loop (``anyio.from_thread``) and blocks the handler's
thread until it is done. A step's body runs in the handler's own thread (a sync function) or on
the loop (a coroutine function), so a sync step takes no second thread.

When the worker has stopped the run (its timeout passed, it missed its heartbeat, it lost its
lease, the worker is shutting down), the next call raises :class:`RunStopped` in the handler's
thread: the handler unwinds instead of going on unobserved, and nothing more is written for it.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar, Unpack, overload

import anyio.from_thread

from durable.protocol.records import ChildTask, DependencyResult, SpawnKwargs, TaskResult
from durable.runtime.context import NOT_RECORDED, TaskContext
from durable.runtime.registry import TaskDefinition

A = ParamSpec("A")
T = TypeVar("T")
P = TypeVar("P")


class RunStopped(BaseException):
    """Raised in a ``def`` handler's thread when its run was stopped (timed out, missed its
    heartbeat, lost its lease, the worker shut down): the handler unwinds. A BaseException, so
    that a handler's ``except Exception`` does not swallow it."""


class SyncTaskContext:
    """Passed to every plain ``def`` handler as its first argument: :class:`TaskContext`'s
    identity and operations, as blocking calls."""

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx
        self.task_id: uuid.UUID = ctx.task_id
        self.run_id: uuid.UUID = ctx.run_id
        self.attempt: int = ctx.attempt
        self.max_attempts: int = ctx.max_attempts
        self.task_name: str = ctx.task_name
        self.queue: str = ctx.queue
        self.headers: dict[str, Any] = ctx.headers

    @property
    def log(self) -> Any:
        """A structlog logger bound to this run's identity."""
        return self._ctx.log

    @overload
    def step(
        self, name: str, fn: Callable[A, Awaitable[T]], /, *args: A.args, **kwargs: A.kwargs
    ) -> T: ...

    @overload
    def step(self, name: str, fn: Callable[A, T], /, *args: A.args, **kwargs: A.kwargs) -> T: ...

    def step(self, name: str, fn: Callable[A, Any], /, *args: A.args, **kwargs: A.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this task and checkpoint its JSON result (see
        :meth:`TaskContext.step`). A sync ``fn`` runs in this thread."""
        key, recorded = self._run(self._ctx.begin_step, name)
        if recorded is not NOT_RECORDED:
            return recorded
        if inspect.iscoroutinefunction(fn):
            value = self._run(functools.partial(fn, *args, **kwargs))
        else:
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = self._run(_awaited, value)
        return self._run(self._ctx.end_step, key, value)

    def heartbeat(self, extend_by: float | None = None) -> None:
        """See :meth:`TaskContext.heartbeat`."""
        self._run(self._ctx.heartbeat, extend_by)

    def progress(self, pct: float, detail: Any = None) -> None:
        """See :meth:`TaskContext.progress`."""
        self._run(self._ctx.progress, pct, detail)

    def sleep(self, name: str, seconds: float | timedelta) -> None:
        """See :meth:`TaskContext.sleep`: the run is parked (this call does not return then)."""
        self._run(self._ctx.sleep, name, seconds)

    def sleep_until(self, name: str, when: datetime) -> None:
        """See :meth:`TaskContext.sleep_until`."""
        self._run(self._ctx.sleep_until, name, when)

    def await_event(self, name: str, *, timeout: float | timedelta | None = None) -> Any:
        """See :meth:`TaskContext.await_event`."""
        return self._run(functools.partial(self._ctx.await_event, name, timeout=timeout))

    def spawn(
        self,
        task: TaskDefinition[P, Any] | str,
        params: P | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> ChildTask:
        """See :meth:`TaskContext.spawn`."""
        spawn = functools.partial(self._ctx.spawn, task, params, name=name, queue=queue, **options)
        return self._run(spawn)

    def result(
        self, child: ChildTask | uuid.UUID, *, timeout: float | timedelta | None = None
    ) -> TaskResult[Any]:
        """See :meth:`TaskContext.result`."""
        return self._run(functools.partial(self._ctx.result, child, timeout=timeout))

    def gather(
        self,
        children: Iterable[ChildTask | uuid.UUID],
        *,
        timeout: float | timedelta | None = None,
    ) -> list[TaskResult[Any]]:
        """See :meth:`TaskContext.gather`."""
        return self._run(functools.partial(self._ctx.gather, list(children), timeout=timeout))

    def dependency_results(self) -> list[DependencyResult]:
        """See :meth:`TaskContext.dependency_results`."""
        return self._run(self._ctx.dependency_results)

    def recv(self, topic: str, *, timeout: float | timedelta | None = None) -> Any:
        """See :meth:`TaskContext.recv`: the run is parked while no message waits (this call
        does not return then)."""
        return self._run(functools.partial(self._ctx.recv, topic, timeout=timeout))

    def set_state(self, key: str, value: Any) -> None:
        """See :meth:`TaskContext.set_state`."""
        self._run(self._ctx.set_state, key, value)

    def patched(self, change_id: str) -> bool:
        """See :meth:`TaskContext.patched`."""
        return self._run(self._ctx.patched, change_id)

    def deprecate_patch(self, change_id: str) -> None:
        """See :meth:`TaskContext.deprecate_patch`."""
        self._run(self._ctx.deprecate_patch, change_id)

    def _run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """``await fn(*args)`` on the worker's event loop; :class:`RunStopped` once the worker
        stopped this run."""
        if self._ctx.stopped:
            raise RunStopped
        try:
            return anyio.from_thread.run(fn, *args)
        except anyio.get_cancelled_exc_class():
            raise RunStopped from None


async def _awaited(value: Awaitable[T]) -> T:
    return await value
