"""The web console: ``durable dashboard --port 8080``, or mounted in your own ASGI application
(``pip install 'durable[dashboard]'``: Starlette and uvicorn).

Pages: the overview (queues live, what ended in the last day, failed work by reason class,
queue controls), the task browser (filters, search, keyset pages, bulk actions with a dry-run
preview), the flow over time (charts), the workers, and a page per task (its runs, errors,
checkpoints and step timeline). Pages update from server-sent events fed by LISTEN. Every
database call goes through :class:`durable.Client`.

    async with Client(dsn) as client:
        await serve(client, port=8080)           # until cancelled

    # or inside your FastAPI/Starlette application, behind your own login:
    api.mount("/durable", app(client, authorize=lambda request, access: is_admin(request)))
"""

from durable.dashboard.server import serve
from durable.dashboard.web import Access, Authorize, app

__all__ = ["Access", "Authorize", "app", "serve"]
