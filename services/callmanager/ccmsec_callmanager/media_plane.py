"""The callmanager service's media-plane wiring (mixed into CallManagerService in main.py).

* Keys (ENC-3/4/5): the call agent's key source is a `CallKeySource` fed by a `KeyPool` of fresh
  pairs from the keymanager service (gRPC, as call control). A device is eligible when it is
  registered encrypted on the TLS port with a cipher that encrypts and announced SRTP; the
  gateway when encryption is configured on it, the cluster is in mixed mode and the gateway can
  do SRTP (GW-2, GW-4); a gateway that reports no SRTP makes its calls non-secure (CALL-3). Pairs
  of ended calls are forgotten within a second.
* The SRTP gateway (GW-1…4): a device of the call agent (`GW1`, route pattern 555XXXX, answers
  at once) whose channels `GatewayLegs` turns into connections on the srtp-gateway service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
from pydantic import Field

from ccmsec.aio.gateway_legs import GatewayLegs
from ccmsec.aio.keypool import KeyPool
from ccmsec.calls.config import DeviceProfile, LineConfig
from ccmsec.domain import ClusterMode, DeviceSecurityMode
from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys
from ccmsec.media.keys import from_proto
from ccmsec.policy.calls import EndpointKind
from ccmsec.runtime.settings import SettingsError
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_phone import CloseChannel, OpenChannel, StartTransmit, StopTransmit
from ccmsec_proto import keymanager_pb2, keymanager_pb2_grpc, srtp_gateway_pb2, srtp_gateway_pb2_grpc

from .calls import VirtualDevice

log = logging.getLogger("ccmsec.callmanager.media")

GATEWAY_DEVICE = "GW1"
GATEWAY_PATTERN = "555XXXX"
# The srtp-gateway's telephone network speaks G.711 µ-law (PCMU) and A-law (PCMA) — SCCP 4 and 2.
GATEWAY_CODECS = (4, 2)
# The link to the gateway is gRPC over mutual TLS 1.3 (CHK-12): an encrypting channel for its keys.
GATEWAY_LINK_CIPHER = "TLS_AES_256_GCM_SHA384"


class GatewayDevice(VirtualDevice):
    """The gateway in the call agent: its media channels are gateway connections."""

    def __init__(self, profile: DeviceProfile, host: str, legs: GatewayLegs) -> None:
        super().__init__(profile, host)
        self.legs = legs
        # call reference -> the number the gateway's leg was dialled on (its first connection's):
        # it picks the telephone-network party for every connection of that leg. The display's
        # called number does not: later CallInfo name whoever the party now talks to (a transfer,
        # a conference, one down to two), and the gateway's own line on its side of it.
        self.numbers: dict[int, str] = {}

    def media(self, event) -> None:
        ch = getattr(event, "channel", None)
        if isinstance(event, OpenChannel):
            self.numbers = {ref: n for ref, n in self.numbers.items() if ref in self.phone.calls}
            number = self.numbers.get(ch.call_reference)
            if number is None:
                call = self.phone.calls.get(ch.call_reference)
                number = call.called if call is not None else ""
                if call is not None:
                    self.numbers[ch.call_reference] = number
            self.legs.open(self.phone, ch, number)
        elif isinstance(event, StartTransmit):
            self.legs.start(ch)
        elif isinstance(event, StopTransmit):
            self.legs.stop(ch)
        elif isinstance(event, CloseChannel):
            self.legs.close(ch)


class MediaPlaneMixin:
    keys: CallKeySource | None = None
    key_pool: KeyPool | None = None
    gateway_legs: GatewayLegs | None = None
    gateway_srtp: bool = True
    cluster_mode_now: str = ClusterMode.NON_SECURE.value

    async def setup_media_plane(self) -> None:
        cc = self.callcontrol
        calls = cc.calls
        # as many pairs ready as calls could start at once: half the phones registered here
        self.key_pool = KeyPool(self._fetch_keys, demand=lambda: len(cc.registry.entries) // 2)
        self.keys = CallKeySource(self.key_pool.take, self._transport)
        calls.agent.key_source = self.keys.key_source
        self.key_pool.start()
        self.gateway_legs = GatewayLegs(lambda: self.peer_channel("srtp-gateway"), gateway="gw1",
                                        pump=calls._pump)
        encrypted = getattr(self.settings, "gateway_security", "encrypted") == "encrypted"
        profile = DeviceProfile(GATEWAY_DEVICE, model="MGCP gateway", kind=EndpointKind.GATEWAY,
                                security_mode=DeviceSecurityMode.ENCRYPTED if encrypted else DeviceSecurityMode.NON_SECURE,
                                lines=(LineConfig("5550000", label="telephone network"),),
                                route_pattern=GATEWAY_PATTERN, auto_answer=True)
        calls.add_device(GatewayDevice(profile, self.settings.host, self.gateway_legs))
        # CALL-9: what the gateway can speak (it sends no CapabilitiesRes of its own)
        calls.capabilities(GATEWAY_DEVICE, s.CapabilitiesRes(
            tuple(s.MediaCapability(c) for c in GATEWAY_CODECS), encryption_capable=self.gateway_srtp))
        self.spawn(self._prune_keys())
        self.spawn(self._ask_gateway())

    async def teardown_media_plane(self) -> None:
        if self.key_pool is not None:
            await self.key_pool.close()
        if self.gateway_legs is not None:
            await self.gateway_legs.drain(2.0)

    async def _fetch_keys(self, label: str, calls: int) -> list[PairKeys]:
        stub = keymanager_pb2_grpc.KeyManagerStub(self.peer_channel("keymanager"))
        reply = await stub.GenerateCallKeys(keymanager_pb2.CallKeysRequest(call_id=label, calls=calls), timeout=5)
        return [PairKeys(from_proto(r.a_to_b), from_proto(r.b_to_a)) for r in (reply, *reply.more)]

    async def _ask_gateway(self) -> None:
        """GW-2: whether the gateway can do SRTP at all (asked once it answers)."""
        try:
            channel = self.peer_channel("srtp-gateway")
        except SettingsError as exc:  # no gateway in this deployment: its calls stay RTP (GW-2)
            log.warning("SRTP gateway not asked", extra={"error": str(exc)})
            return
        stub = srtp_gateway_pb2_grpc.SrtpGatewayStub(channel)
        for _ in range(60):
            try:
                audit = await stub.AuditEndpoint(srtp_gateway_pb2.AuditEndpointRequest(endpoint="*@gw1"), timeout=5)
                self.gateway_srtp = audit.srtp_capable
                self._gateway_profile_follows()
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(2)

    def _gateway_profile_follows(self) -> None:
        """CALL-3: a gateway without SRTP makes its calls non-secure, not only keyless — the call
        agent's profile of the gateway says whether it does SRTP."""
        agent = self.callcontrol.calls.agent
        station = agent.stations.get(GATEWAY_DEVICE)
        if station is not None and station.profile.srtp_capable != self.gateway_srtp:
            agent.update_profile(dataclasses.replace(station.profile, srtp_capable=self.gateway_srtp))

    async def _prune_keys(self) -> None:
        """Forget the keys of ended calls; follow the cluster mode for the gateway (GW-4)."""
        while True:
            try:
                self.cluster_mode_now = await self.callcontrol.cluster_mode()
            except Exception as exc:  # the database is briefly away: keep the last known mode
                log.warning("cluster mode not read", extra={"error": str(exc)})
            await asyncio.sleep(1.0)
            self.key_pool.start()    # more phones registered: more pairs ready (its demand)
            live = set(self.callcontrol.calls.agent.calls)
            for call_id in {pair[0] for pair in self.keys.ring._pairs} - live:
                self.keys.forget_call(call_id)

    def _transport(self, device: str) -> DeviceTransport | None:
        cc = self.callcontrol
        mode = self.cluster_mode_now
        if device == GATEWAY_DEVICE:
            station = cc.calls.agent.stations.get(device)
            configured = station.profile.security_mode if station is not None else DeviceSecurityMode.NON_SECURE
            effective = DeviceSecurityMode.parse(configured).effective(ClusterMode.parse(mode))  # GW-4
            return DeviceTransport(effective, True, GATEWAY_LINK_CIPHER, srtp_capable=self.gateway_srtp)
        entry = cc.registry.entries.get(device)
        station = cc.calls.agent.stations.get(device)
        if entry is None or station is None:
            return None
        on_tls = cc.tls is not None and entry.transport_port == cc.tls.port
        return DeviceTransport(entry.security_mode, on_tls, entry.cipher if on_tls else "",
                               srtp_capable=station.srtp_capable)
