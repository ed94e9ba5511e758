"""RTP codec (RFC 3550), G.711, packetiser and loss accounting, tone sources — pure, no I/O."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings, strategies as st

from ccmsec.media import g711, tones
from ccmsec.media.packetiser import Packetiser, SequenceTracker, SAMPLES_PER_FRAME
from ccmsec.media.rtp import MAX_PACKET, RtpError, RtpPacket, parse_rtp


def test_rtp_round_trip_with_csrcs_extension_and_padding():
    pkt = RtpPacket(0, 65535, 0xFFFFFFFF, 0x12345678, b"\x01" * 160, marker=True, csrcs=(1, 2),
                    extension=(0xBEDE, b"\xAA" * 8), padding=4)
    raw = pkt.to_bytes()
    assert raw[0] >> 6 == 2 and raw[0] & 0x0F == 2 and raw[0] & 0x30 == 0x30
    assert parse_rtp(raw) == pkt


def test_rtp_header_fields_on_the_wire():
    raw = RtpPacket(8, 0x0102, 0x03040506, 0x0708090A, b"xy").to_bytes()
    assert raw == bytes([0x80, 8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) + b"xy"


@pytest.mark.parametrize("data, words", [
    (b"", "shorter than the 12-byte"),
    (bytes([0x40]) + bytes(11), "version 1"),
    (bytes([0x83]) + bytes(11), "3 CSRCs"),
    (bytes([0x90]) + bytes(11), "no extension header"),
    (bytes([0x90]) + bytes(11) + b"\x00\x00\x00\x05", "runs past"),
    (bytes([0xA0]) + bytes(11) + b"\x00", "padding count 0"),
    (bytes([0xA0]) + bytes(11) + b"\x09", "padding count 9"),
    (bytes([0x80]) + bytes(MAX_PACKET), "exceeds"),
])
def test_rtp_bad_datagrams_are_clear_errors(data, words):
    with pytest.raises(RtpError, match=words):
        parse_rtp(data)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_rtp_parser_never_raises_anything_but_rtp_error(data):
    try:
        pkt = parse_rtp(data)
    except RtpError:
        return
    assert len(pkt.payload) <= len(data) - 12


def _pcm(samples):
    return struct.pack(f"<{len(samples)}h", *samples)


def test_ulaw_and_alaw_known_codes():
    # silence and full scale, from G.711's tables
    assert g711.ulaw_encode(_pcm([0, -1, 32767, -32768])) == bytes([0xFF, 0x7F, 0x80, 0x00])
    assert g711.alaw_encode(_pcm([0, -8, 32767, -32768])) == bytes([0xD5, 0x55, 0xAA, 0x2A])
    assert g711.ulaw_decode(bytes([0xFF, 0x80])) == _pcm([0, 32124])
    assert g711.alaw_decode(bytes([0xD5, 0xAA])) == _pcm([8, 32256])


@pytest.mark.parametrize("enc, dec", [(g711.ulaw_encode, g711.ulaw_decode),
                                      (g711.alaw_encode, g711.alaw_decode)])
def test_g711_round_trip_is_stable_and_close(enc, dec):
    # every code decodes and re-encodes to itself (µ-law's "negative zero" 0x7F becomes 0xFF);
    # companding error stays within one quantisation step
    codes = bytes(range(256))
    expected = codes.replace(b"\x7f", b"\xff") if enc is g711.ulaw_encode else codes
    assert enc(dec(codes)) == expected
    ramp = list(range(-32768, 32768, 97))
    back = struct.unpack(f"<{len(ramp)}h", dec(enc(_pcm(ramp))))
    for x, y in zip(ramp, back):
        assert abs(x - y) <= max(16, abs(x) / 16), (x, y)


def test_g711_rejects_odd_pcm():
    with pytest.raises(ValueError, match="even number"):
        g711.ulaw_encode(b"\x00")


def test_packetiser_sequence_timestamp_ssrc_and_marker():
    p = Packetiser(0, ssrc=7, sequence=65534, timestamp=0xFFFFFF00)
    pkts = [p.packet(bytes(160)) for _ in range(4)]
    assert [x.sequence for x in pkts] == [65534, 65535, 0, 1]
    assert [x.timestamp for x in pkts] == [0xFFFFFF00, 0xFFFFFFA0, 0x40, 0xE0]  # +160 per 20 ms, wraps
    assert {x.ssrc for x in pkts} == {7} and [x.marker for x in pkts] == [True, False, False, False]


def test_packetiser_initial_values_are_random():
    a, b = Packetiser(0), Packetiser(0)
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)


def test_tracker_counts_gaps_across_wrap_reorder_and_duplicates():
    t = SequenceTracker()
    for seq in [65530, 65531, 65533, 65535, 0, 2, 1]:  # 65532 and 65534 missing; 1 late
        t.update(seq)
    assert (t.expected, t.received, t.lost, t.out_of_order) == (9, 7, 2, 1)
    t.update(2)  # a duplicate counts as received (RFC 3550 A.3), so it hides one loss
    assert (t.received, t.lost) == (8, 1)
    t2 = SequenceTracker()
    for seq in [10, 11, 14, 15]:
        t2.update(seq)
    assert (t2.expected, t2.received, t2.lost) == (6, 4, 2)


def test_tracker_treats_a_big_jump_as_a_restart_not_as_loss():
    t = SequenceTracker()
    for seq in [100, 101, 40000, 40001]:
        t.update(seq)
    assert t.lost == 0 and t.restarts == 1


def _freq_energy(pcm: bytes, freq: float) -> float:
    s = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    re = sum(v * math.cos(2 * math.pi * freq * i / 8000) for i, v in enumerate(s))
    im = sum(v * math.sin(2 * math.pi * freq * i / 8000) for i, v in enumerate(s))
    return math.hypot(re, im) / len(s)


def test_tone_source_frames_carry_the_tone():
    src = tones.tone(1004)
    frame = src.frame()
    assert len(frame) == SAMPLES_PER_FRAME * 2
    assert _freq_energy(frame, 1004) > 20 * _freq_energy(frame, 400)


def test_announcement_changes_and_a_one_shot_source_ends_in_silence():
    ann = tones.announcement()
    frames = [ann.frame() for _ in range(70)]
    assert len(set(frames)) > 10
    one = tones.ToneSource([((440.0,), 40)], loop=False)
    first, second, third = one.frame(), one.frame(), one.frame()
    assert any(first) and one.finished and third == bytes(320)
