"""The relay's in-place SRTP path (ENC-2, GW-1): libsrtp protecting and unprotecting inside one
preallocated buffer must give exactly what pylibsrtp's `Session` gives, and refuse — and count —
the same bad packets for the same reasons: replayed, tampered, wrong key, too short, too long,
foreign payload type or SSRC."""

from __future__ import annotations

import pytest

from ccmsec.media.packetiser import Packetiser
from ccmsec.media.rtp import RtpPacket
from ccmsec.media.srtp import (MAX_SRTP_PACKET, MasterKey, PacketBuffer, Refusal, SrtpReceiver, SrtpRefused,
                               SrtpSender, SrtpSuite)
from ccmsec.media.stream import AudioReceived, MediaStream

PAYLOAD = bytes(range(160))


def _into(packet: PacketBuffer, data: bytes) -> int:
    packet.view[:len(data)] = data
    return len(data)


@pytest.mark.parametrize("suite", list(SrtpSuite))
def test_enc2_in_place_matches_pylibsrtp_session_every_suite(suite):
    key = MasterKey.generate(suite)
    by_session, in_place = SrtpSender(key), SrtpSender(key)
    receiver = SrtpReceiver(key)
    packet = PacketBuffer()
    pk = Packetiser(0)
    for _ in range(5):
        rtp = pk.datagram(PAYLOAD)
        expected = by_session.protect(rtp)
        n = in_place.protect_in_place(packet, _into(packet, rtp))
        assert bytes(packet.view[:n]) == expected            # the same bytes as Session.protect
        assert receiver.unprotect_in_place(packet, n) == len(rtp)
        assert bytes(packet.view[:len(rtp)]) == rtp


def test_enc2_in_place_refuses_replay_tamper_wrong_key_and_bad_sizes_with_reasons():
    key = MasterKey.generate()
    sender, receiver = SrtpSender(key), SrtpReceiver(key)
    packet = PacketBuffer()
    wire = sender.protect(Packetiser(0).datagram(PAYLOAD))
    assert receiver.unprotect_in_place(packet, _into(packet, wire)) == 172
    with pytest.raises(SrtpRefused) as replay:
        receiver.unprotect_in_place(packet, _into(packet, wire))
    assert replay.value.reason is Refusal.REPLAY
    second = bytearray(sender.protect(Packetiser(0, ssrc=7).datagram(PAYLOAD)))
    second[40] ^= 1
    with pytest.raises(SrtpRefused) as tampered:
        receiver.unprotect_in_place(packet, _into(packet, bytes(second)))
    assert tampered.value.reason is Refusal.AUTHENTICATION
    stranger = SrtpSender(MasterKey.generate()).protect(Packetiser(0).datagram(PAYLOAD))
    with pytest.raises(SrtpRefused) as wrong_key:
        receiver.unprotect_in_place(packet, _into(packet, stranger))
    assert wrong_key.value.reason is Refusal.AUTHENTICATION
    for length in (5, MAX_SRTP_PACKET + 1):
        with pytest.raises(SrtpRefused) as bad_size:
            receiver.unprotect_in_place(packet, length)
        assert bad_size.value.reason is Refusal.MALFORMED


def test_enc2_stream_in_place_counts_as_receive_does_and_reoriginates():
    """The same datagrams through `receive` and through `receive_in_place` leave the same
    counters; what `send_in_place` sends decrypts under the send key to the payload received."""
    up, down = MasterKey.generate(), MasterKey.generate()
    phone = MediaStream(0, send_key=up, receive_key=down)
    reference = MediaStream(0, send_key=down, receive_key=up)
    relay = MediaStream(0, send_key=down, receive_key=up)
    packet = PacketBuffer()
    wires = [phone.packet_for_payload(bytes([i]) * 160) for i in range(6)]
    tampered = bytearray(wires[3])
    tampered[20] ^= 0x80
    foreign = SrtpSender(up).protect(RtpPacket(8, 1, 0, 99, PAYLOAD).to_bytes())   # PCMA, other SSRC
    stream = [wires[0], wires[1], wires[1], bytes(tampered), wires[2], foreign, b"junk", wires[5], wires[3]]
    echoed = []
    for datagram in stream:
        reference.receive(datagram)
        end = relay.receive_in_place(packet, _into(packet, datagram))
        if end:
            assert end == 172
            echoed.append(bytes(packet.view[:relay.send_in_place(packet, end)]))
    assert {**relay.counters.as_dict(), "sent": 0} == reference.counters.as_dict()
    c = relay.counters
    assert (c.received, c.refused_replay, c.refused_authentication, c.foreign, c.malformed, c.lost) == \
        (5, 1, 1, 1, 1, 1)   # wire 4 never came: one lost
    assert c.sent == 5
    heard = [phone.receive(w) for w in echoed]
    assert all(isinstance(h, AudioReceived) for h in heard)
    assert [h.payload[0] for h in heard] == [0, 1, 2, 5, 3]
    assert [h.sequence for h in heard] == [(heard[0].sequence + i) & 0xFFFF for i in range(5)]
    assert heard[0].marker and not heard[1].marker
    assert phone.counters.refused == 0


def test_in_place_normalises_csrcs_and_extension_and_plain_rtp_size_is_bounded():
    stream = MediaStream(0)
    packet = PacketBuffer()
    rtp = RtpPacket(0, 10, 0, 5, PAYLOAD, csrcs=(1, 2), extension=(0xBEDE, b"abcd"), padding=4).to_bytes()
    end = stream.receive_in_place(packet, _into(packet, rtp))
    assert bytes(packet.view[12:end]) == PAYLOAD
    assert stream.receive_in_place(packet, MAX_SRTP_PACKET + 1) == 0
    assert stream.counters.malformed == 1 and stream.counters.received == 1
