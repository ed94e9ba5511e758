"""CALL-9 at callmanager's media resources on real UDP ports (`ResourcePorts`): music on hold and
the conference bridge send each stream in the G.711 law call control asked for — the law that
leg's phone offered — and nothing at all when asked for a codec they cannot encode (before, music
on hold asked for G.729 went out as µ-law to a phone that may never have offered it)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ccmsec.policy.calls import EndpointKind
from ccmsec_callmanager.calls import ResourcePorts

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"
ULAW, ALAW, G729 = 4, 2, 18
PCMU, PCMA = 0, 8
MOH, BRIDGE = EndpointKind.MUSIC_ON_HOLD, EndpointKind.CONFERENCE


class Listener(asyncio.DatagramProtocol):
    """A phone's receive port: the RTP payload types of what reaches it."""

    def __init__(self):
        self.payload_types: list[int] = []
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if len(data) >= 12:
            self.payload_types.append(data[1] & 0x7F)

    @property
    def address(self):
        return self.transport.get_extra_info("sockname")[:2]


async def listener() -> Listener:
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        Listener, local_addr=(HOST, 0), family=socket.AF_INET)
    return proto


async def until(cond, what: str, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_call9_music_on_hold_goes_out_in_the_law_asked_and_never_for_a_non_g711_codec():
    res = ResourcePorts(HOST)
    phones = {codec: await listener() for codec in (ALAW, ULAW, G729)}
    try:
        for codec, phone in phones.items():
            key = (MOH, 1, 100 + codec)
            res.open(key)
            res.start(key, phone.address, codec)
        await until(lambda: len(phones[ALAW].payload_types) >= 5 and
                    len(phones[ULAW].payload_types) >= 5, "music on hold on both G.711 streams")
        assert set(phones[ALAW].payload_types) == {PCMA}
        assert set(phones[ULAW].payload_types) == {PCMU}
        await asyncio.sleep(0.2)
        # G.729 asked: the MoH source cannot encode it, so it sends nothing (not µ-law)
        assert phones[G729].payload_types == []
        assert res.ports.get((MOH, 1, 100 + G729)).remote is None
    finally:
        res.ports.close_all()
        for phone in phones.values():
            phone.transport.close()


async def test_call9_the_bridge_sends_each_leg_its_own_law_and_nothing_for_a_non_g711_codec():
    res = ResourcePorts(HOST)
    legs = {ULAW: await listener(), ALAW: await listener(), G729: await listener()}
    try:
        for codec, phone in legs.items():
            key = (BRIDGE, 7, 200 + codec)
            res.open(key)
            res.start(key, phone.address, codec)
        await until(lambda: len(legs[ALAW].payload_types) >= 5 and
                    len(legs[ULAW].payload_types) >= 5, "the mix on both G.711 legs")
        assert set(legs[ULAW].payload_types) == {PCMU}
        assert set(legs[ALAW].payload_types) == {PCMA}
        await asyncio.sleep(0.2)
        assert legs[G729].payload_types == []
    finally:
        for codec in legs:
            res.close((BRIDGE, 7, 200 + codec))
        res.ports.close_all()
        for phone in legs.values():
            phone.transport.close()
