"""A fault-injecting TCP proxy on loopback, for failover tests: phones connect to the proxy, the
proxy forwards to a real server, and the test cuts the path at will.

* `blackhole()`: connections stay open but nothing is forwarded either way — a cut network or a
  hung peer as the phone sees it (noticed only by missed keepalives);
* `reset()`: every connection is aborted (RST) — a crashed peer, noticed at once;
* `restore()`: forwarding again; new connections are served.
Bounded: at most `max_connections` at once; it stops with `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", max_connections: int = 4096):
        self.upstream = upstream
        self.host = host
        self.max_connections = max_connections
        self.server: asyncio.base_events.Server | None = None
        self.cut = False
        self.accepted = 0   # connections accepted so far (a test counts what phones open)
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def start(self, port: int = 0) -> "FaultProxy":
        self.server = await asyncio.start_server(self._accept, self.host, port)
        return self

    async def _accept(self, reader, writer) -> None:
        self.accepted += 1
        if len(self._pairs) >= self.max_connections:
            writer.close()
            return
        try:
            # From the client's own address (any 127/8 address binds on loopback): the server's
            # per-source limits see each phone, not one proxy.
            peer = writer.get_extra_info("peername")
            local = (peer[0], 0) if peer and str(peer[0]).startswith("127.") else None
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, local_addr=local), 5)
        except (OSError, asyncio.TimeoutError):
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        loop = asyncio.get_running_loop()
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = loop.create_task(self._pipe(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src, dst, pair) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self.cut:
                    continue   # swallowed: the path is cut
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not self.cut:
                with contextlib.suppress(Exception):
                    dst.close()
            self._pairs.discard(pair)

    def blackhole(self) -> None:
        self.cut = True

    def restore(self) -> None:
        self.cut = False

    def reset(self) -> None:
        for a, b in list(self._pairs):
            for w in (a, b):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._pairs.clear()

    async def close(self) -> None:
        self.reset()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()
