"""SRTP through libsrtp (ENC-2): both suites and AEAD, ENC-4 key direction, and the bad cases —
replayed, tampered and wrong-key packets refused by the receiver and counted; the plaintext never
appears in a protected packet."""

from __future__ import annotations

import pytest

from ccmsec.media import tones
from ccmsec.media.srtp import MasterKey, Refusal, SrtpReceiver, SrtpRefused, SrtpSender, SrtpSuite, common_suite
from ccmsec.media.stream import AudioReceived, MediaStream, PacketRefused


def _pair(suite=SrtpSuite.AES_CM_128_HMAC_SHA1_80):
    """Phones A and B of ENC-4: A sends with the first set and receives with the second."""
    a_to_b, b_to_a = MasterKey.generate(suite), MasterKey.generate(suite)
    a = MediaStream(0, send_key=a_to_b, receive_key=b_to_a)
    b = MediaStream(0, send_key=b_to_a, receive_key=a_to_b)
    return a, b


@pytest.mark.parametrize("suite", list(SrtpSuite))
def test_enc2_enc4_srtp_both_directions_every_suite(suite):
    a, b = _pair(suite)
    src = tones.tone(1004)
    for _ in range(5):
        pcm = src.frame()
        wire = a.packet_for(pcm)
        assert a.packetiser.payload_type == 0 and len(wire) == 12 + 160 + suite.tag_length
        got = b.receive(wire)
        assert isinstance(got, AudioReceived) and len(got.pcm) == 320
        back = a.receive(b.packet_for(pcm))
        assert isinstance(back, AudioReceived)
    assert a.is_srtp and b.is_srtp
    assert a.counters.as_dict()["sent"] == 5 and b.counters.received == 5 and b.counters.lost == 0


def test_enc2_protected_packet_never_carries_the_payload():
    key = MasterKey.generate()
    payload = bytes(range(160))
    sender = MediaStream(0, send_key=key, receive_key=MasterKey.generate())
    wire = sender.packet_for_payload(payload)
    assert payload[:8] not in wire and payload[40:48] not in wire


def test_enc2_replayed_packet_refused_and_counted():
    a, b = _pair()
    wire = a.packet_for(bytes(320))
    assert isinstance(b.receive(wire), AudioReceived)
    again = b.receive(wire)
    assert isinstance(again, PacketRefused) and again.reason is Refusal.REPLAY
    assert (b.counters.received, b.counters.refused_replay, b.counters.refused) == (1, 1, 1)


@pytest.mark.parametrize("where", [0x02, 0x20, -1])  # header (seq), payload, auth tag
def test_enc2_tampered_packet_refused_and_counted(where):
    a, b = _pair()
    wire = bytearray(a.packet_for(bytes(320)))
    wire[where] ^= 0x01
    got = b.receive(bytes(wire))
    assert isinstance(got, PacketRefused) and got.reason is Refusal.AUTHENTICATION
    assert (b.counters.received, b.counters.refused_authentication) == (0, 1)


def test_enc4_packets_under_the_wrong_set_are_refused():
    """A's A→B packets cannot be accepted under the B→A set: the two directions really differ."""
    a, b = _pair()
    echo = MediaStream(0, receive_key=None)
    wire = a.packet_for(bytes(320))
    wrong = SrtpReceiver(MasterKey.generate())
    with pytest.raises(SrtpRefused) as err:
        wrong.unprotect(wire)
    assert err.value.reason is Refusal.AUTHENTICATION
    # a plain RTP receiver takes it as RTP but the audio is ciphertext, not the tone
    got = echo.receive(wire)
    assert isinstance(got, AudioReceived) and got.pcm != bytes(320)


def test_plain_rtp_stream_accepts_rtp_and_an_srtp_receiver_refuses_it():
    plain = MediaStream(0)
    wire = plain.packet_for(bytes(320))
    assert wire[12:] == b"\xff" * 160  # µ-law silence in the clear
    secure = MediaStream(0, send_key=MasterKey.generate(), receive_key=MasterKey.generate())
    got = secure.receive(wire)
    assert isinstance(got, PacketRefused) and secure.counters.refused_authentication == 1
    assert not plain.is_srtp and not MediaStream(0, send_key=MasterKey.generate()).is_srtp


def test_loss_counted_from_sequence_gaps_and_short_junk_is_malformed():
    a, b = _pair()
    wires = [a.packet_for(bytes(320)) for _ in range(10)]
    for i, w in enumerate(wires):
        if i not in (3, 4, 7):
            b.receive(w)
    assert (b.counters.received, b.counters.lost) == (7, 3)
    assert isinstance(b.receive(b"\x80\x00"), PacketRefused) and b.counters.malformed == 1


def test_key_sizes_checked_and_never_in_repr():
    key = MasterKey.generate(SrtpSuite.AEAD_AES_256_GCM)
    assert len(key.key) == 32 and len(key.salt) == 12
    assert key.key.hex() not in repr(key) and "key=" not in repr(key)
    with pytest.raises(ValueError, match="16-byte master key and a 14-byte salt"):
        MasterKey(SrtpSuite.AES_CM_128_HMAC_SHA1_80, bytes(16), bytes(12))
    with pytest.raises(ValueError, match="unsupported SRTP suite 'F8_128_HMAC_SHA1_80'"):
        SrtpSuite.parse("F8_128_HMAC_SHA1_80")
    assert SrtpSuite.parse(2) is SrtpSuite.AES_CM_128_HMAC_SHA1_80


def test_common_suite_prefers_the_default_and_none_without_overlap():
    all_ = set(SrtpSuite)
    assert common_suite(all_, all_) is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    assert common_suite({SrtpSuite.AEAD_AES_128_GCM, SrtpSuite.AES_CM_128_HMAC_SHA1_32},
                        {SrtpSuite.AEAD_AES_128_GCM}) is SrtpSuite.AEAD_AES_128_GCM
    assert common_suite({SrtpSuite.AES_CM_128_HMAC_SHA1_32}, {SrtpSuite.AEAD_AES_128_GCM}) is None


def test_sender_protects_what_the_receiver_unprotects_exactly():
    key = MasterKey.generate()
    rtp = bytes([0x80, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 2]) + bytes(range(160))
    assert SrtpReceiver(key).unprotect(SrtpSender(key).protect(rtp)) == rtp


def test_receive_takes_packets_with_csrcs_extension_and_padding_too():
    """The fast path covers the plain header; anything else goes through the full parser."""
    from ccmsec.media.rtp import RtpPacket
    plain = MediaStream(0)
    raw = RtpPacket(0, 5, 800, 0xABCDEF01, b"\x11" * 160, csrcs=(9,), extension=(1, b"abcd"), padding=3).to_bytes()
    got = plain.receive(raw)
    assert isinstance(got, AudioReceived)
    assert (got.sequence, got.timestamp, got.ssrc, got.payload) == (5, 800, 0xABCDEF01, b"\x11" * 160)
    other_pt = RtpPacket(8, 6, 960, 0xABCDEF01, b"\x11" * 160).to_bytes()
    assert isinstance(plain.receive(other_pt), PacketRefused) and plain.counters.foreign == 1
    other_ssrc = RtpPacket(0, 6, 960, 0x1, b"\x11" * 160).to_bytes()
    assert isinstance(plain.receive(other_ssrc), PacketRefused) and plain.counters.foreign == 2
