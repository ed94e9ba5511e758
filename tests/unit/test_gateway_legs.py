"""Call control's driver of the SRTP gateway (`GatewayLegs`) against a stand-in for the gateway's
gRPC service: a channel closed while its CreateConnection is still under way must not leave the
connection behind on the gateway (its analogue line would stay busy for good)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ccmsec.aio.gateway_legs import GatewayLegs
from ccmsec.formats.sdp import audio_session
from ccmsec.media.keys import to_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.wire.sccp import EncryptionInfo
from ccmsec_proto import srtp_gateway_pb2 as pb


class FakeGateway:
    """The far end of the control link: answers CreateConnection when released, records deletes."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.requests: list = []

    async def CreateConnection(self, request, timeout=None):  # noqa: N802
        self.requests.append(request)
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


def _channel(party_id, reference, codec=4, rx_encryption=None):
    return SimpleNamespace(party_id=party_id, call_reference=reference, tx=None, codec=codec,
                           rx_encryption=rx_encryption or EncryptionInfo())


def _legs(gateway: FakeGateway) -> GatewayLegs:
    legs = GatewayLegs(lambda: None, gateway="gw1")
    legs._stub = lambda: gateway
    return legs


async def test_a_channel_closed_while_its_connection_is_being_created_is_deleted_on_the_gateway():
    gateway, phone = FakeGateway(), Phone()
    legs = _legs(gateway)
    channel = _channel(7, 0x1A)
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
    channel = _channel(8, 0x1B)
    legs.open(phone, channel, "5550102")
    await legs.drain(2.0)
    assert phone.opened == [8] and legs.connections[8][0] == "C1" and gateway.deleted == []
    legs.close(channel)
    await legs.drain(2.0)
    assert gateway.deleted == ["C1"] and legs.connections == {}
    assert not legs._opening and not legs._abandoned


async def test_call9_gw3_a_receive_only_channel_is_created_listening_in_its_own_law():
    """Music on hold towards the gateway is a channel that never transmits (no
    StartMediaTransmission, so no ModifyConnection): its CreateConnection alone must make the
    connection receive, in the G.711 law the channel was opened in (`a:PCMA` for A-law, SCCP 2) —
    before, it was created inactive with no codec and the held caller heard silence."""
    gateway, phone = FakeGateway(), Phone()
    legs = _legs(gateway)
    gateway.release.set()
    legs.open(phone, _channel(9, 0x1C, codec=2), "5550100")
    legs.open(phone, _channel(10, 0x1D, codec=4), "5550100")
    await legs.drain(2.0)
    a_law, u_law = gateway.requests
    assert (a_law.mode, a_law.local_connection_options) == (pb.RECVONLY, "a:PCMA")
    assert (u_law.mode, u_law.local_connection_options) == (pb.RECVONLY, "a:PCMU")


async def test_gw1_a_keyed_channel_is_created_inactive_until_its_key_arrives():
    """A channel with SRTP keys receives nothing before ModifyConnection gives the gateway the
    key it decrypts with (no plain RTP accepted on an SRTP leg meanwhile)."""
    gateway, phone = FakeGateway(), Phone()
    legs = _legs(gateway)
    gateway.release.set()
    legs.open(phone, _channel(11, 0x1E, rx_encryption=to_encryption_info(MasterKey.generate())),
              "5550102")
    await legs.drain(2.0)
    [request] = gateway.requests
    assert (request.mode, request.local_connection_options) == (pb.INACTIVE, "a:PCMU")
