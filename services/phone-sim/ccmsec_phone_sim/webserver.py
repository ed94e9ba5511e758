"""A phone's built-in web server (DEV-4): a real listening socket while `webAccess` is on, no
socket at all while it is off — so "off" means connection refused, as on a hardened phone.

It answers any GET with a small status page (device name, model, image) and closes; requests are
bounded in size and time so a stuck client costs one short-lived task.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Callable

MAX_REQUEST = 4096
READ_TIMEOUT = 2.0


class PhoneWebServer:
    def __init__(self, host: str, page: Callable[[], str]):
        self.host = host
        self._page = page
        self._server: asyncio.AbstractServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> str:
        if self._server is None or not self._server.sockets:
            return ""
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, 0, limit=MAX_REQUEST)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                line = await reader.readline()
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    del header  # headers are read to the blank line and ignored
            ok = line.startswith(b"GET ")
            body = (self._page() if ok else "only GET is served\n").encode()
            status = b"200 OK" if ok else b"405 Method Not Allowed"
            writer.write(b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, ValueError, ConnectionError, asyncio.LimitOverrunError):
            pass  # a slow, oversized or vanished client just loses its connection
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
