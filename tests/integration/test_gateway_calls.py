"""A call from a phone through the SRTP gateway, with the real call agent (in memory), the real
key source, the srtp-gateway service over gRPC/mTLS and real UDP media on loopback: call control
drives the gateway with keys for an encrypted phone (GW-1) and with RTP for a non-secure one
(GW-2); the phone hears the telephone network's echo; captured, the SRTP leg carries no
plaintext and decrypts with the keys the signalling carried."""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.aio.gateway_legs import GatewayLegs
from ccmsec.aio.media import PortAudio
from ccmsec.media import tones
from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys
from ccmsec.media.keys import from_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.policy.calls import EndpointKind
from ccmsec.runtime.grpcio import secure_channel
from ccmsec_proto import srtp_gateway_pb2 as pb
from ccmsec.wire.sccp_calls import Tone
from ccmsec.wire.sccp_phone import CloseChannel, OpenChannel, StartTransmit, StopTransmit
from tests.integration.test_media_port_audio import UdpPort
from tests.integration.test_srtp_gateway_service import (  # noqa: F401 - fixtures
    cluster, gw, module_nats, pki_template, wait_for)
from tests.unit.calls_harness import ENC, NS, Harness

pytestmark = [pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="module")]

A = "SEP0000000000A7"
GW = "GW1"
AES = "ECDHE-ECDSA-AES256-GCM-SHA384"


class LiveHarness(Harness):
    """The in-memory harness, with each phone's channel events handed to a real media side."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.auto_open = False
        self.handlers = {}

    def pump(self) -> None:
        from ccmsec.wire.sccp_phone import SccpPhone  # noqa: F401
        for _ in range(1000):
            moved = False
            for name, phone in self.phones.items():
                for message in phone.messages_to_send():
                    moved = True
                    self.log.append(("up", name, message))
                    self.agent.receive(name, message, self.now)
            for device, message in self.agent.messages_to_send():
                moved = True
                self.log.append(("down", device, message))
                phone = self.phones.get(device)
                if phone is None:
                    continue
                for event in phone.handle(message):
                    handler = self.handlers.get(device)
                    if handler is not None:
                        handler(event)
            if not moved:
                return


async def _call_through_gateway(cluster, *, phone_mode, number="5550102", frames=50, capture=False,
                                codecs=(4, 2), resources=None):
    transports = {A: DeviceTransport("encrypted", True, AES) if phone_mode is ENC else DeviceTransport("non-secure", False),
                  # the gateway: encryption configured on it, reached over mutual TLS (GW-4, CHK-12)
                  GW: DeviceTransport("encrypted", True, "TLS_AES_256_GCM_SHA384")}
    keys = CallKeySource(lambda: PairKeys(MasterKey.generate(), MasterKey.generate()), transports.get)
    h = LiveHarness(key_source=keys.key_source)
    if resources is not None:
        h.agent.resources = h.resources = resources
    legs = GatewayLegs(lambda: cluster.gw_channel, gateway="gw1", pump=h.pump)
    pa = h.add(A, "1001", mode=phone_mode, codecs=codecs)
    pg = h.add(GW, "5550000", mode=ENC, kind=EndpointKind.GATEWAY, model="MGCP gateway",
               route_pattern="555XXXX")
    port = await UdpPort.open()
    cap = None
    if capture:
        from ccmsec.media.capture import CaptureError, LoopbackCapture, capture_available
        if capture_available():
            pytest.skip(capture_available())
        cap = LoopbackCapture([port.local[1]], directory=cluster.data)
        try:
            await asyncio.to_thread(cap.start)
        except CaptureError as exc:
            pytest.skip(str(exc))
    src = tones.announcement()
    pcm = iter([src.frame() for _ in range(frames)])
    audio = {}

    def phone_side(event):
        ch = getattr(event, "channel", None)
        if isinstance(event, OpenChannel):
            port.rx_encryption, port.codec = ch.rx_encryption, ch.codec
            audio["a"] = PortAudio(port, lambda: next(pcm, None), record=True, keep_sent=True)
            pa.channel_opened(ch.party_id, *port.local)
        elif isinstance(event, StartTransmit):
            port.start(ch.tx, ch.codec, ch.tx_encryption)
        elif isinstance(event, (StopTransmit, CloseChannel)):
            if port.remote is not None:
                port.stop()

    def gateway_side(event):
        ch = getattr(event, "channel", None)
        if isinstance(event, OpenChannel):
            legs.open(pg, ch, pg.calls[ch.call_reference].called or number)
        elif isinstance(event, StartTransmit):
            legs.start(ch)
        elif isinstance(event, StopTransmit):
            legs.stop(ch)
        elif isinstance(event, CloseChannel):
            legs.close(ch)
    h.handlers = {A: phone_side, GW: gateway_side}
    h.call(A, number)
    await wait_for(lambda: any(c.ringing for c in pg.calls.values()), 5)
    pg.answer()
    h.pump()
    await wait_for(lambda: "a" in audio and audio["a"].counters()["received"] >= frames - 2, 15)
    if cap is not None:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(cap.stop)
    return h, keys, legs, port, audio["a"], pa, cap


async def test_gw1_encrypted_phone_calls_the_echo_through_the_gateway_with_srtp(gw):
    await gw.mixed()
    h, keys, legs, port, audio, pa, cap = await _call_through_gateway(gw, phone_mode=ENC, capture=True)
    assert audio.is_srtp and audio.counters()["refused"] == 0
    assert [c.security for c in pa.calls.values()] == [3]          # the lock: both directions SRTP
    [plan] = legs.plans.values()
    assert plan.srtp and plan.phone_send == from_encryption_info(port.tx_encryption)
    # the echo: what the phone hears is exactly what it said
    from ccmsec.media import g711
    heard = bytes(audio.recording)
    said = b"".join(g711.ulaw_decode(p) for p in audio.sent_payloads)
    assert len(heard) >= 40 * 320 and heard in said
    # proof on the wire: nothing in the clear, and the keys the signalling carried decrypt it all
    from ccmsec.media.capture import media_proof
    packets = await asyncio.to_thread(cap.datagrams)
    mine = port.local[1]
    up = [d.payload for d in packets if d.src[1] == mine]
    down = [d.payload for d in packets if d.dst[1] == mine]
    proof_up = media_proof(up, audio.sent_payloads, from_encryption_info(port.tx_encryption))
    proof_down = media_proof(down, audio.sent_payloads, from_encryption_info(port.rx_encryption))
    assert proof_up.plaintext_hits == 0 and proof_down.plaintext_hits == 0, (proof_up, proof_down)
    assert proof_up.audio_matches and proof_up.decrypted == len(up) == len(audio.sent_payloads)
    assert proof_down.refused == 0 and proof_down.decrypted == len(down) >= 40
    audit = await gw.gw.AuditEndpoint(pb.AuditEndpointRequest(endpoint="*@gw1"))
    stats = [c for e in audit.endpoints for c in e.connections]
    assert len(stats) == 1 and stats[0].srtp and stats[0].refused_authentication == 0
    pa.hang_up()
    h.pump()
    await legs.drain()
    await wait_for(lambda: gw.gw_svc.gateway.connections == {}, 5)
    port.close()


async def test_gw2_non_secure_phone_gets_an_rtp_leg(gw):
    await gw.mixed()
    h, keys, legs, port, audio, pa, cap = await _call_through_gateway(gw, phone_mode=NS)
    assert not audio.is_srtp and audio.counters()["refused"] == 0
    [plan] = legs.plans.values()
    assert not plan.srtp and "GW-2" in plan.reason and "ENC-3" in keys.refusals[A]
    assert [c.security for c in pa.calls.values()] == [1]
    pa.hang_up()
    h.pump()
    await legs.drain()
    await wait_for(lambda: gw.gw_svc.gateway.connections == {}, 5)
    port.close()


async def test_call9_an_a_law_phone_talks_to_the_gateway_in_a_law(gw):
    """The gateway offers G.711 µ-law and A-law; a phone that offers A-law only is told A-law and
    the gateway is given PCMA in the remote description — before, it was always given PCMU, so the
    phone heard µ-law it decoded as A-law."""
    await gw.mixed()
    h, keys, legs, port, audio, pa, cap = await _call_through_gateway(gw, phone_mode=NS, codecs=(2,))
    assert {ch.codec for ch in pa.channels.values()} == {2}
    from ccmsec.media import g711
    heard = bytes(audio.recording)
    said = b"".join(g711.alaw_decode(p) for p in audio.sent_payloads)
    assert len(heard) >= 40 * 320 and heard in said and audio.counters()["refused"] == 0
    pa.hang_up()
    h.pump()
    await legs.drain()
    await wait_for(lambda: gw.gw_svc.gateway.connections == {}, 5)
    port.close()


async def test_call9_no_common_codec_with_the_deployed_gateway_is_refused_and_leaves_no_connection(gw):
    """CALL-9 through the real media plane: a phone that offers G.729 only calls the telephone
    network through the srtp-gateway service (gRPC/mTLS, MGCP CRCX/MDCX/DLCX), which offers G.711
    µ-law and A-law. Call control refuses the set-up — reorder, "No common codec", the call record
    says why — and the gateway is never asked for a connection: no CRCX reached it (its created
    total is unchanged), AuditEndpoint lists none, call control keeps no leg or plan, no key pair
    was taken. The gateway side here answers and opens legs exactly as in the calls above, so a call
    control that set the call up anyway would have created a connection on it."""
    await gw.mixed()
    created, deleted = gw.gw_svc.gateway.totals["created"], gw.gw_svc.gateway.totals["deleted"]
    transports = {A: DeviceTransport("encrypted", True, AES),
                  GW: DeviceTransport("encrypted", True, "TLS_AES_256_GCM_SHA384")}
    taken = []
    keys = CallKeySource(lambda: taken.append(1) or PairKeys(MasterKey.generate(), MasterKey.generate()),
                         transports.get)
    h = LiveHarness(key_source=keys.key_source)
    legs = GatewayLegs(lambda: gw.gw_channel, gateway="gw1", pump=h.pump)
    pa = h.add(A, "1001", mode=ENC, codecs=(9,))                 # G.729 only
    pg = h.add(GW, "5550000", mode=ENC, kind=EndpointKind.GATEWAY, model="MGCP gateway",
               route_pattern="555XXXX")                          # (4, 2): G.711 µ-law, A-law

    def gateway_side(event):   # as the deployed gateway device: every channel becomes a connection
        ch = getattr(event, "channel", None)
        if isinstance(event, OpenChannel):
            legs.open(pg, ch, pg.calls[ch.call_reference].called or "5550102")
        elif isinstance(event, StartTransmit):
            legs.start(ch)
        elif isinstance(event, StopTransmit):
            legs.stop(ch)
        elif isinstance(event, CloseChannel):
            legs.close(ch)
    h.handlers = {GW: gateway_side}
    seen = len(h.log)
    h.call(A, "5550102")
    if any(c.ringing for c in pg.calls.values()):   # the gateway answers every call it is offered
        pg.answer()
        h.pump()
    await asyncio.sleep(0.5)       # time for a CRCX, had one been sent, to reach the gateway
    await legs.drain()
    # the media plane first: nothing was created on the gateway, nothing is left there
    assert gw.gw_svc.gateway.totals == {"created": created, "deleted": deleted}, "a CRCX reached it"
    assert gw.gw_svc.gateway.connections == {}
    audit = await gw.gw.AuditEndpoint(pb.AuditEndpointRequest(endpoint="*@gw1"))
    assert [c for e in audit.endpoints for c in e.connections] == []
    assert not legs.connections and not legs.plans and taken == []
    # refused at set-up, before anything rang: call control sent the gateway nothing at all
    assert [m for d, name, m in h.log[seen:] if d == "down" and name == GW] == []
    (call,) = pa.calls.values()
    assert (call.tone, call.prompt) == (Tone.REORDER, "No common codec"), call
    assert not pa.channels and not pg.calls
    ended = [e for e in h.events() if e.kind == "ended"]
    assert ended and "no codec in common" in ended[-1].call.codec_rule, ended


async def test_gw3_call9_a_held_gateway_leg_hears_music_on_hold_in_its_calls_law(gw):
    """The telephone-network caller put on hold by the phone hears music on hold: call control's
    real music-on-hold port (`ResourcePorts`, real UDP) sends to a new gateway connection that
    CreateConnection alone makes receive-only in the law the call negotiated (`a:PCMA`: the phone
    offers A-law only, the gateway both) — before, the hold channel was created inactive with no
    codec and never modified (it never transmits), so the gateway took nothing and the caller
    heard silence. The secure call was SRTP; music on hold is RTP (GW-3, CALL-3), and every packet
    the gateway takes decodes as A-law music (none refused as a foreign payload type: µ-law music
    would be). Resume brings SRTP back on a fresh connection."""
    from ccmsec.media import g711
    from ccmsec_callmanager.calls import ResourcePorts
    await gw.mixed()
    res = ResourcePorts("127.0.0.1")
    h, keys, legs, port, audio, pa, cap = await _call_through_gateway(
        gw, phone_mode=ENC, number="5550100", codecs=(2,), resources=res)
    gateway = gw.gw_svc.gateway
    [talking] = gateway.connections.values()
    assert talking.srtp and talking.payload_type == 8
    pa.hold()
    h.pump()
    await wait_for(lambda: [c.mode.name for c in gateway.connections.values()] == ["RECVONLY"], 5)
    [held] = gateway.connections.values()
    heard: list[bytes] = []
    held.media.on_payload = heard.append
    await wait_for(lambda: len(heard) >= 25, 5)
    assert not held.srtp and held.payload_type == 8 and held.send_key is None     # GW-3
    stats = next(c for e in (await gw.gw.AuditEndpoint(pb.AuditEndpointRequest(endpoint="*@gw1"))).endpoints
                 for c in e.connections)
    assert stats.mode == pb.RECVONLY and not stats.srtp and stats.packets_sent == 0
    assert stats.packets_received >= 25 and stats.malformed == 0 and stats.refused_authentication == 0
    music = tones.music_on_hold()
    frames = [music.frame() for _ in range(150)]             # two loops of the melody
    a_law = {g711.alaw_encode(f) for f in frames}
    assert all(p in a_law for p in heard), "the held caller hears something but not A-law music"
    assert not any(p in {g711.ulaw_encode(f) for f in frames} for p in heard)
    assert [c.codec for c in pa.channels.values()] == []      # the holder itself hears nothing
    pa.resume()
    h.pump()
    await wait_for(lambda: [(c.mode.name, c.srtp) for c in gateway.connections.values()]
                   == [("SENDRECV", True)], 5)
    pa.hang_up()
    h.pump()
    await legs.drain()
    await wait_for(lambda: gateway.connections == {}, 5)
    port.close()
