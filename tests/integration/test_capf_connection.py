"""ccmsec.aio.capf._Connection: the streamless I/O both CAPF sides run their sans-IO sessions
over (issue 15: no StreamReader/StreamWriter, no Task per timed read). Real loopback TCP; the TLS
paths are tests/integration/test_capf_server.py's."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ccmsec.aio.capf import _Connection


async def _accepted_pair(limit: int = 1024):
    loop = asyncio.get_running_loop()
    made: asyncio.Future = loop.create_future()

    def factory():
        conn = _Connection(loop, limit=limit)
        if not made.done():
            made.set_result(conn)
        return conn

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    conn = await asyncio.wait_for(made, 5)
    return server, client, conn


async def test_read_returns_what_arrived_in_order_and_eof_as_empty():
    loop = asyncio.get_running_loop()
    server, client, conn = await _accepted_pair()
    try:
        await loop.sock_sendall(client, b"AUTH")
        assert await conn.read(loop.time() + 5) == b"AUTH"
        await loop.sock_sendall(client, b"one")
        await loop.sock_sendall(client, b"two")
        got = b""
        while got != b"onetwo":
            got += await conn.read(loop.time() + 5)
        client.shutdown(socket.SHUT_WR)
        assert await conn.read(loop.time() + 5) == b""
    finally:
        client.close()
        await conn.close()
        server.close()


async def test_read_times_out_at_its_deadline_and_the_next_read_still_works():
    """Bad case: nothing arrives — TimeoutError at the deadline (the session's idle limit), and
    no stale waiter is left behind to swallow the next arrival."""
    loop = asyncio.get_running_loop()
    server, client, conn = await _accepted_pair()
    try:
        start = loop.time()
        with pytest.raises(TimeoutError):
            await conn.read(start + 0.1)
        assert 0.09 <= loop.time() - start < 2
        await loop.sock_sendall(client, b"late")
        assert await conn.read(loop.time() + 5) == b"late"
    finally:
        client.close()
        await conn.close()
        server.close()


async def test_a_flooding_peer_is_paused_not_buffered_without_bound():
    """Bad case: a phone keeps sending while its session waits on the store (nobody reads). The
    connection stops reading past its limit, as a StreamReader's limit did, and gives everything
    back in order once read."""
    loop = asyncio.get_running_loop()
    server, client, conn = await _accepted_pair(limit=4096)
    payload = bytes(range(256)) * 65536  # 16 MiB: more than loopback buffers hold
    sender = asyncio.create_task(loop.sock_sendall(client, payload))
    try:
        await asyncio.sleep(0.3)
        assert conn._paused_reading
        assert conn._buffered <= 4096 + 256 * 1024  # the limit, plus at most one read of the transport
        assert not sender.done()  # the kernel's buffers filled: the peer is held back
        got = bytearray()
        while len(got) < len(payload):
            got += await conn.read(loop.time() + 5)
        assert bytes(got) == payload
        await asyncio.wait_for(sender, 5)
    finally:
        sender.cancel()
        client.close()
        await conn.close()
        server.close()


async def test_a_reset_peer_is_an_error_or_eof_never_a_hang():
    loop = asyncio.get_running_loop()
    server, client, conn = await _accepted_pair()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # RST
        try:
            assert await conn.read(loop.time() + 5) == b""
        except ConnectionError:
            pass
        with pytest.raises(ConnectionError):
            for _ in range(3):
                await conn.write(b"x")
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
        server.close()


async def test_close_waits_for_the_end_at_most_its_limit():
    loop = asyncio.get_running_loop()
    server, client, conn = await _accepted_pair()
    try:
        start = loop.time()
        await conn.close(wait=1.0)
        assert conn.closed.done()
        assert loop.time() - start < 1.5
    finally:
        client.close()
        server.close()
