"""The phone side of an SCCP connection (`ccmsec.aio.sccp.SccpPhoneConnection`) over real sockets."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from ccmsec.aio.sccp import ConnectionDropped, SccpPhoneConnection
from ccmsec.wire.sccp import Register, SccpPhoneSession

pytestmark = pytest.mark.timeout(30)


async def test_a_socket_error_that_is_no_connection_error_is_a_dropped_connection_not_a_raise():
    """EHOSTUNREACH on a phone's connection (the transport hands the reader an OSError, not a
    ConnectionError) left the exception in the connection's task: the phone saw no reason, and
    close() raised it (a traceback where the connection was closed)."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    conn = SccpPhoneConnection(SccpPhoneSession(Register("SEP00AA00BB00EE", ip_address="127.0.0.1",
                                                         device_type=7)), reader, writer)
    try:
        await asyncio.sleep(0.05)  # the connection reads
        reader.set_exception(OSError(errno.EHOSTUNREACH, "No route to host"))
        await conn.wait_closed(5)
        dropped = [e for e in [conn.events.get_nowait() for _ in range(conn.events.qsize())]
                   if isinstance(e, ConnectionDropped)]
        assert dropped and "No route to host" in dropped[-1].reason
        await conn.close()  # no exception: the connection is simply gone
    finally:
        theirs.close()
