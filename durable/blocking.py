"""The blocking API: ``app.sync``, for Django, Flask, WSGI servers and scripts.

:class:`SyncDurable` runs the async client on an event loop of its own, in a background thread
started by anyio's blocking portal (:func:`anyio.from_thread.start_blocking_portal`), and each
of its methods is one ``portal.call``: it blocks the calling thread until the coroutine ends on
that loop, and returns its value or raises its error. The portal is thread-safe, so any number
of threads (a threaded WSGI server's) share it and the client's pool.

It opens on first use (or :meth:`SyncDurable.open`) and closes with :meth:`SyncDurable.close` or
at the end of a ``with`` block; an app is used either this way or from async code in one
process, since its pool belongs to one event loop.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, cast, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from durable.client import Client
from durable.protocol.errors import DurableError
from durable.protocol.records import SpawnKwargs, TaskRecord, TaskResult
from durable.runtime.registry import Registry, TaskDefinition, TaskHandle

__all__ = ["SyncDurable", "SyncTaskHandle"]

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")
A = ParamSpec("A")


@dataclass(frozen=True, slots=True)
class SyncTaskHandle(Generic[R]):
    """What a blocking spawn returns: the task's identity, and ``handle.result()``, blocking."""

    sync: SyncDurable = field(repr=False, compare=False)
    queue: str
    task_name: str
    task_id: uuid.UUID
    run_id: uuid.UUID
    attempt: int
    created: bool

    def result(self, timeout: float | None = None) -> TaskResult[R]:
        """Block until the task ends; raise :class:`TaskFailed` if it failed or was cancelled."""
        outcome = self.sync.result(self.task_id, timeout=timeout, queue=self.queue)
        return cast(TaskResult[R], outcome)


class SyncDurable:
    """``app.sync``: spawn, wait for results, read and cancel tasks from code that blocks."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._portal_cm: contextlib.AbstractContextManager[BlockingPortal] | None = None
        self._client_cm: contextlib.AbstractContextManager[Client] | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> SyncDurable:
        """Start the background event loop and connect (migrating, as the app does); a no-op
        when open. Calls open it themselves; opening first makes the first call fast and
        reports a bad DSN at start-up."""
        self._open_portal()
        return self

    def close(self) -> None:
        """Close the client's pool and stop the background loop (a later call opens again)."""
        with self._lock:
            portal_cm, client_cm = self._portal_cm, self._client_cm
            self._portal = self._portal_cm = self._client_cm = None
            if portal_cm is None or client_cm is None:
                return
            try:
                client_cm.__exit__(None, None, None)
            finally:
                portal_cm.__exit__(None, None, None)

    @property
    def is_open(self) -> bool:
        return self._portal is not None

    def __enter__(self) -> SyncDurable:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open_portal(self) -> BlockingPortal:
        portal = self._portal
        if portal is not None:
            return portal
        with self._lock:
            if self._portal is None:
                if self._registry.client.connected:
                    raise DurableError(
                        "this app is connected from async code (async with app, run_worker), and"
                        " its pool belongs to that event loop — use app.sync in an app object"
                        " that async code does not enter (another Durable(...))"
                    )
                portal_cm = start_blocking_portal(name="durable-sync")
                portal = portal_cm.__enter__()
                # the client is entered and exited in one task of the portal's loop, as
                # `async with client` would be (its task groups must be)
                client_cm = portal.wrap_async_context_manager(self._registry.client)
                try:
                    client_cm.__enter__()
                except BaseException as exc:
                    portal_cm.__exit__(type(exc), exc, exc.__traceback__)
                    raise
                self._portal_cm, self._client_cm, self._portal = portal_cm, client_cm, portal
            return self._portal

    def _call(self, fn: Callable[A, Awaitable[T]], /, *args: A.args, **kwargs: A.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on the background loop; block until it returns."""
        return self._open_portal().call(functools.partial(fn, *args, **kwargs))

    # --- producing ------------------------------------------------------------------------------

    @overload
    def spawn(
        self,
        task: TaskDefinition[None, R],
        params: None = None,
        *,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> SyncTaskHandle[R]: ...

    @overload
    def spawn(
        self,
        task: TaskDefinition[P, R],
        params: P,
        *,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> SyncTaskHandle[R]: ...

    @overload
    def spawn(
        self,
        task: str,
        params: Any = None,
        *,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> SyncTaskHandle[Any]: ...

    def spawn(
        self,
        task: TaskDefinition[Any, Any] | str,
        params: Any = None,
        *,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> SyncTaskHandle[Any]:
        """Spawn ``task`` (a definition, or a name: a producer that does not register the task
        names its ``queue``) with ``params`` and spawn options, as ``await task.spawn(...)``
        does; blocks until the task is stored."""
        spawn = functools.partial(self._registry.spawn, task, params, queue=queue, **options)
        return self._handle(self._call(spawn))

    def spawn_many(
        self,
        items: Sequence[tuple[TaskDefinition[Any, Any] | str, Any]],
        *,
        queue: str | None = None,
        **options: Unpack[SpawnKwargs],
    ) -> list[SyncTaskHandle[Any]]:
        """Spawn ``(task, params)`` pairs of one queue in one statement (``app.spawn_many``)."""
        spawn = functools.partial(self._registry.spawn_many, items, queue=queue, **options)
        return [self._handle(handle) for handle in self._call(spawn)]

    def _handle(self, handle: TaskHandle[Any]) -> SyncTaskHandle[Any]:
        return SyncTaskHandle(
            self,
            handle.queue,
            handle.task_name,
            handle.task_id,
            handle.run_id,
            handle.attempt,
            handle.created,
        )

    # --- results and operations -----------------------------------------------------------------

    def result(
        self, task_id: uuid.UUID, *, timeout: float | None = None, queue: str | None = None
    ) -> TaskResult[Any]:
        """Block until the task ends (woken by NOTIFY); raise :class:`TaskFailed` unless it
        completed, ``TimeoutError`` after ``timeout`` seconds."""
        return self._call(self._registry.client.result, queue, task_id, timeout=timeout)

    def get_task(self, task_id: uuid.UUID, *, queue: str | None = None) -> TaskRecord:
        return self._call(self._registry.client.get_task, queue, task_id)

    def cancel(self, task_id: uuid.UUID, *, queue: str | None = None) -> None:
        """Cancel the task (its running run stops at its next heartbeat or checkpoint)."""
        self._call(self._registry.client.cancel, queue, task_id)
