"""Observability: durable's logs in your logging, its spans in your tracer provider, a worker's
Prometheus metrics and health, and the web console mounted in your own application.

    python examples/observability.py         # the embedded PostgreSQL under ./.durable
    DURABLE_DSN=postgresql://... python examples/observability.py

Needs the extras ``durable[metrics,otel,dashboard]`` and opentelemetry-sdk (the dev install has
them). Everything listens on 127.0.0.1, on ports the system picks.
"""

from __future__ import annotations

import logging
import socket
import sys
import urllib.request
from typing import Any

import anyio
import uvicorn
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

import durable.dashboard
import durable.tracing
from durable import Durable, TaskContext

app = Durable()


@app.task(name="send_welcome", queue="emails")
async def send_welcome(ctx: TaskContext, params: dict[str, Any]) -> bool:
    return True


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


# --8<-- [start:console]
def authorize(request: Request, access: str) -> bool:
    """May this request read the console ("read") or act on tasks ("act")? False: 403."""
    user = request.headers.get("x-forwarded-user")  # set by your login proxy, say
    return user is not None and (access == "read" or user == "admin")


def make_web_app(client: durable.Client) -> Starlette:
    console = durable.dashboard.app(client, authorize=authorize)  # links follow the mount
    return Starlette(routes=[Mount("/ops/durable", app=console)])  # or FastAPI's app.mount


# --8<-- [end:console]


async def main() -> None:
    # --8<-- [start:tracing]
    provider = TracerProvider()  # yours, with your exporter (OTLP, Jaeger, ...)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    durable.tracing.set_tracer_provider(provider)  # default: the global provider
    # --8<-- [end:tracing]
    async with app, anyio.create_task_group() as tg:
        # --8<-- [start:metrics]
        worker = await tg.start(
            lambda task_status: app.run_worker(
                metrics_port=0,  # 0: any free port; 9100, say, in production
                metrics_host="127.0.0.1",  # the default: serving the network is your choice
                handle_signals=False,
                task_status=task_status,
            )
        )
        # --8<-- [end:metrics]
        handle = await send_welcome.spawn({"user_id": 7})
        await handle.result(timeout=30)

        assert worker.metrics is not None
        base = f"http://127.0.0.1:{worker.metrics.port}"
        status, text = await anyio.to_thread.run_sync(get, f"{base}/metrics")
        started = [
            line for line in text.splitlines() if line.startswith("durable_runs_started_total")
        ]
        print("metrics:", status, started)
        print("readyz:", (await anyio.to_thread.run_sync(get, f"{base}/readyz"))[0])
        print("spans:", sorted({span.name for span in exporter.get_finished_spans()}))

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(make_web_app(app.client), log_level="warning"))
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        console = f"http://127.0.0.1:{sock.getsockname()[1]}/ops/durable/api/overview"
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 — uvicorn says so by a flag only
                await anyio.sleep(0.02)
        viewer = {"X-Forwarded-User": "viewer"}
        print("console as a viewer:", (await anyio.to_thread.run_sync(get, console, viewer))[0])
        print("console anonymous:", (await anyio.to_thread.run_sync(get, console))[0])
        server.should_exit = True
        worker.drain()


if __name__ == "__main__":
    # --8<-- [start:logging]
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    logging.getLogger("durable").setLevel(logging.INFO)  # durable's events, from INFO up
    # --8<-- [end:logging]
    anyio.run(main)
