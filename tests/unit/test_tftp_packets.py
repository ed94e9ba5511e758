"""TFTP packet codec and option negotiation (RFC 1350, 2347, 2348, 2349, 7440)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.wire import tftp as t


def test_request_round_trip_with_options():
    raw = t.encode_rrq("SEP001122334455.cnf.xml", "octet", {"blksize": "1428", "tsize": "0"})
    packet = t.parse_packet(raw)
    assert packet == t.Request(t.OP_RRQ, "SEP001122334455.cnf.xml", "octet", {"blksize": "1428", "tsize": "0"})


def test_option_names_and_mode_are_case_insensitive():
    raw = struct.pack("!H", t.OP_RRQ) + b"f\0OCTET\0BlkSize\x00512\x00"
    packet = t.parse_packet(raw)
    assert packet.mode == "octet" and packet.options == {"blksize": "512"}


@pytest.mark.parametrize(
    "packet",
    [t.Data(7, b"abc"), t.Data(0, b""), t.Ack(65535), t.Error(1, "file not found"), t.OAck({"blksize": "8"})],
)
def test_round_trip(packet):
    if isinstance(packet, t.Data):
        raw = t.encode_data(packet.block, packet.payload)
    elif isinstance(packet, t.Ack):
        raw = t.encode_ack(packet.block)
    elif isinstance(packet, t.Error):
        raw = t.encode_error(packet.code, packet.message)
    else:
        raw = t.encode_oack(packet.options)
    assert t.parse_packet(raw) == packet


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"", "shorter"),
        (b"\x00\x01ab", "NUL"),
        (b"\x00\x09\x00\x00", "unknown opcode 9"),
        (b"\x00\x00\x00\x00", "unknown opcode 0"),
        (b"\x00\x04\x00\x01\x00", "ACK must be 4 bytes"),
        (b"\x00\x01file\0", "missing transfer mode"),
        (b"\x00\x01file\0mail\0", "unsupported transfer mode"),
        (b"\x00\x01\0octet\0", "empty file name"),
        (b"\x00\x01f\0octet\0blksize\0", "option name without a value"),
        (b"\x00\x01f\0octet\0blksize\x00512\0BLKSIZE\x00512\0", "given twice"),
        (b"\x00\x01f\xff\0octet\0", "not ASCII"),
        (b"\x00\x03\x00\x01" + b"x" * (t.MAX_BLKSIZE + 1), "exceeds the largest block size"),
        (b"\x00\x01" + b"a" * 300 + b"\0octet\0", "file name longer than 255"),
        (b"\x00\x01" + b"a" * 600 + b"\0octet\0", "longer than 512"),
    ],
)
def test_malformed_packets_raise_specific_error(raw, needle):
    with pytest.raises(t.TftpPacketError, match=needle):
        t.parse_packet(raw)


def test_too_many_options_refused():
    opts = b"".join(b"o%d\x001\0" % i for i in range(t.MAX_OPTIONS + 1))
    with pytest.raises(t.TftpPacketError, match="more than 16 options"):
        t.parse_packet(b"\x00\x01f\0octet\0" + opts)


def test_over_long_name_maps_to_access_violation():
    with pytest.raises(t.TftpPacketError) as info:
        t.parse_packet(b"\x00\x01" + b"a" * 300 + b"\0octet\0")
    assert info.value.error_code == t.ERR_ACCESS_VIOLATION


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("../etc/passwd", t.ERR_ACCESS_VIOLATION),
        ("a/../../b", t.ERR_ACCESS_VIOLATION),
        ("a\\..\\b", t.ERR_ACCESS_VIOLATION),
        ("/etc/passwd", t.ERR_ACCESS_VIOLATION),
        ("\\windows", t.ERR_ACCESS_VIOLATION),
        ("C:boot.ini", t.ERR_ACCESS_VIOLATION),
        ("a\0b", t.ERR_ACCESS_VIOLATION),
        ("a" * 256, t.ERR_ACCESS_VIOLATION),
        ("", t.ERR_FILE_NOT_FOUND),
    ],
)
def test_check_filename_refuses_escapes(name, code):
    with pytest.raises(t.TftpError) as info:
        t.check_filename(name)
    assert info.value.code == code


@pytest.mark.parametrize("name", ["SEP001122334455.cnf.xml", "CTLFile.tlv", "i18n/English_United_States/a.xml", "a..b"])
def test_check_filename_accepts_plain_names(name):
    t.check_filename(name)


# --- option negotiation matrix --------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expect_ack", "blksize", "windowsize", "timeout"),
    [
        ({}, {}, 512, 1, None),
        ({"blksize": "1428"}, {"blksize": "1428"}, 1428, 1, None),
        ({"blksize": "8"}, {"blksize": "8"}, 8, 1, None),
        ({"blksize": "65464"}, {"blksize": "65464"}, 65464, 1, None),
        ({"blksize": "7"}, {}, 512, 1, None),  # below RFC 2348 range: ignored
        ({"blksize": "65465"}, {}, 512, 1, None),  # above range: ignored
        ({"blksize": "abc"}, {}, 512, 1, None),
        ({"blksize": "-5"}, {}, 512, 1, None),
        ({"tsize": "0"}, {"tsize": "1000"}, 512, 1, None),  # server returns the real size
        ({"tsize": "x"}, {}, 512, 1, None),
        ({"timeout": "3"}, {"timeout": "3"}, 512, 1, 3.0),
        ({"timeout": "0"}, {}, 512, 1, None),
        ({"timeout": "256"}, {}, 512, 1, None),
        ({"timeout": "10"}, {"timeout": "10"}, 512, 1, 10.0),  # the server's maximum
        ({"timeout": "11"}, {}, 512, 1, None),  # above it: ignored, never capped (RFC 2349 echo)
        ({"timeout": "255"}, {}, 512, 1, None),
        ({"windowsize": "4"}, {"windowsize": "4"}, 512, 4, None),
        ({"windowsize": "0"}, {}, 512, 1, None),
        ({"windowsize": "65536"}, {}, 512, 1, None),
        ({"windowsize": "1000"}, {"windowsize": "64"}, 512, 64, None),  # capped at the server max
        ({"multicast": ""}, {}, 512, 1, None),  # unknown options ignored
        (
            {"blksize": "1024", "tsize": "0", "timeout": "2", "windowsize": "8", "foo": "bar"},
            {"blksize": "1024", "tsize": "1000", "timeout": "2", "windowsize": "8"},
            1024, 8, 2.0,
        ),
    ],
)
def test_option_negotiation_matrix(requested, expect_ack, blksize, windowsize, timeout):
    agreed = t.negotiate(requested, 1000, max_windowsize=64)
    assert agreed.acknowledged == expect_ack
    assert (agreed.blksize, agreed.windowsize, agreed.timeout) == (blksize, windowsize, timeout)


def test_blksize_above_server_max_is_answered_with_the_max():
    agreed = t.negotiate({"blksize": "9000"}, 10, max_blksize=1468)
    assert agreed.blksize == 1468 and agreed.acknowledged == {"blksize": "1468"}


def test_netascii_round_trip():
    data = b"a\nb\rc\r\nd"
    assert t.netascii_encode(data) == b"a\r\nb\r\0c\r\0\r\nd"
    assert t.netascii_decode(t.netascii_encode(data)) == data


# --- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_parser_raises_only_packet_errors(raw):
    try:
        t.parse_packet(raw)
    except t.TftpPacketError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 2, 3, 4, 5, 6]),
    st.lists(st.binary(max_size=40), max_size=8),
)
def test_fuzz_structured_requests(opcode, parts):
    raw = struct.pack("!H", opcode) + b"".join(p + b"\0" for p in parts)
    try:
        t.parse_packet(raw)
    except t.TftpPacketError:
        pass
