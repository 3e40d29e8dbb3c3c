"""A loopback TCP proxy a test controls, to cut the network between a worker and PostgreSQL.

``async with tcp_proxy("127.0.0.1", 5432) as proxy:`` listens on ``127.0.0.1:<proxy.port>`` and
forwards every connection to the target (a host, or a unix socket directory such as the embedded
server's). ``proxy.cut()`` is a network partition as a client sees
it: bytes in flight stop moving in both directions (no error, no FIN: calls just hang) and new
connections are refused. ``await proxy.heal()`` drops the stalled connections (as a NAT or
firewall that forgot them would) and accepts new ones again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncIterator

_CHUNK = 65536


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host and port replaced by the proxy's."""
        parts = urllib.parse.urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        # a host or port in the query (the embedded server's socket) would bypass the proxy
        query = [
            (key, value)
            for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if key not in ("host", "port")
        ]
        return urllib.parse.urlunsplit(
            parts._replace(netloc=netloc, query=urllib.parse.urlencode(query))
        )

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """Stall every connection and refuse new ones."""
        self._flowing.clear()
        if self._server is not None:
            self._server.close()  # stop listening; established connections stay (stalled)
            self._server = None

    async def heal(self) -> None:
        """Drop the stalled connections; forward new ones again."""
        self._drop_all()
        self._flowing.set()
        await self.start()

    async def close(self) -> None:
        self.cut()
        self._drop_all()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            if self.target_host.startswith("/"):  # a unix socket directory (the embedded server)
                socket_path = f"{self.target_host}/.s.PGSQL.{self.target_port}"
                server_r, server_w = await asyncio.open_unix_connection(socket_path)
            else:
                server_r, server_w = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        for reader, writer, other in (
            (client_r, server_w, client_w),
            (server_r, client_w, server_w),
        ):
            task = asyncio.create_task(self._pump(reader, writer, other))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                if writer not in self._writers:
                    break  # dropped while it stalled: these bytes never arrive
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, other):
                self._writers.discard(w)
                w.transport.abort()


@contextlib.asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
