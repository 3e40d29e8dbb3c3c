"""TaskContext: what a handler sees of its run — identity, checkpointed steps, heartbeats."""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import structlog

from durable.errors import BatcherClosed, InvalidArgument, LeaseLost
from durable.records import Claim
from durable.retry import seconds
from durable.store import RawJson, encode_json
from durable.telemetry import run_fields

if TYPE_CHECKING:
    from durable.client import Client
    from durable.group_commit import RunWrites


class RunControl:
    """The executor's handle on one run: liveness marks and the reason it was stopped."""

    def __init__(self, claim: Claim, on_finish: Callable[[], None] | None = None) -> None:
        self.claim = claim
        self.ids = run_fields(claim)  # the run's log fields, computed once
        self._on_finish = on_finish
        self.last_beat = time.monotonic()
        self.scope = anyio.CancelScope()
        self.stop_reason: str | None = None  # "lease_lost" | "heartbeat_timeout" | "release"
        self.finished = False  # the handler is done; only its outcome write is left

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def finish(self) -> None:
        """The handler is done (its outcome write may still be in flight): its slot is free."""
        self.finished = True
        if self._on_finish is not None:
            self._on_finish()

    def stop(self, reason: str) -> None:
        """Cancel the run's scope, remembering why (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()


class TaskContext:
    """Passed to every handler as its first argument."""

    def __init__(
        self, client: Client, control: RunControl, writes: RunWrites | None = None
    ) -> None:
        claim = control.claim
        self._client = client
        self._control = control
        self._writes = writes
        self.task_id: uuid.UUID = claim.task_id
        self.run_id: uuid.UUID = claim.run_id
        self.attempt: int = claim.attempt
        self.max_attempts: int = claim.max_attempts
        self.task_name: str = claim.task_name
        self.queue: str = claim.queue
        self.headers: dict[str, Any] = claim.headers
        self._recorded: dict[str, Any] | None = None if claim.has_checkpoints else {}
        self._seen: dict[str, int] = {}

    @functools.cached_property
    def log(self) -> Any:
        """A structlog logger bound to this run's identity (bound on first use)."""
        return structlog.get_logger("durable").bind(**self._control.ids)

    async def step(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` once for this task and checkpoint its JSON result.

        On a later attempt the recorded value is returned without calling ``fn``. The same name
        used again within one run (a loop) gets its own checkpoint: ``name``, ``name#2``, ...
        Sync functions run in a worker thread.
        """
        if not isinstance(name, str) or not name:
            # refused here, not in a batched write, where it would fail other runs' checkpoints
            raise InvalidArgument(f"step name must be a non-empty string, got {name!r}")
        count = self._seen.get(name, 0) + 1
        self._seen[name] = count
        key = name if count == 1 else f"{name}#{count}"
        recorded = await self._load_recorded()
        if key in recorded:
            return recorded[key]
        self._check_lease()  # a run known to have lost its lease starts no more step bodies
        if inspect.iscoroutinefunction(fn):
            value = await fn(*args)
        else:
            value = await anyio.to_thread.run_sync(fn, *args)
            if inspect.isawaitable(value):
                value = await value
        encoded = encode_json(value, f"the value of step {key!r}")
        await self._write(self._checkpoint(key, encoded))
        self._control.beat()
        recorded[key] = orjson.loads(bytes(encoded))
        return recorded[key]

    async def heartbeat(self, extend_by: float | None = None) -> None:
        """Tell the supervisor this run is alive; with ``extend_by`` also extend the lease now."""
        self._check_lease()
        self._control.beat()
        if extend_by is not None:
            await self._write(
                self._client.extend_claim(
                    self.queue, self.run_id, seconds(extend_by, what="extend_by")
                )
            )

    async def _checkpoint(self, key: str, encoded: RawJson) -> None:
        """Record the step: batched with other runs' checkpoints when the worker batches."""
        if self._writes is not None:
            try:
                if await self._writes.checkpoints.submit(self.queue, (self.run_id, key, encoded)):
                    return
            except BatcherClosed:
                pass  # shutting down: write it on its own (that raises LeaseLost if it was lost)
            else:
                raise LeaseLost(self.run_id, "run is not running under an unexpired lease")
        await self._client.set_checkpoint(self.queue, self.run_id, key, encoded, None)

    def _check_lease(self) -> None:
        if self._control.stop_reason == "lease_lost":
            raise LeaseLost(self.run_id, "the worker found the lease lost")

    async def _write(self, op: Any) -> Any:
        try:
            return await op
        except LeaseLost:
            self._control.stop("lease_lost")
            raise

    async def _load_recorded(self) -> dict[str, Any]:
        if self._recorded is None:
            checkpoints = await self._client.get_checkpoints(self.queue, self.task_id)
            self._recorded = {c.step_name: c.value for c in checkpoints}
        return self._recorded
