"""A TCP listener with its own accept loop that judges each connection by its source before
asyncio reads a byte or TLS starts: a refused connection is reset at once and costs no handshake
(CAPF 3804, the CTL Provider's 2444).

    listener = AdmittingListener("capf", admit, serve, on_refused=log_refusal)
    await listener.start(host, port)

`admit(source)` answers None to take the connection — and then reserves its slot (counts it) at
once, so a burst of accepts cannot pass a limit before the first connection's task runs — or the
reason it is refused. `serve(conn, source)` runs as its own task, starts TLS itself and must
release the slot when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Awaitable, Callable

log = logging.getLogger("ccmsec.listener")

ACCEPT_BACKOFF = 0.1  # seconds after a failed accept (e.g. EMFILE): back off rather than spin


class AdmittingListener:
    def __init__(self, name: str, admit: Callable[[str], str | None],
                 serve: Callable[[socket.socket, str], Awaitable[None]], *,
                 on_refused: Callable[[str, str], None] | None = None):
        self.name = name
        self._admit = admit
        self._serve = serve
        self._on_refused = on_refused
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int | None:
        return self._sock.getsockname()[1] if self._sock is not None else None

    async def start(self, host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:  # several processes on one port (CAPF's acceptors)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._acceptor = asyncio.get_running_loop().create_task(
            self._accept_loop(), name=f"{self.name} accept {host}:{self.port}")

    async def close(self) -> None:
        """Stop accepting, close the socket, cancel every connection's task and wait for them."""
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:
                log.error("%s: accept failed: %s", self.name, exc)
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            source = str(peer[0]) if peer else "?"
            refusal = self._admit(source)
            if refusal is not None:
                if self._on_refused is not None:
                    self._on_refused(source, refusal)
                with contextlib.suppress(OSError):  # reset at once: no handshake, no lingering
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            task = loop.create_task(self._serve(conn, source))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
