"""Phones whose media ports bind every address (phone-sim in a container: CCMSEC_HOST=0.0.0.0)
tell call control the address their signalling goes out from, never 0.0.0.0 — a peer told 0.0.0.0
sends to itself (in compose the SRTP gateway's echo never came back to phone-sim's phone)."""

from __future__ import annotations

import pytest

from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.wire import sccp as s
from tests.integration.test_calls_callcontrol import A, C, HOST, cluster, connected  # noqa: F401

pytestmark = pytest.mark.timeout(90)


async def test_media_bound_to_every_address_is_announced_with_the_signalling_address(cluster):
    # C (non-secure, 2003) with its media ports on 0.0.0.0; A (encrypted) calls it
    conn = await connect_phone(HOST, cluster.cc.plain.port, s.Register(C, HOST, device_type=7))
    conn.session.capabilities = s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=False)
    c = CallingPhone(conn, bind_host="0.0.0.0")
    await c.wait_ready()
    a = await cluster.phone(A)
    try:
        a.act(a.display.dial, "2003")
        await c.wait_for(lambda d: any(call.ringing for call in d.calls.values()), what="ringing")
        c.act(c.display.answer)
        await connected(a)
        await connected(c)
        # the ports really are on every address; what C announced, and where A was told to send,
        # is the address of C's connection to call control
        assert {p.local[0] for p in c.ports.ports.values()} == {"0.0.0.0"}
        assert {ch.rx[0] for ch in c.display.channels.values()} == {HOST}
        assert {ch.tx[0] for ch in a.display.channels.values()} == {HOST}
    finally:
        await c.close()
