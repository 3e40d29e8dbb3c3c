"""Waiting for a task to end: woken by the ``durable_done`` notification, without a query per
waiting task.

One LISTEN connection per client serves every waiter. A waiter reads the task's outcome, then
waits for its notification; when the LISTEN connection was lost meanwhile (a notification may
have been missed), it re-opens it and reads again.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from durable.protocol.records import TaskResult
from durable.protocol.store import CHANNEL_DONE, Listener

#: How often a waiter checks that the LISTEN connection is still open (no query).
LISTENER_CHECK_S = 1.0

Listen = Callable[[Mapping[str, Callable[[str], None]]], Awaitable[Listener]]
ReadResult = Callable[[], Awaitable[TaskResult[Any]]]


class ResultWaiters:
    """The tasks waited for, and the LISTEN connection that wakes their waiters."""

    def __init__(self, listen: Listen) -> None:
        self._listen = listen
        self._events: dict[uuid.UUID, set[anyio.Event]] = {}
        self._listener: Listener | None = None
        self._lock = anyio.Lock()

    async def wait(self, task_id: uuid.UUID, read: ReadResult) -> TaskResult[Any]:
        """``read()`` the task's outcome until it has ended, waking on its notification."""
        await self._ensure_listener()
        while True:
            event = anyio.Event()
            self._events.setdefault(task_id, set()).add(event)
            try:
                outcome = await read()
                if outcome.state.finished:
                    return outcome
                await self._until_notified(event)
            finally:
                waiting = self._events.get(task_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._events[task_id]

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()

    def _notify(self, payload: str) -> None:
        """A ``durable_done`` payload: one task id, or several separated by commas."""
        for text in payload.split(","):
            try:
                task_id = uuid.UUID(text)
            except ValueError:
                continue
            for event in self._events.pop(task_id, ()):
                event.set()

    async def _until_notified(self, event: anyio.Event) -> None:
        """Wait for the task's notification, or for the LISTEN connection to have been lost and
        re-opened (a notification may have been missed meanwhile)."""
        while True:
            with anyio.move_on_after(LISTENER_CHECK_S):
                await event.wait()
                return
            if self._listener is None or self._listener.closed:
                await self._ensure_listener()
                return

    async def _ensure_listener(self) -> None:
        async with self._lock:
            if self._listener is None or self._listener.closed:
                self._listener = await self._listen({CHANNEL_DONE: self._notify})
