"""Callmanager's media plane: who gets keys (ENC-3, ENC-5, GW-2, GW-4 — the eligibility its key
source really uses) and what the call agent is told of the SRTP gateway: a gateway whose
audit reports no SRTP makes its calls non-secure (CALL-3), not merely keyless (GW-2). And the
number each connection of the gateway's leg is made for: the one it was dialled on, whatever the
call became since (a transfer, a conference)."""

from __future__ import annotations

import dataclasses
import types

from ccmsec.calls.agent import CallAgent
from ccmsec.calls.config import DeviceProfile, LineConfig
from ccmsec.domain import DeviceSecurityMode
from ccmsec.policy.calls import EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_phone import OpenChannel
from ccmsec_callmanager import media_plane
from ccmsec_callmanager.media_plane import GATEWAY_DEVICE, GATEWAY_PATTERN, MediaPlaneMixin

from tests.unit.calls_harness import Harness


class Plane(MediaPlaneMixin):
    def __init__(self, agent: CallAgent) -> None:
        self.callcontrol = types.SimpleNamespace(calls=types.SimpleNamespace(agent=agent))
        self.asked: list[str] = []

    def peer_channel(self, role: str):
        self.asked.append(role)
        return object()


def _gateway_agent() -> CallAgent:
    agent = CallAgent()
    agent.register(DeviceProfile(GATEWAY_DEVICE, model="MGCP gateway", kind=EndpointKind.GATEWAY,
                                 security_mode=DeviceSecurityMode.ENCRYPTED,
                                 lines=(LineConfig("5550000"),), route_pattern=GATEWAY_PATTERN,
                                 auto_answer=True), 0.0)
    return agent


async def test_call3_the_gateways_audit_reaches_the_call_agents_profile(monkeypatch):
    for srtp in (False, True):
        class Stub:
            def __init__(self, channel) -> None:
                pass

            async def AuditEndpoint(self, request, timeout):  # noqa: N802
                return types.SimpleNamespace(srtp_capable=srtp)

        monkeypatch.setattr(media_plane.srtp_gateway_pb2_grpc, "SrtpGatewayStub", Stub)
        agent = _gateway_agent()
        plane = Plane(agent)
        await plane._ask_gateway()
        profile = agent.stations[GATEWAY_DEVICE].profile
        assert plane.asked == ["srtp-gateway"] and plane.gateway_srtp is srtp
        assert profile.srtp_capable is srtp and profile.route_pattern == GATEWAY_PATTERN


def _plane_with_phone(port: int, cipher: str, mode: str = "encrypted", srtp: bool = True) -> Plane:
    from ccmsec_callmanager.registry import RegistrationEntry
    from ccmsec.wire import sccp as s

    agent = _gateway_agent()
    phone = "SEP0000000000F1"
    agent.register(DeviceProfile(phone, model="7970", security_mode=DeviceSecurityMode.parse(mode),
                                 lines=(LineConfig("1001"),)), 0.0)
    agent.capabilities(phone, s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=srtp))
    plane = Plane(agent)
    entry = RegistrationEntry(phone, "7970", mode, "10.0.0.1:5000", "10.0.0.1", False, port, cipher,
                              "", "", 0.0)
    plane.callcontrol.registry = types.SimpleNamespace(entries={phone: entry})
    plane.callcontrol.tls = types.SimpleNamespace(port=2443)
    return plane


def test_enc3_enc5_gw2_gw4_who_call_control_gives_keys_to():
    """The eligibility the key source really uses (`MediaPlaneMixin._transport`), not a model of
    it: a phone only on TLS 2443 with an encrypting cipher and SRTP announced; the gateway only
    with encryption configured, the cluster in mixed mode and SRTP reported."""
    from ccmsec.media.callkeys import may_receive_keys

    aes = "ECDHE-ECDSA-AES256-GCM-SHA384"
    phone = "SEP0000000000F1"
    for port, cipher, mode, srtp, ok, words in [
        (2443, aes, "encrypted", True, True, ""),
        (2443, "NULL-SHA256", "encrypted", True, False, "ENC-5: TLS cipher NULL-SHA256"),
        (2000, aes, "encrypted", True, False, "ENC-5: registered on the clear SCCP port"),
        (2443, aes, "encrypted", False, False, "SRTP capability"),
        (2443, "NULL-SHA256", "authenticated", True, False, "ENC-3"),
    ]:
        plane = _plane_with_phone(port, cipher, mode, srtp)
        allowed, why = may_receive_keys(plane._transport(phone))
        assert allowed is ok and words in why, (port, cipher, mode, srtp, why)
        assert plane._transport("SEP0000000000F9") is None          # not registered: nothing
    for cluster, srtp, ok in [("mixed", True, True), ("non-secure", True, False), ("mixed", False, False)]:
        plane = _plane_with_phone(2443, aes)
        plane.cluster_mode_now, plane.gateway_srtp = cluster, srtp
        allowed, why = may_receive_keys(plane._transport(GATEWAY_DEVICE))
        assert allowed is ok, (cluster, srtp, why)
        if cluster == "non-secure":
            assert "ENC-3" in why and "non-secure" in why            # GW-4: MODE-3's effective mode
    plane = _plane_with_phone(2443, aes)
    plane.cluster_mode_now = "mixed"
    station = plane.callcontrol.calls.agent.stations[GATEWAY_DEVICE]
    station.profile = dataclasses.replace(station.profile, security_mode=DeviceSecurityMode.NON_SECURE)
    assert not may_receive_keys(plane._transport(GATEWAY_DEVICE))[0]  # encryption not configured on it


async def test_call9_the_gateway_offers_g711_mu_law_and_a_law_to_the_call_agent():
    """The gateway sends no CapabilitiesRes: the media plane tells the call agent what it speaks
    (µ-law and A-law), so an A-law phone's call to it is set up in A-law, not refused for want
    of a common codec (nor told µ-law)."""
    from ccmsec_callmanager.calls import CallService
    from ccmsec_callmanager.media_plane import GATEWAY_CODECS

    calls = CallService("127.0.0.1")
    calls.start()
    plane = Plane(calls.agent)
    plane.callcontrol = types.SimpleNamespace(calls=calls, registry=types.SimpleNamespace(entries={}))
    plane.settings = types.SimpleNamespace(host="127.0.0.1", gateway_security="encrypted")
    plane.spawn = lambda coro: coro.close()
    await plane.setup_media_plane()
    try:
        assert calls.agent.stations[GATEWAY_DEVICE].codecs == GATEWAY_CODECS == (4, 2)
    finally:
        await plane.teardown_media_plane()
        await calls.close()


class _RecordingLegs:
    """Stands in for GatewayLegs (the srtp-gateway's gRPC side): the number each connection of
    the gateway's leg is created for — the one that picks its telephone-network party."""

    def __init__(self) -> None:
        self.numbers: list[str] = []

    def open(self, phone, channel, number: str) -> None:
        self.numbers.append(number)
        phone.channel_opened(channel.party_id, "10.9.9.9", 40000 + 2 * len(self.numbers))

    def start(self, channel) -> None:
        pass

    def stop(self, channel) -> None:
        pass

    def close(self, channel) -> None:
        pass


class _GatewayHarness(Harness):
    """The in-memory harness with the gateway's device of callmanager (media_plane.GatewayDevice,
    its phone-side machine auto-answering) in the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.legs = _RecordingLegs()
        profile = DeviceProfile(GATEWAY_DEVICE, model="MGCP gateway", kind=EndpointKind.GATEWAY,
                                lines=(LineConfig("5550000"),), route_pattern=GATEWAY_PATTERN,
                                auto_answer=True)
        self.gateway = media_plane.GatewayDevice(profile, "127.0.0.1", self.legs)
        self.agent.register(profile, self.now)
        self.agent.capabilities(GATEWAY_DEVICE, s.CapabilitiesRes(
            (s.MediaCapability(4), s.MediaCapability(2))))
        self.gateway.phone.start_setup()
        self.pump()

    def pump(self) -> None:
        gateway = getattr(self, "gateway", None)
        for _ in range(1000):
            moved = False
            for name, phone in self.phones.items():
                for message in phone.messages_to_send():
                    moved = True
                    self.agent.receive(name, message, self.now)
            if gateway is not None:
                for message in gateway.phone.messages_to_send():
                    moved = True
                    self.agent.receive(GATEWAY_DEVICE, message, self.now)
            for device, message in self.agent.messages_to_send():
                moved = True
                self.log.append(("down", device, message))
                if device == GATEWAY_DEVICE and gateway is not None:
                    gateway.handle(message)
                    continue
                for event in self.phones[device].handle(message):
                    if isinstance(event, OpenChannel):
                        self.phones[device].channel_opened(
                            event.channel.party_id, self.addresses[device], next(self._ports))
            if not moved:
                return
        raise AssertionError("messages keep flowing")


def test_gw_every_connection_of_a_transferred_or_conferenced_gateway_leg_reaches_the_dialled_party():
    # A calls 5550102 (the echo party behind the gateway), then transfers it to C, who holds and
    # resumes; or conferences C in, C leaving. The gateway's leg took the number for each new
    # connection from its display's last CallInfo, which after the change names C, "Conference"
    # or the gateway's own line (5550000): the connection reached no telephone-network party.
    # Blind (Transfer pressed again while C still rings) the gateway's leg becomes the call's
    # caller: its CallInfo's called number is C's own, 1003, whatever names the gateway's party.
    for how in ("transfer", "conference", "blind"):
        h = _GatewayHarness()
        pa, pc = h.add("SEP0000000000A1", "1001"), h.add("SEP0000000000A3", "1003")
        h.call("SEP0000000000A1", "5550102")
        assert h.legs.numbers == ["5550102"]
        press = pa.conference if how == "conference" else pa.transfer
        press()
        h.pump()
        pa.keypad("1003")
        h.pump()
        if how != "blind":
            pc.answer()
            h.pump()
        press(pa.active_call().reference)
        h.pump()
        if how == "blind":
            assert not pa.calls   # a blind transfer: A is out, C rings
            pc.answer()
            h.pump()
        if how != "conference":
            pc.hold()
            h.pump()
            pc.resume()
        else:
            pc.hang_up()
        h.pump()
        assert len(h.legs.numbers) > 3 and set(h.legs.numbers) == {"5550102"}, h.legs.numbers
        # what the gateway keeps per call goes with the call: a new call keeps only its own
        for phone in (pa, pc):
            for call in list(phone.calls.values()):
                phone.hang_up(call.reference)
                h.pump()
        assert not h.agent.calls
        h.call("SEP0000000000A3", "5550100")
        assert h.legs.numbers[-1] == "5550100" and len(h.gateway.numbers) == 1
