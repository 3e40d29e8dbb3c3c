"""OpenTelemetry spans around spawn and each run; the trace context travels in task headers.

Optional (``pip install 'durable[otel]'``): without ``opentelemetry-api`` every function here
returns at once. With the API but no tracer provider configured (the API's no-op default) no
span is made either, and a spawn injects nothing, unless the caller is inside a valid span
context (one extracted from an incoming request, say): that context is passed on.

Spans, to the global tracer provider (or the one given to :func:`set_tracer_provider`):

* ``durable.spawn <task_name>``, kind PRODUCER, around ``Client.spawn`` and ``spawn_many`` (a
  batch of several task names: ``durable.spawn_many``). Attributes ``durable.queue``,
  ``durable.task_name``, then ``durable.task_id`` and ``durable.created`` (a batch:
  ``durable.count`` and ``durable.created_count``). Inside it the current context is injected
  into the task's headers (W3C ``traceparent``/``tracestate`` with the default propagators),
  unless the caller set ``traceparent`` there already.
* ``durable.run <task_name>``, kind CONSUMER, around each run a worker executes; its parent is
  the context extracted from the task's headers. Attributes ``durable.queue``,
  ``durable.task_name``, ``durable.task_id``, ``durable.run_id``, ``durable.attempt``, then
  ``durable.outcome`` (and ``durable.failure_reason``). Status ERROR when the run failed (other
  than by cancellation), lost its lease or its outcome was not written; the handler's exception
  is recorded. The span is current while the handler runs: its spans, and the tasks it spawns,
  nest under it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from durable.client import instruments as client_instruments
from durable.client.instruments import NO_TRACE, SpawnTrace
from durable.protocol.records import JSON, Claim, FailureReason, SpawnInfo, SpawnOptions
from durable.runtime import instruments as runtime_instruments
from durable.runtime.outcome import Outcome, RunEnded

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed: every function here is a no-op
    AVAILABLE = False
else:
    AVAILABLE = True
    _NO_OP_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from durable.protocol.records import Claim

#: The header whose presence means the caller chose the task's trace context itself.
TRACEPARENT = "traceparent"

#: How often the global tracer provider is looked up again (asking the API costs about a
#: microsecond, too much for every run): a provider set later is used within this many seconds.
PROVIDER_RECHECK_S = 1.0

_provider: TracerProvider | None = None
_tracer_of: tuple[TracerProvider, Tracer] | None = None  # the last provider and its tracer
_global_checked_at = -math.inf
_global_tracer: Tracer | None = None


def set_tracer_provider(provider: TracerProvider | None) -> None:
    """Send durable's spans to ``provider`` rather than the global tracer provider (``None``:
    back to the global one)."""
    global _provider, _global_checked_at
    _provider = provider
    _global_checked_at = -math.inf


def _tracer() -> Tracer | None:
    """The tracer of durable's spans; None when no tracer provider is configured."""
    global _global_checked_at, _global_tracer
    if _provider is not None:
        return _tracer_from(_provider)
    now = time.monotonic()
    if now - _global_checked_at >= PROVIDER_RECHECK_S:
        _global_tracer = _tracer_from(trace.get_tracer_provider())
        _global_checked_at = now
    return _global_tracer


def _tracer_from(provider: TracerProvider) -> Tracer | None:
    global _tracer_of
    if isinstance(provider, _NO_OP_PROVIDERS):
        return None  # the API alone: every span would be a no-op
    if _tracer_of is None or _tracer_of[0] is not provider:
        _tracer_of = (provider, provider.get_tracer("durable"))
    return _tracer_of[1]


# --- spawn ----------------------------------------------------------------------------------------


class _Propagate(SpawnTrace):
    """No tracer, but the caller is inside a valid span context: pass it on in the headers."""

    __slots__ = ("_carrier",)

    def __init__(self, carrier: dict[str, str]) -> None:
        self._carrier = carrier

    def options(self, options: SpawnOptions) -> SpawnOptions:
        return _with_trace_headers(options, self._carrier)


class _SpawnSpan(SpawnTrace):
    """A PRODUCER span, current while the spawn runs; its context goes into the headers."""

    __slots__ = ("_carrier", "_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._carrier: dict[str, str] = {}
        self._token: Token[Context] | None = None

    def __enter__(self) -> SpawnTrace:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        propagate.inject(self._carrier)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        if isinstance(exc, Exception):
            self._span.record_exception(exc)
            self._span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        self._span.end()

    def options(self, options: SpawnOptions) -> SpawnOptions:
        return _with_trace_headers(options, self._carrier)

    def spawned(self, info: SpawnInfo) -> None:
        self._span.set_attribute("durable.task_id", str(info.task_id))
        self._span.set_attribute("durable.created", info.created)

    def spawned_many(self, infos: list[SpawnInfo]) -> None:
        self._span.set_attribute("durable.count", len(infos))
        self._span.set_attribute("durable.created_count", sum(i.created for i in infos))


def spawning(queue: str, task_name: str) -> SpawnTrace:
    """The tracing of one spawn of ``task_name`` on ``queue``."""
    if not AVAILABLE:
        return NO_TRACE
    tracer = _tracer()
    if tracer is None:
        return _propagating()
    attributes = {"durable.queue": queue, "durable.task_name": task_name}
    span = tracer.start_span(
        f"durable.spawn {task_name}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    )
    return _SpawnSpan(span)


def spawning_many(queue: str, task_names: Iterable[str]) -> SpawnTrace:
    """The tracing of one ``spawn_many`` on ``queue``: one span for the batch."""
    if not AVAILABLE:
        return NO_TRACE
    tracer = _tracer()
    if tracer is None:
        return _propagating()
    names = set(task_names)
    attributes: dict[str, Any] = {"durable.queue": queue}
    if len(names) == 1:
        (task_name,) = names
        attributes["durable.task_name"] = task_name
        span_name = f"durable.spawn {task_name}"
    else:
        attributes["durable.task_names"] = sorted(names)
        span_name = "durable.spawn_many"
    span = tracer.start_span(span_name, kind=trace.SpanKind.PRODUCER, attributes=attributes)
    return _SpawnSpan(span)


def _propagating() -> SpawnTrace:
    if not trace.get_current_span().get_span_context().is_valid:
        return NO_TRACE
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return _Propagate(carrier) if carrier else NO_TRACE


def _with_trace_headers(options: SpawnOptions, carrier: dict[str, str]) -> SpawnOptions:
    """``options`` whose headers carry ``carrier`` too; the caller's own keys win, and a caller
    who set ``traceparent`` keeps the headers as given."""
    if not carrier:
        return options
    headers = options.headers
    if headers is not None and TRACEPARENT in headers:
        return options
    merged: dict[str, JSON] = {**carrier}
    if headers:
        merged.update(headers)
    return dataclasses.replace(options, headers=merged)


# --- runs -----------------------------------------------------------------------------------------


class _RunSpan:
    """The CONSUMER span of one run, current (attached) until the run's outcome is written."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span, token: Token[Context]) -> None:
        self._span = span
        self._token = token

    def run_ended(self, ended: RunEnded) -> None:
        span = self._span
        span.set_attribute("durable.outcome", ended.outcome.label)
        if ended.reason is not None:
            span.set_attribute("durable.failure_reason", str(ended.reason))
        if ended.error is not None:
            span.record_exception(ended.error)
        if ended.outcome in (Outcome.LEASE_LOST, Outcome.UNWRITTEN) or (
            ended.reason is not None and ended.reason is not FailureReason.CANCELLED
        ):
            reason = ended.reason or ended.outcome
            detail = f"{reason}: {ended.error}" if ended.error is not None else str(reason)
            span.set_status(trace.StatusCode.ERROR, detail)
        span.end()
        otel_context.detach(self._token)


class RunTracer:
    """The executor's tracing observer: a span around each run while a tracer provider is
    configured (checked per run: a provider set after the worker started is used)."""

    __slots__ = ()

    def run_started(self, claim: Claim) -> _RunSpan | None:
        tracer = _tracer()
        if tracer is None:
            return None
        # only string headers can be trace context (a header may hold any JSON value)
        carrier = {k: v for k, v in claim.headers.items() if isinstance(v, str)}
        parent = propagate.extract(carrier)
        span = tracer.start_span(
            f"durable.run {claim.task_name}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "durable.queue": claim.queue,
                "durable.task_name": claim.task_name,
                "durable.task_id": str(claim.task_id),
                "durable.run_id": str(claim.run_id),
                "durable.attempt": claim.attempt,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return _RunSpan(span, token)


def run_observer() -> RunTracer | None:
    """The worker's tracing observer; None when OpenTelemetry is not installed."""
    return RunTracer() if AVAILABLE else None


class _SpawnTracer:
    """The spawn tracing the client calls (installed below)."""

    __slots__ = ()

    def spawning(self, queue: str, task_name: str) -> SpawnTrace:
        return spawning(queue, task_name)

    def spawning_many(self, queue: str, task_names: Iterable[str]) -> SpawnTrace:
        return spawning_many(queue, task_names)


client_instruments.install_spawn_tracer(_SpawnTracer())
runtime_instruments.install_run_observer(run_observer)
