"""The web dashboard: ``durable dashboard --port 8080``.

An overview of the queues (counts per state, throughput over the last minute) and of failed work
grouped by reason class, and a page per task with its runs, errors, checkpoints and progress, with
buttons to retry or cancel. The pages poll their JSON every second. The server is a small
HTTP/1.1 one on anyio (:mod:`durable.dashboard.http`); every database call goes through
:class:`durable.Client`.

    async with Client(dsn) as client:
        await serve(client, port=8080)           # until cancelled
"""

from durable.dashboard.server import Dashboard, serve

__all__ = ["Dashboard", "serve"]
