"""OpenTelemetry spans around spawn and each run of an in-process worker, the trace context
carried from the spawn to the run in the task's headers.

Spans are collected in memory by the SDK, through a tracer provider handed to
``durable.tracing`` only (the global one can be set once per process, and would trace every
other test too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support.in_process import running_worker
from support.waiting import wait_finished, wait_for
from worker_app import QUEUE

from durable import Client, Durable, SpawnOptions, TaskContext, TaskFailed, tracing

pytestmark = pytest.mark.anyio


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    tracing.set_tracer_provider(provider)
    try:
        yield provider
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def finished_spans(exporter: InMemorySpanExporter, *names: str) -> dict[str, ReadableSpan]:
    """The finished spans by name, once each of ``names`` has finished (a run's span ends just
    after its outcome is written, so a little after the task is seen finished)."""

    async def probe() -> dict[str, ReadableSpan] | None:
        spans = {span.name: span for span in exporter.get_finished_spans()}
        return spans if all(name in spans for name in names) else None

    return await wait_for(probe, timeout=10, what=f"the spans {names}")


def ids_of(traceparent: str) -> tuple[int, int]:
    """The trace id and the parent span id of a W3C ``traceparent``."""
    version, trace_id, span_id, _flags = traceparent.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_the_run_span_continues_the_trace_of_its_spawn(
    dsn: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    app = Durable(dsn)
    seen: dict[str, Any] = {}

    @app.task
    async def child(ctx: TaskContext, params: Any) -> None:
        return None

    @app.task
    async def traced(ctx: TaskContext, params: Any) -> str:
        seen["current"] = trace.get_current_span().get_span_context()
        await ctx.spawn("child", None)
        return "ok"

    caller_headers = {"tenant": "acme"}
    async with running_worker(app):
        with provider.get_tracer("test").start_as_current_span("request") as request:
            handle = await traced.spawn({"x": 1}, headers=caller_headers)
        record = await wait_finished(app.client, handle.task_id, timeout=10)
        spans = await finished_spans(
            exporter, "durable.spawn traced", "durable.run traced", "durable.run child"
        )

    assert caller_headers == {"tenant": "acme"}  # the caller's dict is not touched
    assert record.headers["tenant"] == "acme"
    traceparent = record.headers["traceparent"]
    trace_id = request.get_span_context().trace_id
    spawn, run = spans["durable.spawn traced"], spans["durable.run traced"]
    assert spawn.context is not None
    assert run.context is not None

    assert spawn.kind is SpanKind.PRODUCER
    assert parent_of(spawn) == request.get_span_context().span_id
    assert spawn.attributes is not None
    assert dict(spawn.attributes) == {
        "durable.queue": QUEUE,
        "durable.task_name": "traced",
        "durable.task_id": str(handle.task_id),
        "durable.created": True,
    }
    # the headers carry the spawn span's context: W3C traceparent 00-<trace id>-<span id>-<flags>
    assert ids_of(traceparent) == (trace_id, spawn.context.span_id)

    assert run.kind is SpanKind.CONSUMER
    assert run.context.trace_id == trace_id
    assert parent_of(run) == spawn.context.span_id
    assert run.attributes is not None
    assert dict(run.attributes) == {
        "durable.queue": QUEUE,
        "durable.task_name": "traced",
        "durable.task_id": str(handle.task_id),
        "durable.run_id": str(handle.run_id),
        "durable.attempt": 1,
        "durable.outcome": "completed",
    }
    assert run.status.status_code is StatusCode.UNSET
    # the run's span is current in the handler: the child it spawns continues the trace
    assert seen["current"] == run.context
    child_spawn, child_run = spans["durable.spawn child"], spans["durable.run child"]
    assert parent_of(child_spawn) == run.context.span_id
    assert child_run.context is not None
    assert child_run.context.trace_id == trace_id


async def test_a_failed_run_span_has_an_error_status_and_the_exception(
    dsn: str, exporter: InMemorySpanExporter
) -> None:
    app = Durable(dsn)

    @app.task(max_attempts=1)
    async def boom(ctx: TaskContext, params: Any) -> None:
        raise KeyError("missing")

    async with running_worker(app):
        handle = await boom.spawn()
        with pytest.raises(TaskFailed):
            await handle.result(timeout=10)
        spans = await finished_spans(exporter, "durable.run boom")

    run = spans["durable.run boom"]
    assert run.attributes is not None
    assert run.attributes["durable.outcome"] == "failed"
    assert run.attributes["durable.failure_reason"] == "errored"
    assert run.status.status_code is StatusCode.ERROR
    assert [event.name for event in run.events] == ["exception"]
    assert run.events[0].attributes is not None
    assert run.events[0].attributes["exception.type"] == "KeyError"


async def test_spawn_many_is_one_span_and_a_callers_traceparent_is_kept(
    client: Client, exporter: InMemorySpanExporter
) -> None:
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    infos = await client.spawn_many(
        QUEUE,
        [
            ("job", 1),
            ("job", 2, SpawnOptions(headers={"traceparent": own})),
            ("job", 3, SpawnOptions(priority=5)),
        ],
    )
    spans = await finished_spans(exporter, "durable.spawn job")
    await client.spawn_many(QUEUE, [("one", 1), ("two", 2)])
    mixed = await finished_spans(exporter, "durable.spawn_many")

    span = spans["durable.spawn job"]
    assert span.context is not None
    assert span.attributes is not None
    assert span.attributes["durable.count"] == 3
    assert span.attributes["durable.created_count"] == 3
    headers = [(await client.get_task(QUEUE, info.task_id)).headers for info in infos]
    ours = (span.context.trace_id, span.context.span_id)
    assert [ids_of(h["traceparent"]) for h in headers] == [ours, ids_of(own), ours]
    assert headers[1]["traceparent"] == own
    assert mixed["durable.spawn_many"].attributes is not None
    assert mixed["durable.spawn_many"].attributes["durable.task_names"] == ("one", "two")


async def test_without_a_tracer_provider_nothing_is_injected(client: Client) -> None:
    """The API alone (no SDK configured): no span, and the headers are left as given."""
    assert tracing.AVAILABLE
    info = await client.spawn(QUEUE, "job", 1, SpawnOptions(headers={"k": "v"}))
    assert (await client.get_task(QUEUE, info.task_id)).headers == {"k": "v"}
    info = await client.spawn(QUEUE, "job", 2)
    assert (await client.get_task(QUEUE, info.task_id)).headers == {}


async def test_a_valid_context_is_passed_on_without_a_tracer_provider(client: Client) -> None:
    """A span context from elsewhere (extracted from a request) goes on to the task, though
    durable itself makes no span without a tracer provider."""
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = propagate.extract({"traceparent": incoming})
    with trace.use_span(trace.get_current_span(context)):
        info = await client.spawn(QUEUE, "job", 1)
    assert (await client.get_task(QUEUE, info.task_id)).headers == {"traceparent": incoming}
