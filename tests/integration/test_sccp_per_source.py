"""One source cannot starve the others on call control's SCCP ports: an address may hold only
`max_pending_per_source` connections that have not registered (counted from accept, before any
TLS handshake work), so idle or half-open connections from one address are cut at once while a
phone from another address registers; registered connections do not count, so a whole fleet
behind one address (a NAT, the phone simulator) registers freely."""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.aio.sccp import STREAM_LIMIT, SccpPhoneConnection, SccpServer
from ccmsec.pki import ca, tls
from ccmsec.wire import sccp as s

pytestmark = pytest.mark.timeout(60)

ATTACKER, PHONE, FLEET = "127.0.0.2", "127.0.0.3", "127.0.0.4"
LIMIT = 8


@pytest.fixture(scope="module")
def pki():
    capf = ca.create_ca(ca.name("CAPF"))
    key = ca.new_key()
    ccm = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    lsc = ca.issue_with_new_key(capf, ca.name("SEP0000000000AA"), server=False)
    return {"capf": capf, "ccm": ccm, "lsc": lsc}


def _accept(request):
    return s.RegistrationDecision.accept()


async def _idle_connections(port: int, count: int) -> list[tuple]:
    return [await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
            for _ in range(count)]


async def _still_open(conns, wait: float = 1.0) -> int:
    """How many of `conns` the server has not closed (a closed one reads EOF at once). Each gets
    `wait` s, all at once: one after the other the open ones' waits added up (8 x 0.5 s per call)."""
    async def still_open(reader) -> bool:
        try:
            data = await asyncio.wait_for(reader.read(1), wait)
        except asyncio.TimeoutError:
            return True
        except ConnectionError:
            return False
        assert data == b""
        return False

    return sum(await asyncio.gather(*(still_open(reader) for reader, _ in conns)))


async def _register(port: int, name: str, source: str, ctx=None) -> SccpPhoneConnection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, limit=STREAM_LIMIT,
                                                   server_hostname="" if ctx else None,
                                                   local_addr=(source, 0))
    conn = SccpPhoneConnection(s.SccpPhoneSession(s.Register(name, source)), reader, writer)
    await conn.wait_registered(10)
    return conn


async def test_plain_sccp_one_address_holds_at_most_its_share_of_unregistered_connections():
    server = SccpServer(_accept, port=0, max_pending_per_source=LIMIT, register_timeout=20)
    async with server:
        flood = await _idle_connections(server.port, LIMIT * 4)
        assert await _still_open(flood) == LIMIT
        assert server.refused_per_source >= LIMIT * 3
        phone = await _register(server.port, "SEP0000000000AA", PHONE)  # another address: served
        assert "SEP0000000000AA" in server.registered
        # Registered connections free their slot: a fleet behind one address registers freely.
        fleet = [await _register(server.port, f"SEP0000000001{i:02X}", FLEET) for i in range(LIMIT * 2)]
        assert len(server.registered) == 1 + LIMIT * 2
        for conn in [phone, *fleet]:
            await conn.close()
        for _, writer in flood:
            writer.close()
        # The attacker's slots come back once its connections are gone.
        await asyncio.sleep(0.2)
        assert server._pending.get(ATTACKER) is None


async def test_tls_sccp_counts_the_source_before_the_handshake(pki):
    """Half-open TLS (TCP connected, no ClientHello) from one address cannot fill 2443."""
    ctx = tls.sccp_server_context(pki["ccm"], [pki["capf"].cert])
    server = SccpServer(_accept, port=0, ssl_context=ctx, max_pending_per_source=LIMIT,
                        handshake_timeout=20)
    async with server:
        flood = await _idle_connections(server.port, LIMIT * 4)
        assert await _still_open(flood) == LIMIT
        phone_ctx = tls.sccp_phone_context("encrypted", [pki["ccm"].cert], lsc=pki["lsc"])
        phone = await _register(server.port, "SEP0000000000AA", PHONE, phone_ctx)
        assert "SEP0000000000AA" in server.registered
        assert phone._writer.get_extra_info("ssl_object").cipher() is not None
        await phone.close()
        for _, writer in flood:
            writer.close()
