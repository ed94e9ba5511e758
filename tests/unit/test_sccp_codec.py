"""SCCP codec: round trips for every message, framing bounds, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.wire import sccp as s

SAMPLES: list[s.Message] = [
    s.KeepAlive(),
    s.Register("SEP001122334455", "10.1.2.3", device_type=30006, user_id=0, instance=1,
               max_streams=5, active_streams=1, protocol_version=5, phone_features=0x8000,
               max_conferences=2, active_conferences=0),
    s.IpPort(24000),
    s.KeypadButton(5, 1, 77),
    s.OffHook(1, 77),
    s.OnHook(1, 77),
    s.CapabilitiesRes((s.MediaCapability(4, 40), s.MediaCapability(0x19, 20, b"\x01" * 8)),
                      encryption_capable=True),
    s.OpenReceiveChannelAck(0, "10.1.2.3", 24000, 9, 77),
    s.Unregister(0),
    s.RegisterAck(30, "D/M/YA", 60, 5),
    s.StartTone(0x21, 0, 1, 77),
    s.StopTone(1, 77),
    s.SetLamp(9, 1, 2),
    s.SetSpeakerMode(1),
    s.StartMediaTransmission(
        conference_id=1, pass_thru_party_id=9, remote_ip="10.9.8.7", remote_port=30000,
        call_reference=77,
        encryption=s.EncryptionInfo(s.SrtpAlgorithm.AES_CM_128_HMAC_SHA1_80, b"K" * 16, b"S" * 14)),
    s.StopMediaTransmission(1, 9, 77, 0),
    s.CallInfo(calling_party_name="Alice", calling_party="1001", called_party="1002",
               line_instance=1, call_reference=77, call_security_status=3),
    s.DefineTimeDate(2024, 5, 3, 9, 12, 30, 15, 0, 1715257815),
    s.CapabilitiesReq(),
    s.RegisterReject("device not in database"),
    s.Reset(s.ResetType.RESTART),
    s.KeepAliveAck(),
    s.OpenReceiveChannel(
        conference_id=1, pass_thru_party_id=9, call_reference=77,
        encryption=s.EncryptionInfo(s.SrtpAlgorithm.AES_CM_128_HMAC_SHA1_32, b"k" * 16, b"s" * 14)),
    s.CloseReceiveChannel(1, 9, 77, 0),
    s.CallState(12, 1, 77),
    s.ActivateCallPlane(1),
    s.UnregisterAck(0),
    s.StartMediaTransmissionAck(1, 9, 77, "10.1.2.3", 24000, 0),
]


def test_samples_cover_every_message_type():
    # The set-up and call-control modules have their own samples (test_sccp_call_messages.py).
    base = {cls for cls in s.all_message_types() if cls.__module__ == s.__name__}
    assert {type(m) for m in SAMPLES} == base


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.name)
def test_round_trip(message):
    frame = message.serialize()
    length, version, message_id = struct.unpack_from("<III", frame)
    assert length + 8 == len(frame)
    assert version == s.BASIC_HEADER_VERSION
    assert message_id == message.MESSAGE_ID
    assert s.parse_frame(frame) == message


def test_register_layout_matches_basic_dissector_offsets():
    frame = s.Register("SEPABCDEF012345", "192.168.1.20", device_type=7).serialize()
    payload = frame[12:]
    assert payload[:16] == b"SEPABCDEF012345\0"
    assert payload[24:28] == bytes([192, 168, 1, 20])  # network order
    assert struct.unpack_from("<I", payload, 28)[0] == 7
    # Longer than 52 so the dissector shows the extension fields.
    assert struct.unpack_from("<I", frame)[0] > 52


def test_basic_36_byte_register_is_accepted():
    payload = s.Register("SEP1", "10.0.0.1").payload()[:36]
    msg = s.decode_message(0x0001, payload)
    assert msg.device_name == "SEP1" and msg.ip_address == "10.0.0.1"


def test_encryption_block_sits_right_after_call_reference():
    enc = s.EncryptionInfo(s.SrtpAlgorithm.AES_CM_128_HMAC_SHA1_80, bytes(range(16)), bytes(range(14)))
    smt = s.StartMediaTransmission(call_reference=0xAABBCCDD, encryption=enc).payload()
    at = smt.index(struct.pack("<I", 0xAABBCCDD)) + 4
    assert smt[at:at + 48] == enc.to_bytes()
    assert struct.unpack_from("<IHH", smt, at) == (2, 16, 14)
    orc = s.OpenReceiveChannel(call_reference=0x11223344, encryption=enc).payload()
    at = orc.index(struct.pack("<I", 0x11223344)) + 4
    assert orc[at:at + 48] == enc.to_bytes()


def test_enc5_media_keys_never_in_repr():
    enc = s.EncryptionInfo(2, b"SECRETKEYSECRETK", b"SALTSALTSALTSA")
    text = repr(s.StartMediaTransmission(encryption=enc))
    assert "SECRETKEY" not in text and "SALTSALT" not in text


def test_encryption_info_rejects_oversized_key_lengths():
    raw = bytearray(s.EncryptionInfo(2, b"k" * 16, b"s" * 14).to_bytes())
    struct.pack_into("<H", raw, 4, 17)
    with pytest.raises(s.SccpProtocolError, match="key length 17"):
        s.EncryptionInfo.from_bytes(bytes(raw))
    with pytest.raises(s.SccpProtocolError, match="exceed 16"):
        s.EncryptionInfo(6, b"k" * 32, b"").to_bytes()


def test_callinfo_security_status_bounds():
    payload = bytearray(s.CallInfo(call_security_status=2).payload())
    assert s.decode_message(0x008F, bytes(payload)).call_security_status == 2
    struct.pack_into("<I", payload, len(payload) - 8, 7)
    with pytest.raises(s.SccpProtocolError, match="call security status 7"):
        s.decode_message(0x008F, bytes(payload))


def test_callinfo_24_character_numbers_fill_their_field_without_a_nul():
    # The party number fields are 24 bytes: a 24-digit number fills one whole (no NUL after it)
    # and reads back whole, as the Wireshark dissector reads a fixed field (to its first NUL or
    # its end). One character more is refused with the field named, never cut or overflowed.
    number = "1" * 23 + "2"
    msg = s.CallInfo(calling_party=number, called_party="9" * 24, original_called_party=number)
    payload = msg.payload()
    assert payload[40:64] == number.encode()            # callingParty: 24 bytes, no NUL
    decoded = s.decode_message(0x008F, payload)
    assert (decoded.calling_party, decoded.called_party) == (number, "9" * 24)
    assert decoded.original_called_party == number and decoded.line_instance == 0
    # a shorter number still ends at its NUL, whatever follows it in the field
    raw = bytearray(payload)
    raw[40:64] = b"1001\0".ljust(24, b"x")
    assert s.decode_message(0x008F, bytes(raw)).calling_party == "1001"
    with pytest.raises(s.SccpProtocolError, match="calling_party: 25 bytes do not fit a 24-byte"):
        s.CallInfo(calling_party=number + "3").payload()
    raw[40:64] = b"1" * 23 + b"\xff"
    with pytest.raises(s.SccpProtocolError, match="non-ASCII"):
        s.decode_message(0x008F, bytes(raw))


def test_callinfo_40_character_names_fill_their_field_without_a_nul():
    # The party name fields are 40 bytes: a 40-character display name fills one whole (no NUL
    # after it) and reads back whole; a shorter one ends at its NUL; one character more is refused
    # with the field named.
    name = "N" * 39 + "e"
    msg = s.CallInfo(calling_party_name=name, called_party_name=name[::-1], calling_party="1001")
    payload = msg.payload()
    assert payload[:40] == name.encode()                 # callingPartyName: 40 bytes, no NUL
    assert payload[40:44] == b"1001"                    # callingParty right after it
    decoded = s.decode_message(0x008F, payload)
    assert (decoded.calling_party_name, decoded.called_party_name) == (name, name[::-1])
    assert decoded.calling_party == "1001"
    raw = bytearray(payload)
    raw[0:40] = b"Alice\0".ljust(40, b"x")
    assert s.decode_message(0x008F, bytes(raw)).calling_party_name == "Alice"
    with pytest.raises(s.SccpProtocolError, match="called_party_name: 41 bytes do not fit a 40-byte"):
        s.CallInfo(called_party_name=name + "x").payload()


def test_reset_type_must_be_reset_or_restart():
    with pytest.raises(s.SccpProtocolError, match="reset type 3"):
        s.decode_message(0x009F, struct.pack("<I", 3))


def test_capabilities_without_trailing_flag_mean_not_capable():
    payload = s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=True).payload()[:-4]
    assert s.decode_message(0x0010, payload).encryption_capable is False


def test_capabilities_count_is_bounded():
    with pytest.raises(s.SccpProtocolError, match="count 19 exceeds 18"):
        s.decode_message(0x0010, struct.pack("<I", 19) + bytes(19 * 16))
    with pytest.raises(s.SccpProtocolError, match="too short"):
        s.decode_message(0x0010, struct.pack("<I", 3) + bytes(16))


def test_unknown_message_is_surfaced_not_crash():
    frame = struct.pack("<III", 8, 0, 0x0999) + b"abcd"
    msg = s.parse_frame(frame)
    assert isinstance(msg, s.UnknownMessage)
    assert msg.message_id == 0x0999 and msg.raw == b"abcd"
    assert msg.serialize() == frame


def test_short_payload_gives_named_error():
    with pytest.raises(s.SccpProtocolError, match="StartMediaTransmission: payload too short"):
        s.decode_message(0x008A, bytes(40))


def test_non_ascii_device_name_refused():
    payload = bytearray(s.Register("SEP1").payload())
    payload[0] = 0xFF
    with pytest.raises(s.SccpProtocolError, match="non-ASCII"):
        s.decode_message(0x0001, bytes(payload))
    with pytest.raises(s.SccpProtocolError, match="do not fit"):
        s.Register("X" * 17).serialize()


def test_register_reject_reason_is_fitted_to_field():
    rej = s.RegisterReject.with_reason("é" + "x" * 100)
    assert len(rej.text) == 31 and s.parse_frame(rej.serialize()) == rej


# -- framer ---------------------------------------------------------------------------------------

def test_framer_reassembles_byte_by_byte():
    stream = b"".join(m.serialize() for m in SAMPLES)
    framer = s.SccpFramer()
    out = []
    for i in range(len(stream)):
        out += framer.feed(stream[i:i + 1])
    assert out == SAMPLES and framer.buffered == 0


def test_framer_rejects_oversized_length_and_stays_broken():
    framer = s.SccpFramer()
    with pytest.raises(s.SccpProtocolError, match="exceeds the 4096-byte limit"):
        framer.feed(struct.pack("<III", 100_000, 0, 1))
    with pytest.raises(s.SccpProtocolError):
        framer.feed(s.KeepAlive().serialize())


def test_framer_rejects_length_below_message_id():
    with pytest.raises(s.SccpProtocolError, match="smaller than the message id"):
        s.SccpFramer().feed(struct.pack("<III", 2, 0, 1))


def test_framer_buffer_is_bounded():
    framer = s.SccpFramer()
    framer.feed(struct.pack("<III", 4000, 0, 0x0999))  # a legal but incomplete frame
    with pytest.raises(s.SccpProtocolError):  # the zeros after it are no frame: a clean error
        framer.feed(bytes(s.MAX_BUFFER))
    with pytest.raises(s.SccpProtocolError):  # and the stream stays broken
        framer.feed(s.KeepAlive().serialize())


def test_framer_takes_a_read_larger_than_its_buffer():
    """One read may carry many whole messages (a phone's burst, or what queued in the socket while
    the server was busy): all of them come out, and what stays buffered is still bounded."""
    framer = s.SccpFramer()
    one = s.KeepAlive().serialize()
    burst = one * (3 * s.MAX_BUFFER // len(one) + 1)
    partial = struct.pack("<III", 4000, 0, 0x0999) + bytes(100)
    messages = framer.feed(burst + partial)
    assert len(messages) == len(burst) // len(one)
    assert all(isinstance(m, s.KeepAlive) for m in messages)
    assert framer.buffered == len(partial) <= s.MAX_BUFFER


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_framer_any_bytes_clean_error_or_messages(data):
    framer = s.SccpFramer()
    try:
        messages = framer.feed(data)
    except s.SccpProtocolError:
        return
    for message in messages:
        assert isinstance(message, s.Message)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(s.MESSAGE_TYPES)), st.binary(max_size=500))
def test_fuzz_each_parser(message_id, payload):
    try:
        message = s.decode_message(message_id, payload)
    except s.SccpProtocolError:
        return
    # Whatever parsed must serialise again and parse to the same value.
    assert s.parse_frame(message.serialize()) == message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLES), st.integers(0, 400), st.integers(0, 255))
def test_fuzz_mutated_valid_frames(message, index, value):
    frame = bytearray(message.serialize())
    frame[index % len(frame)] = value
    try:
        s.SccpFramer().feed(bytes(frame))
    except s.SccpProtocolError:
        pass
