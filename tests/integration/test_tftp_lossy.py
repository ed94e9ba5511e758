"""TFTP through a real UDP proxy on loopback that drops or duplicates packets in both directions.

The proxy keeps TFTP's TID semantics: the client talks to the proxy's front socket, the
proxy relays from one upstream socket to the server, and each server TID is mirrored by its
own proxy socket so the client still sees a fresh TID per transfer.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from ccmsec.aio.tftp import TftpServer, tftp_get

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(40_000)


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.on_datagram(self, data, addr)


class LossyProxy:
    """Relays one client's TFTP session; `fault(direction, n)` returns how many copies to send."""

    def __init__(self, server: tuple[str, int], fault) -> None:
        self.server = server
        self.fault = fault
        self.counts = {"up": 0, "down": 0}
        self.dropped = {"up": 0, "down": 0}
        self.client: tuple | None = None
        self.front: _Side | None = None
        self.upstream: _Side | None = None
        self.mirrors: dict[tuple, _Side] = {}  # server TID -> proxy socket facing the client
        self.routes: dict[_Side, tuple] = {}  # proxy socket facing the client -> server address
        self._pending: list[asyncio.Task] = []

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        _, self.front = await loop.create_datagram_endpoint(lambda: _Side(self._from_client), local_addr=("127.0.0.1", 0))
        _, self.upstream = await loop.create_datagram_endpoint(lambda: _Side(self._from_server), local_addr=("127.0.0.1", 0))
        self.routes[self.front] = self.server
        return self.front.transport.get_extra_info("sockname")

    def close(self) -> None:
        for task in self._pending:
            task.cancel()
        for side in [self.front, self.upstream, *self.mirrors.values()]:
            if side and side.transport:
                side.transport.close()

    def _copies(self, direction: str) -> int:
        self.counts[direction] += 1
        copies = self.fault(direction, self.counts[direction])
        if copies == 0:
            self.dropped[direction] += 1
        return copies

    def _from_client(self, side: _Side, data: bytes, addr) -> None:
        self.client = addr
        for _ in range(self._copies("up")):
            self.upstream.transport.sendto(data, self.routes[side])

    def _from_server(self, side: _Side, data: bytes, addr) -> None:
        mirror = self.mirrors.get(addr)
        if mirror is None:
            self._pending.append(asyncio.ensure_future(self._new_mirror(addr, data)))
            return
        self._down(mirror, data)

    async def _new_mirror(self, tid, first: bytes) -> None:
        if tid not in self.mirrors:
            loop = asyncio.get_running_loop()
            _, mirror = await loop.create_datagram_endpoint(lambda: _Side(self._from_client), local_addr=("127.0.0.1", 0))
            self.mirrors[tid] = mirror
            self.routes[mirror] = tid
        self._down(self.mirrors[tid], first)

    def _down(self, mirror: _Side, data: bytes) -> None:
        for _ in range(self._copies("down")):
            mirror.transport.sendto(data, self.client)


def drop_every(up: int, down: int):
    return lambda direction, n: 0 if n % (up if direction == "up" else down) == 0 else 1


def duplicate_every(up: int, down: int):
    return lambda direction, n: 2 if n % (up if direction == "up" else down) == 0 else 1


def drop_and_duplicate(direction, n):
    if n % 7 == 0:
        return 0
    return 2 if n % 3 == 0 else 1


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        (drop_every(5, 7), {}),
        (drop_every(5, 7), {"blksize": 1024, "tsize": True}),
        (drop_every(3, 4), {"blksize": 512, "windowsize": 8}),
        (duplicate_every(2, 3), {}),
        (duplicate_every(1, 1), {"blksize": 256, "windowsize": 4}),  # every packet twice
        (drop_and_duplicate, {"blksize": 700, "windowsize": 6, "tsize": True}),
    ],
    ids=["drop-lockstep", "drop-oack", "drop-windowed", "dup-lockstep", "dup-all-windowed", "drop+dup-windowed"],
)
async def test_lossy_path_gives_byte_identical_file(fault, options):
    async def resolve(filename, client):
        return DATA if filename == "f" else None

    async with TftpServer("127.0.0.1", 0, resolve, timeout=0.05, retries=20) as server:
        proxy = LossyProxy(server.address, fault)
        front = await proxy.start()
        try:
            got = await tftp_get(front[0], front[1], "f", timeout=0.05, retries=20, **options)
        finally:
            proxy.close()
        assert got == DATA
        assert sum(proxy.counts.values()) > 10  # the proxy really carried the transfer
        faults = [fault(d, n) for d in ("up", "down") for n in range(1, proxy.counts[d] + 1)]
        assert any(c != 1 for c in faults)  # and really damaged it


async def test_duplicated_acks_do_not_multiply_traffic():
    """Sorcerer's Apprentice check: with every ACK duplicated, DATA sent stays ~ blocks + retransmits."""

    async def resolve(filename, client):
        return DATA

    async with TftpServer("127.0.0.1", 0, resolve, timeout=1.0, retries=3) as server:
        proxy = LossyProxy(server.address, lambda d, n: 2 if d == "up" else 1)
        front = await proxy.start()
        try:
            assert await tftp_get(front[0], front[1], "f", timeout=1.0) == DATA
        finally:
            proxy.close()
        blocks = len(DATA) // 512 + 1
        assert proxy.counts["down"] <= blocks + 2  # no doubling of DATA on duplicate ACKs
