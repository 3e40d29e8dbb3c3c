"""Run ONE claimed run: its context, the handler under its cancel scopes, the outcome write.

Outcomes, written once and shielded from cancellation so shutdown never loses them:

* the handler returned        -> ``complete``
* the handler raised          -> ``fail(errored)`` with type, message and traceback
* it outlived its timeout     -> ``fail(job_timeout)``
* it stopped heartbeating     -> ``fail(heartbeat_timeout)`` (the supervisor cancelled it)
* its lease was lost          -> nothing: another run owns the task now
* the worker is draining      -> ``schedule_run(0)``: released for another worker at once
* it raised/returned Snooze   -> ``schedule_run(seconds)``: again later, no attempt spent
* it was parked (sleep, wait) -> nothing: the database ended the run when it parked it

A failure is retried unless the handler raised ``NonRetryable``, the task's ``retry_on`` or
``discard_on`` says otherwise, or the result was not JSON (:func:`is_retried`). Every outcome write
that meets an unreachable database is tried again while the run's lease holds
(:meth:`RunControl.ride_out`, the batchers' own retries).

A task's ``on_discard(ctx, error)`` hook is not called here: the SQL that ends a task
unsuccessfully (its last attempt failed, a cancel, a discard, a policy, a dependency or a parent
that ended) records a ``durable.on_discard`` task in the same transaction, and whichever worker
claims it runs :func:`run_discard_hook`. So no worker's death between the end and the hook
loses it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import traceback
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from durable.client import Client
from durable.protocol.codec import RawJson, encode_json
from durable.protocol.durations import seconds
from durable.protocol.errors import (
    BatcherClosed,
    DurableError,
    InvalidArgument,
    LeaseLost,
    NonRetryable,
    NotSerializable,
    Snooze,
    Suspended,
    TaskDiscarded,
    TaskNotFound,
)
from durable.protocol.failures import classify_error, is_retried
from durable.protocol.log import get_logger
from durable.protocol.records import (
    Claim,
    DiscardReason,
    Failure,
    FailureReason,
    ReasonClass,
    TaskRecord,
    TaskState,
)
from durable.runtime.context import RunControl, TaskContext, run_fields
from durable.runtime.group_commit import RunWrites
from durable.runtime.instruments import RunObserver
from durable.runtime.outcome import Outcome, RunEnded
from durable.runtime.registry import Registry, TaskDefinition
from durable.runtime.sync_context import SyncTaskContext

log = get_logger()

#: How long an outcome write may take before it is given up, at least (a completion handed over
#: to the batcher is bounded by the batcher's own deadline instead); longer while the run's lease
#: holds, as its write is tried again that long when the database is unreachable.
OUTCOME_WRITE_TIMEOUT_S = 15.0


def _outcome_deadline(control: RunControl) -> float:
    return max(OUTCOME_WRITE_TIMEOUT_S, control.lease_left() + control.write_timeout_s)


class JobTimeout(TimeoutError):
    """The run outlived the task's ``timeout``."""


def error_document(exc: BaseException) -> dict[str, Any]:
    doc: dict[str, Any] = {
        **_described(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "reason_class": str(classify_error(exc)),
    }
    cause = exc.cause if isinstance(exc, NonRetryable) else None
    if cause is not None:
        doc["cause"] = _described(cause)
    return doc


def _described(exc: BaseException) -> dict[str, str]:
    """An exception's type, module and message, as a run's error records them."""
    return {"type": type(exc).__qualname__, "module": type(exc).__module__, "message": str(exc)}


async def execute(
    client: Client,
    definition: TaskDefinition[Any, Any],
    control: RunControl,
    writes: RunWrites | None = None,
    observer: RunObserver | None = None,
) -> bool:
    """Run ``control.claim`` to its outcome. Never raises for the handler's sake.

    True when the outcome, a completion, was handed to the batcher without waiting for it (no
    observer is watching the run): ``control.end()`` is called once it is written. False: the
    outcome is written (or given up) already."""
    claim = control.claim
    outcome, value = Outcome.RELEASED, None
    ctx = TaskContext(client, definition.registry, control, writes)
    watch = observer.run_started(claim) if observer is not None else None
    ended = _UNWRITTEN
    try:
        with control.scope:
            try:
                value = await _run_handler(definition, ctx, claim.params, claim.timeout)
                outcome = Outcome.SNOOZED if isinstance(value, Snooze) else Outcome.COMPLETED
            except Suspended:
                outcome = Outcome.SUSPENDED
            except Snooze as exc:
                outcome, value = Outcome.SNOOZED, exc
            except JobTimeout as exc:
                outcome, value = Outcome.JOB_TIMEOUT, exc
            except LeaseLost as exc:
                control.stop_reason = control.stop_reason or Outcome.LEASE_LOST
                outcome, value = Outcome.LEASE_LOST, exc
            except Exception as exc:  # noqa: BLE001 — a handler's error is data: recorded on the run
                outcome, value = Outcome.ERRORED, exc
    except anyio.get_cancelled_exc_class():
        # the worker itself is being cancelled: hand the run back so another worker takes it now
        with anyio.move_on_after(_outcome_deadline(control), shield=True):
            ended = await _write_outcome(
                client, definition, control, Outcome.RELEASED, None, writes
            )
        if watch is not None:
            watch.run_ended(ended)
        raise
    control.finish()
    if control.stop_reason is not None and outcome is not Outcome.SUSPENDED:
        outcome = control.stop_reason
    if (
        outcome is Outcome.COMPLETED
        and writes is not None
        and watch is None
        and _hand_over(writes, control, value)
    ):
        return True
    with anyio.move_on_after(_outcome_deadline(control), shield=True):
        ended = await _write_outcome(client, definition, control, outcome, value, writes)
    if watch is not None:
        watch.run_ended(ended)
    return False


def _hand_over(writes: RunWrites, control: RunControl, result: Any) -> bool:
    """Queue the run's completion without waiting for it (the short task's hot path); False
    when it cannot be (the result is not JSON, the batcher is closing): write it as usual."""
    try:
        encoded = encode_json(result, "result")
    except NotSerializable:
        return False
    ids = control.ids

    def written(ok: bool, error: DurableError | None) -> None:
        if error is not None:
            log.error(
                "run.outcome_not_written", outcome=str(Outcome.COMPLETED), error=str(error), **ids
            )
        else:
            _completion_written(ok, ids)
        control.end()

    return writes.completions.hand_over(
        control.claim.queue, (control.claim.run_id, encoded), written
    )


_COMPLETED = RunEnded(Outcome.COMPLETED)
_RELEASED = RunEnded(Outcome.RELEASED)
_SNOOZED = RunEnded(Outcome.SNOOZED)
_SUSPENDED = RunEnded(Outcome.SUSPENDED)
_LEASE_LOST = RunEnded(Outcome.LEASE_LOST)
_UNWRITTEN = RunEnded(Outcome.UNWRITTEN)


def _completion_written(completed: bool, ids: dict[str, Any]) -> RunEnded:
    """Log a completion's write: completed, or refused because the run lost its lease."""
    if completed:
        log.info("run.completed", **ids)
        return _COMPLETED
    log.warning("lease.lost", **ids)
    return _LEASE_LOST


async def _run_handler(
    definition: TaskDefinition[Any, Any], ctx: TaskContext, params: Any, timeout: float | None
) -> Any:
    fn = definition.fn
    if timeout is None:
        return await _call(fn, ctx, params)
    with anyio.move_on_after(timeout) as scope:
        return await _call(fn, ctx, params)
    assert scope.cancelled_caught
    raise JobTimeout(f"the run exceeded its timeout of {timeout:g}s")


async def _call(fn: Callable[..., Any], ctx: TaskContext, params: Any) -> Any:
    if _is_async(fn):
        return await fn(ctx, params)
    # a plain def runs in a thread, with a context whose calls block it (SyncTaskContext)
    sync_ctx = SyncTaskContext(ctx)
    result = await anyio.to_thread.run_sync(fn, sync_ctx, params, abandon_on_cancel=True)
    if inspect.isawaitable(result):
        return await result
    return result


@functools.lru_cache(maxsize=1024)
def _is_async(fn: Callable[..., Any]) -> bool:
    """Whether a handler is a coroutine function (asked once per handler, not once per run)."""
    return inspect.iscoroutinefunction(fn)


async def _write_outcome(
    client: Client,
    definition: TaskDefinition[Any, Any],
    control: RunControl,
    outcome: Outcome,
    value: Any,
    writes: RunWrites | None,
) -> RunEnded:
    claim = control.claim
    ids = control.ids
    try:
        if outcome is Outcome.COMPLETED:
            try:
                encoded = encode_json(value, "result")
            except NotSerializable as exc:
                # the result is not JSON: the run failed, and is not retried (running the
                # handler again would repeat its side effects to return the same kind of value)
                await _fail(client, definition, control, Outcome.ERRORED, exc, retried=False)
                return RunEnded(Outcome.ERRORED, exc)
            return _completion_written(await _complete(client, writes, control, encoded), ids)
        if outcome is Outcome.RELEASED:
            await control.ride_out(
                "release", lambda: client.schedule_run(claim.queue, claim.run_id, 0)
            )
            log.info("run.released", **ids)
            return _RELEASED
        if outcome is Outcome.SNOOZED:
            await control.ride_out(
                "snooze", lambda: client.schedule_run(claim.queue, claim.run_id, value.seconds)
            )
            log.info("run.snoozed", snooze_s=value.seconds, **ids)
            return _SNOOZED
        if outcome is Outcome.SUSPENDED:
            log.info("run.suspended", **ids)
            return _SUSPENDED
        if outcome is Outcome.LEASE_LOST:
            log.warning("lease.lost", **ids)
            return _LEASE_LOST
        await _fail(client, definition, control, outcome, value)
        return RunEnded(outcome, value if isinstance(value, BaseException) else None)
    except LeaseLost:
        log.warning("lease.lost", **ids)
        return _LEASE_LOST
    except DurableError as exc:
        log.exception("run.outcome_not_written", outcome=str(outcome), error=str(exc), **ids)
        return _UNWRITTEN


async def _complete(
    client: Client, writes: RunWrites | None, control: RunControl, result: RawJson
) -> bool:
    """Complete the run, batched with others when the worker has batchers; False: lease lost."""
    claim = control.claim
    if writes is not None:
        try:
            return await writes.completions.submit(claim.queue, (claim.run_id, result))
        except BatcherClosed:
            pass  # shutting down: write it on its own
    await control.ride_out("completion", lambda: client.complete(claim.queue, claim.run_id, result))
    return True


async def _fail(
    client: Client,
    definition: TaskDefinition[Any, Any],
    control: RunControl,
    outcome: Outcome,
    exc: BaseException | None,
    *,
    retried: bool | None = None,
) -> None:
    """Record the run's failure: retried while attempts are left, unless ``retried`` is False or
    the task's rules say otherwise (:func:`is_retried`); then ``error["retryable"]`` is false and
    the task ends ``failed`` now."""
    claim = control.claim
    ids = control.ids
    reason = outcome.failure_reason
    assert reason is not None, outcome
    if exc is None or reason is FailureReason.HEARTBEAT_TIMEOUT:
        limit = claim.heartbeat_timeout
        error: dict[str, Any] = {
            "type": "HeartbeatTimeout",
            "message": f"no heartbeat or checkpoint for {limit:g}s" if limit else "no heartbeat",
        }
        exc = None
    else:
        error = error_document(exc)
    if retried is None:
        retried = is_retried(
            exc,
            ReasonClass(error.get("reason_class", ReasonClass.TIMEOUT)),
            retry_on=definition.retry_on,
            discard_on=definition.discard_on,
        )
    error["retryable"] = retried
    retry_in = None
    if (
        retried
        and definition.backoff is not None
        and exc is not None
        and claim.attempt < claim.max_attempts  # the last attempt has no next delay to compute
    ):
        retry_in = await _custom_delay(definition.backoff, claim.attempt, exc, ids)
    next_run = await control.ride_out(
        "failure",
        lambda: client.fail(claim.queue, claim.run_id, error, reason, retry_in=retry_in),
    )
    log.info("run.failed", reason=str(reason), error=error.get("message"), retryable=retried, **ids)
    if next_run is not None:
        log.info("run.retry_scheduled", next_run_id=str(next_run), **ids)
    else:
        log.warning("task.dead", reason=str(reason), **ids)


#: The task that SQL records, in the transaction that ends a task unsuccessfully, to call the
#: ended task's ``on_discard`` hook (``durable.record_discard_hook``).
DISCARD_TASK = "durable.on_discard"


async def run_discard_hook(client: Client, registry: Registry, control: RunControl) -> bool:
    """Run a ``durable.on_discard`` claim: call the ended task's ``on_discard(ctx, error)``,
    then complete the claim, so the hook runs once per end (again only if this worker dies
    before the completion: at least once). ``ctx`` is that of the run that ended the task, with
    the task's params (``ctx.params``); ``error`` a :class:`TaskDiscarded` saying why it ended.
    False when this worker does not know the ended task (another worker will take it)."""
    claim = control.claim
    params = claim.params
    try:
        try:
            record = await client.get_task(None, uuid.UUID(params["task_id"]))
        except TaskNotFound:
            record = None  # pruned since: there is nothing left to call the hook about
        if record is not None:
            definition = registry.get(record.task_name)
            if definition is None:
                return False
            if definition.on_discard is not None:
                await _call_discard_hook(client, registry, claim, record, definition.on_discard)
        await client.complete(claim.queue, claim.run_id, {"task_id": params["task_id"]})
    except LeaseLost:
        log.warning("lease.lost", **control.ids)
    except DurableError as exc:
        log.warning("task.on_discard_not_run", error=str(exc), **control.ids)
    finally:
        control.finish()
    return True


async def _call_discard_hook(
    client: Client,
    registry: Registry,
    claim: Claim,
    record: TaskRecord,
    hook: Callable[..., Any],
) -> None:
    """``hook(ctx, TaskDiscarded)`` for the end a ``durable.on_discard`` claim records. Its own
    error is logged, never raised (the task's end is written already)."""
    params = claim.params
    failure = Failure.from_json(params.get("failure")) or Failure.from_json(
        {  # a hook task recorded by an earlier durable: the failure's parts, no end reason
            "reason": FailureReason.CRASH,
            "run_id": params.get("run_id"),
            "attempt": params.get("attempt"),
            "error": params.get("error"),
        }
    )
    try:
        reason = DiscardReason(params.get("reason"))
    except ValueError:
        reason = DiscardReason.EXHAUSTED
    state = params.get("state") or str(TaskState.FAILED)
    ended = dataclasses.replace(
        claim,
        run_id=(failure and failure.run_id) or record.runs[-1].run_id,
        task_id=record.task_id,
        queue=record.queue,
        task_name=record.task_name,
        params=record.params,
        headers=record.headers,
        attempt=(failure and failure.attempt) or record.attempt,
        max_attempts=record.max_attempts,
    )
    ids = run_fields(ended)
    ctx = TaskContext(client, registry, RunControl(ended))
    try:
        result = hook(ctx, TaskDiscarded(record.task_id, state, reason, failure))
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        log.exception("task.on_discard_failed", error=str(exc), reason=str(reason), **ids)
    else:
        log.info("task.on_discard_called", reason=str(reason), **ids)


async def _custom_delay(
    backoff: Callable[[int, BaseException], Any],
    attempt: int,
    exc: BaseException,
    ids: dict[str, Any],
) -> float | None:
    """The task's own backoff, in seconds (the database adds it to its clock, not ours); None
    (the task's retry strategy decides) when the callable raised or gave no valid delay."""
    try:
        delay: Any = backoff(attempt, exc)
        if inspect.isawaitable(delay):
            delay = await delay
        if delay is None:
            raise InvalidArgument("the backoff returned no delay")  # noqa: TRY301 — logged below
        delay_s: float = seconds(delay, what="the backoff's delay")
    except Exception as error:  # a broken backoff must not lose the failure
        log.exception("run.backoff_failed", error=str(error), **ids)
        return None
    return delay_s
