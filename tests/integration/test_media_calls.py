"""Phone-to-phone media with the real call agent (in memory), the real key source and real UDP
media on loopback, captured with dumpcap: an encrypted call's packets carry no plaintext and
decrypt, with the keys the signalling carried, to exactly the audio sent (ENC-2, ENC-4); an
authenticated or non-secure call is plain RTP and the phones' status says so (CALL-1, CALL-2)."""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.aio.media import PortAudio
from ccmsec.media import tones
from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys
from ccmsec.media.capture import CaptureError, LoopbackCapture, capture_available, media_proof
from ccmsec.media.keys import from_encryption_info
from ccmsec.media.srtp import MasterKey
from ccmsec.wire.sccp_phone import CloseChannel, OpenChannel, StartTransmit, StopTransmit
from tests.integration.test_gateway_calls import LiveHarness
from tests.integration.test_media_port_audio import UdpPort
from tests.integration.test_srtp_gateway_service import wait_for
from tests.unit.calls_harness import AUTH, ENC, NS

pytestmark = pytest.mark.timeout(60)

A, B = "SEP0000000000A8", "SEP0000000000B8"
TRANSPORT = {ENC: DeviceTransport("encrypted", True, "ECDHE-ECDSA-AES256-GCM-SHA384"),
             AUTH: DeviceTransport("authenticated", True, "NULL-SHA256"),
             NS: DeviceTransport("non-secure", False)}


async def _call(mode_a, mode_b, directory, frames=40):
    why = capture_available()
    if why:
        pytest.skip(why)
    transports = {A: TRANSPORT[mode_a], B: TRANSPORT[mode_b]}
    keys = CallKeySource(lambda: PairKeys(MasterKey.generate(), MasterKey.generate()), transports.get)
    h = LiveHarness(key_source=keys.key_source)
    phones = {A: h.add(A, "1001", mode=mode_a), B: h.add(B, "1002", mode=mode_b)}
    ports = {A: await UdpPort.open(), B: await UdpPort.open()}
    audio = {}
    sources = {A: tones.announcement(), B: tones.music_on_hold()}
    pcm = {name: iter([src.frame() for _ in range(frames)]) for name, src in sources.items()}

    def side(name):
        def handle(event):
            ch, port = getattr(event, "channel", None), ports[name]
            if isinstance(event, OpenChannel):
                port.rx_encryption = ch.rx_encryption
                audio[name] = PortAudio(port, lambda: next(pcm[name], None), record=True, keep_sent=True)
                phones[name].channel_opened(ch.party_id, *port.local)
            elif isinstance(event, StartTransmit):
                port.start(ch.tx, ch.codec, ch.tx_encryption)
            elif isinstance(event, (StopTransmit, CloseChannel)) and port.remote is not None:
                port.stop()
        return handle
    h.handlers = {A: side(A), B: side(B)}
    cap = LoopbackCapture([ports[A].local[1], ports[B].local[1]], directory=directory)
    try:
        await asyncio.to_thread(cap.start)
    except CaptureError as exc:
        pytest.skip(str(exc))
    try:
        h.call(A, "1002")
        phones[B].answer()
        h.pump()
        await wait_for(lambda: len(audio) == 2 and all(a.counters()["received"] >= frames - 1 for a in audio.values()), 10)
    finally:
        await asyncio.to_thread(cap.stop)
    packets = await asyncio.to_thread(cap.datagrams)
    proofs = {}
    for name, other in ((A, B), (B, A)):
        sent = [d.payload for d in packets if d.src[1] == ports[name].local[1] and d.dst[1] == ports[other].local[1]]
        # the key the receiver was given in its OpenReceiveChannel: what the signalling carried
        proofs[name] = media_proof(sent, audio[name].sent_payloads, from_encryption_info(ports[other].rx_encryption))
    status = {n: [c.security for c in p.calls.values()] for n, p in phones.items()}
    for p in ports.values():
        p.close()
    return proofs, audio, status


async def test_enc2_enc4_encrypted_call_on_the_wire_is_srtp_and_decrypts_to_the_audio_sent(tmp_path):
    proofs, audio, status = await _call(ENC, ENC, tmp_path)
    for name, proof in proofs.items():
        assert proof.srtp and proof.packets >= 39, proof.summary()
        assert proof.plaintext_hits == 0, proof.summary()
        assert proof.decrypted == proof.packets and proof.audio_matches, proof.summary()
    assert all(a.is_srtp for a in audio.values())
    assert status == {A: [3], B: [3]}  # the lock on both phones (CALL-2)


@pytest.mark.parametrize("mode_b, shown", [(AUTH, 2), (NS, 1)])
async def test_call1_authenticated_or_non_secure_call_is_plain_rtp_and_says_so(mode_b, shown, tmp_path):
    proofs, audio, status = await _call(ENC, mode_b, tmp_path)
    for proof in proofs.values():
        assert not proof.srtp and proof.plaintext_hits == proof.packets >= 39 and proof.audio_matches, proof.summary()
    assert not any(a.is_srtp for a in audio.values())
    assert status == {A: [shown], B: [shown]}
