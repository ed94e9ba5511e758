"""Call control's driver of the SRTP gateway: the gateway takes part in calls as a device of the
call agent (its phone-side machine answers, its channels are planned like a phone's), and every
media channel of that device becomes a connection on the srtp-gateway, over gRPC on mutual TLS.

OpenReceiveChannel → CreateConnection in the channel's codec (the local connection option `a:PCMU`
or `a:PCMA`, RFC 3435, `ccmsec.wire.mgcp`: the G.711 law call control planned for this leg, one
the gateway offered — CALL-9) and the gateway's port goes back in OpenReceiveChannelAck. A channel
without keys is created receive-only: it hears at once what is sent to it, as a phone does after
OpenReceiveChannel, and a channel that never transmits — the held telephone-network party's music
on hold (RTP, CALL-3/GW-3) — stays so; a keyed channel is created inactive until its
StartMediaTransmission brings the key it decrypts with. StartMediaTransmission → ModifyConnection with the
remote description (the phone's address, the RTP payload type of the call's codec — PCMU for
G.711 µ-law, PCMA for A-law, the two the gateway offers — and, with keys, one a=crypto carrying
the key the phone encrypts with, i.e. the channel's receive block) and `send_key` = the transmit block (GW-1); a
channel without keys is an RTP connection (GW-2); CloseReceiveChannel → DeleteConnection (a
channel closed while its CreateConnection is under way: deleted as soon as the gateway answers).
The dialled number picks the telephone-network party behind the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc

from ccmsec.aio.media import SCCP_G711
from ccmsec.formats.sdp import SdpError, parse_sdp
from ccmsec.media.gatewayleg import GatewayLegPlan
from ccmsec.media.keys import from_encryption_info, to_proto
from ccmsec.wire.mgcp import for_payload_type
from ccmsec_proto import srtp_gateway_pb2 as pb
from ccmsec_proto import srtp_gateway_pb2_grpc

log = logging.getLogger("ccmsec.gateway-legs")

CONNECT_TIMEOUT = 5.0


class GatewayLegs:
    def __init__(self, channel: Callable[[], grpc.aio.Channel], *, gateway: str = "gw1",
                 pump: Callable[[], None] = lambda: None):
        self._channel = channel
        self.gateway = gateway
        self.pump = pump
        self.connections: dict[int, tuple[str, str, str]] = {}   # party id -> (connection, call, endpoint)
        self.plans: dict[int, GatewayLegPlan] = {}
        self.failures = 0
        self.last_error = ""
        self._tasks: set[asyncio.Task] = set()
        # channels whose CreateConnection is under way, and those of them closed meanwhile: the
        # connection such a create makes is deleted at once (else its line stays busy for good)
        self._opening: set[int] = set()
        self._abandoned: set[int] = set()

    def _stub(self):
        return srtp_gateway_pb2_grpc.SrtpGatewayStub(self._channel())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        self.last_error = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        log.warning("gateway %s failed", what, extra={"error": self.last_error})

    # the gateway device's channel events --------------------------------------------------------
    def open(self, phone, channel, number: str) -> None:
        self._opening.add(channel.party_id)
        self._abandoned.discard(channel.party_id)
        self._spawn(self._create(phone, channel, number))

    async def _create(self, phone, channel, number: str) -> None:
        try:
            await self._create_connection(phone, channel, number)
        finally:
            self._opening.discard(channel.party_id)
            self._abandoned.discard(channel.party_id)

    async def _create_connection(self, phone, channel, number: str) -> None:
        call_id = f"{channel.call_reference:X}"
        # call control plans only G.711 towards the gateway (what it offered, CALL-9)
        pt = SCCP_G711.get(channel.codec)
        options = for_payload_type(pt).to_text() if pt is not None else ""
        keyed = from_encryption_info(channel.rx_encryption) is not None
        try:
            reply = await self._stub().CreateConnection(pb.CreateConnectionRequest(
                endpoint=f"aaln/S1/SU0/$@{self.gateway}", call_id=call_id, dialled_number=number,
                mode=pb.INACTIVE if keyed else pb.RECVONLY, local_connection_options=options),
                timeout=CONNECT_TIMEOUT)
            sd = parse_sdp(reply.local_sdp)
            audio = sd.audio()
            host = sd.address_of(audio)
        except (grpc.aio.AioRpcError, SdpError, asyncio.TimeoutError) as exc:
            self._failed("create connection", exc)
            phone.channel_failed(channel.party_id)
            self.pump()
            return
        if channel.party_id in self._abandoned:   # the channel closed while the gateway made it
            await self._delete((reply.connection_id, call_id, reply.endpoint))
            return
        self.connections[channel.party_id] = (reply.connection_id, call_id, reply.endpoint)
        phone.channel_opened(channel.party_id, host, audio.port)
        self.pump()

    def start(self, channel) -> None:
        self._spawn(self._modify(channel))

    async def _modify(self, channel) -> None:
        for _ in range(250):   # the CreateConnection may still be under way
            if channel.party_id in self.connections or channel.tx is None:
                break
            await asyncio.sleep(0.02)
        conn = self.connections.get(channel.party_id)
        if conn is None or channel.tx is None:
            return
        plan = GatewayLegPlan.for_channel(channel.rx_encryption, channel.tx_encryption)
        srtp, gateway_send = plan.srtp, plan.phone_receive
        self.plans[channel.party_id] = plan
        try:
            await self._stub().ModifyConnection(pb.ModifyConnectionRequest(
                endpoint=conn[2], connection_id=conn[0], call_id=conn[1], mode=pb.SENDRECV,
                # the call's codec, as the phone was told it: the first description sets the
                # gateway's (µ-law was always sent, so an A-law call got µ-law back)
                remote_sdp=plan.remote_sdp(channel.tx, SCCP_G711.get(channel.codec, 0)),
                change_security=True, srtp=srtp,
                send_key=to_proto(gateway_send) if srtp else None), timeout=CONNECT_TIMEOUT)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            self._failed("modify connection", exc)

    def stop(self, channel) -> None:
        conn = self.connections.get(channel.party_id)
        if conn is not None:
            self._spawn(self._inactive(conn))

    async def _inactive(self, conn) -> None:
        try:
            await self._stub().ModifyConnection(pb.ModifyConnectionRequest(
                endpoint=conn[2], connection_id=conn[0], call_id=conn[1], mode=pb.INACTIVE),
                timeout=CONNECT_TIMEOUT)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            self._failed("modify connection", exc)

    def close(self, channel) -> None:
        conn = self.connections.pop(channel.party_id, None)
        self.plans.pop(channel.party_id, None)
        if conn is not None:
            self._spawn(self._delete(conn))
        elif channel.party_id in self._opening:
            self._abandoned.add(channel.party_id)

    async def _delete(self, conn) -> None:
        try:
            await self._stub().DeleteConnection(pb.DeleteConnectionRequest(
                endpoint=conn[2], call_id=conn[1], connection_id=conn[0]), timeout=CONNECT_TIMEOUT)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            self._failed("delete connection", exc)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
