"""The TLV codec of trust lists and signed files."""

import pytest
from hypothesis import given, settings, strategies as st

from ccmsec.formats import tlv
from ccmsec.formats.tlv import PADDING_TAG, TlvError


def test_encode_is_tag_then_big_endian_length_then_value():
    assert tlv.encode(14, b"CTLFile.tlv\x00") == b"\x0e\x00\x0cCTLFile.tlv\x00"
    assert tlv.encode_u16(4, 3) == b"\x04\x00\x02\x00\x03"
    assert tlv.encode_u32(15, 0x01020304) == b"\x0f\x00\x04\x01\x02\x03\x04"
    assert tlv.encode_text(2, "") == b"\x02\x00\x01\x00"


def test_read_round_trip_and_offsets():
    data = tlv.encode(1, b"\x01\x02") + tlv.encode(9, b"x" * 300)
    items = list(tlv.iter_tlvs(data))
    assert [(i.tag, i.value, i.offset) for i in items] == [(1, b"\x01\x02", 0), (9, b"x" * 300, 5)]
    assert items[-1].end == len(data)


def test_padding_is_a_lone_byte_only_where_allowed():
    data = tlv.encode(15, b"abcd") + bytes([PADDING_TAG]) * 3
    items = list(tlv.iter_tlvs(data, allow_padding=True))
    assert [i.padding for i in items] == [False, True, True, True]
    assert items[-1].end == len(data)
    # Where padding is not allowed, 0x0D is an ordinary tag whose length runs past the end.
    with pytest.raises(TlvError, match="tag 13 .* runs past the end"):
        list(tlv.iter_tlvs(data))


def test_length_past_the_end_is_a_clear_error():
    data = b"\x0c\x01\x00" + b"\x00" * 10
    with pytest.raises(TlvError, match=r"length 256 runs past the end \(10 bytes left\)"):
        tlv.read_tlv(data, 0, len(data))


def test_truncated_length_field_is_a_clear_error():
    with pytest.raises(TlvError, match="truncated length field"):
        tlv.read_tlv(b"\x01\x00", 0, 2)


def test_read_is_bounded_by_the_given_end_not_the_buffer():
    data = tlv.encode(3, b"abcdef")
    with pytest.raises(TlvError, match="runs past the end"):
        tlv.read_tlv(data, 0, 5)


def test_value_over_16_bits_is_refused():
    with pytest.raises(TlvError, match="over the 65535 limit"):
        tlv.encode(9, b"\x00" * 65536)
    with pytest.raises(TlvError, match="does not fit in 2 byte"):
        tlv.encode_u16(4, 70000)


@pytest.mark.parametrize("value, problem", [
    (b"abc", "not NUL-terminated"),
    (b"", "not NUL-terminated"),
    (b"a\x00b\x00", "embedded NUL"),
    (b"\xff\xfe\x00", "not valid UTF-8"),
])
def test_text_values_are_checked(value, problem):
    with pytest.raises(TlvError, match=problem):
        tlv.decode_text(tlv.Tlv(4, value, 0))


def test_fixed_size_values_are_checked():
    with pytest.raises(TlvError, match="expected 2 byte"):
        tlv.decode_uint(tlv.Tlv(4, b"\x00", 0), 2)


def test_text_with_nul_is_refused_when_encoding():
    with pytest.raises(TlvError, match="contains a NUL"):
        tlv.encode_text(3, "a\x00b")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_any_bytes_give_items_or_a_tlv_error(data, allow_padding):
    try:
        items = list(tlv.iter_tlvs(data, allow_padding=allow_padding))
    except TlvError:
        return
    # Items tile the input exactly.
    offset = 0
    for item in items:
        assert item.offset == offset
        offset = item.end
    assert offset == len(data)
