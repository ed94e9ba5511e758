"""The CTL Provider framing on TLS 2444 (ccmsec.wire.ctlprovider): round trips, bounds, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from ccmsec.formats.ctl import Role
from ccmsec.pki.ca import name, new_key, self_signed
from ccmsec.wire.ctlprovider import (
    MAX_BODY,
    MAX_ENTRIES,
    CertificateEntry,
    Certificates,
    ErrorCode,
    FrameReader,
    GetCertificates,
    ProviderClientSession,
    ProviderError,
    ProviderProtocolError,
    ProviderServerSession,
    encode,
)

DER = self_signed(name("callmanager"), new_key("ec256")).public_bytes(
    __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.DER)


def _entries() -> tuple[CertificateEntry, ...]:
    return (CertificateEntry(Role.CCM, "callmanager", "127.0.0.5", DER),
            CertificateEntry(Role.TFTP, "tftp-signer", "127.0.0.4", DER),
            CertificateEntry(Role.CAPF, "capf", None, DER))


@pytest.mark.parametrize("message", [
    GetCertificates("ccmsec-ctl-client"), GetCertificates(""),
    Certificates("ctl-provider", _entries()), Certificates("node", ()),
    ProviderError(ErrorCode.NOT_ACTIVATED, "not activated (CHK-1)"),
])
def test_round_trip_whole_and_byte_by_byte(message):
    frame = encode(message)
    assert FrameReader().feed(frame) == [message]
    reader = FrameReader()
    out = []
    for i in range(len(frame)):  # a TLS record boundary can fall anywhere
        out += reader.feed(frame[i:i + 1])
    assert out == [message] and reader.pending == 0


def test_two_frames_in_one_chunk():
    frames = encode(GetCertificates("a")) + encode(GetCertificates("b"))
    assert FrameReader().feed(frames) == [GetCertificates("a"), GetCertificates("b")]


@pytest.mark.parametrize("frame, problem", [
    (b"XXXX" + bytes(6), "bad magic"),
    (struct.pack(">4sBBI", b"CTLP", 9, 1, 0), "unsupported protocol version"),
    (struct.pack(">4sBBI", b"CTLP", 1, 1, MAX_BODY + 1), "over the"),
    (struct.pack(">4sBBI", b"CTLP", 1, 77, 0), "unknown message type"),
    (struct.pack(">4sBBI", b"CTLP", 1, 1, 4) + b"\x01\x00\x09x", "runs past the end"),
    (struct.pack(">4sBBI", b"CTLP", 1, 3, 4) + b"\x04\x00\x01\x63", "unknown error code"),
    (struct.pack(">4sBBI", b"CTLP", 1, 2, 3) + b"\x09\x00\x00", "unexpected tag"),
])
def test_malformed_frames_name_the_problem(frame, problem):
    with pytest.raises(ProviderProtocolError, match=problem):
        FrameReader().feed(frame)


def test_entry_fields_are_checked():
    good = encode(Certificates("s", _entries()[:1]))
    bad_role = good.replace(b"\x01\x00\x02\x00\x01", b"\x01\x00\x02\x00\x63", 1)
    with pytest.raises(ProviderProtocolError, match="unknown role 99"):
        FrameReader().feed(bad_role)
    ip_tlv = b"\x03\x00\x04\x7f\x00\x00\x05"
    short_ip = good.replace(ip_tlv, b"\x03\x00\x03\x7f\x00\x00", 1)
    short_ip = short_ip[:6] + (int.from_bytes(short_ip[6:10], "big") - 1).to_bytes(4, "big") + short_ip[10:]
    entry_len_at = short_ip.index(b"\x03", 10 + 3 + len("s") + 1)  # the T_ENTRY TLV
    length = int.from_bytes(short_ip[entry_len_at + 1:entry_len_at + 3], "big") - 1
    short_ip = short_ip[:entry_len_at + 1] + length.to_bytes(2, "big") + short_ip[entry_len_at + 3:]
    with pytest.raises(ProviderProtocolError, match="IPv4 address must be 4 bytes"):
        FrameReader().feed(short_ip)
    duplicate = good.replace(ip_tlv, b"\x02\x00\x04abc\x00", 1)
    with pytest.raises(ProviderProtocolError, match="DNS name appears 2 times"):
        FrameReader().feed(duplicate)


def test_too_many_entries_refused_both_ways():
    many = tuple(_entries()[0] for _ in range(MAX_ENTRIES + 1))
    with pytest.raises(ProviderProtocolError, match="more than"):
        encode(Certificates("s", many))


def test_server_session_refuses_answers_from_a_client_and_large_requests():
    server = ProviderServerSession()
    with pytest.raises(ProviderProtocolError, match="may only send GetCertificates"):
        server.receive(encode(ProviderError(ErrorCode.BAD_REQUEST, "x")))
    with pytest.raises(ProviderProtocolError, match="over the 4096-byte limit"):
        ProviderServerSession().receive(struct.pack(">4sBBI", b"CTLP", 1, 1, 5000))


def test_client_session_gets_the_answer():
    client = ProviderClientSession()
    assert FrameReader().feed(client.request()) == [GetCertificates("ccmsec-ctl-client")]
    answer = ProviderServerSession.answer("ctl-provider", list(_entries()))
    assert client.receive(answer[:10]) is None
    assert client.receive(answer[10:]) == Certificates("ctl-provider", _entries())
    refused = ProviderClientSession()
    assert refused.receive(ProviderServerSession.refuse(ErrorCode.NOT_ACTIVATED, "no")) == \
        ProviderError(ErrorCode.NOT_ACTIVATED, "no")


@settings(max_examples=400, deadline=200)
@given(st.binary(max_size=600))
def test_fuzz_any_bytes_give_messages_or_a_clean_error(data):
    reader = FrameReader()
    try:
        reader.feed(data)
    except ProviderProtocolError:
        pass


@settings(max_examples=300, deadline=200)
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_fuzz_mutated_valid_frames(position, junk):
    frame = bytearray(encode(Certificates("ctl-provider", _entries())))
    position %= len(frame)
    frame[position:position + len(junk)] = junk
    try:
        FrameReader().feed(bytes(frame))
    except ProviderProtocolError:
        pass
