"""Call control's driver of the SRTP gateway (`GatewayLegs`) against a stand-in for the gateway's
gRPC service: a channel closed while its CreateConnection is still under way must not leave the
connection behind on the gateway (its analogue line would stay busy for good)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ccmsec.aio.gateway_legs import GatewayLegs
from ccmsec.formats.sdp import audio_session
from ccmsec_proto import srtp_gateway_pb2 as pb


class FakeGateway:
    """The far end of the control link: answers CreateConnection when released, records deletes."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.created: list[str] = []
        self.deleted: list[str] = []

    async def CreateConnection(self, request, timeout=None):  # noqa: N802
        await self.release.wait()
        conn_id = f"C{len(self.created) + 1}"
        self.created.append(conn_id)
        return pb.ConnectionReply(connection_id=conn_id, endpoint="aaln/S1/SU0/1@gw1",
                                  local_sdp=audio_session("127.0.0.1", 40000).to_text())

    async def DeleteConnection(self, request, timeout=None):  # noqa: N802
        self.deleted.append(request.connection_id)
        return pb.DeleteConnectionReply()


class Phone:
    def __init__(self) -> None:
        self.opened: list[int] = []
        self.failed: list[int] = []

    def channel_opened(self, party_id, host, port) -> None:
        self.opened.append(party_id)

    def channel_failed(self, party_id) -> None:
        self.failed.append(party_id)


def _legs(gateway: FakeGateway) -> GatewayLegs:
    legs = GatewayLegs(lambda: None, gateway="gw1")
    legs._stub = lambda: gateway
    return legs


async def test_a_channel_closed_while_its_connection_is_being_created_is_deleted_on_the_gateway():
    gateway, phone = FakeGateway(), Phone()
    legs = _legs(gateway)
    channel = SimpleNamespace(party_id=7, call_reference=0x1A, tx=None)
    legs.open(phone, channel, "5550102")
    await asyncio.sleep(0.01)      # CreateConnection sent, no answer yet
    legs.close(channel)            # the caller hung up meanwhile
    gateway.release.set()
    await legs.drain(2.0)
    await legs.drain(2.0)          # the delete it spawned, if any
    assert gateway.created == ["C1"]
    assert gateway.deleted == ["C1"], "the connection made after the close stays on the gateway"
    assert legs.connections == {} and phone.opened == []
    assert not legs._opening and not legs._abandoned


async def test_an_open_channel_keeps_its_connection_until_closed():
    gateway, phone = FakeGateway(), Phone()
    legs = _legs(gateway)
    gateway.release.set()
    channel = SimpleNamespace(party_id=8, call_reference=0x1B, tx=None)
    legs.open(phone, channel, "5550102")
    await legs.drain(2.0)
    assert phone.opened == [8] and legs.connections[8][0] == "C1" and gateway.deleted == []
    legs.close(channel)
    await legs.drain(2.0)
    assert gateway.deleted == ["C1"] and legs.connections == {}
    assert not legs._opening and not legs._abandoned
