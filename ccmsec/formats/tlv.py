"""The TLV codec of the trust-list and signed-file formats.

Each item is `tag (1 byte) | length (uint16 BE) | value`. One exception: the padding tag 13 is a
lone 0x0D byte with no length; it only occurs where the caller says padding is allowed.
Sans-IO: bytes in, `Tlv` items out. Every read is bounded by an explicit end offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

PADDING_TAG = 13
MAX_VALUE_LENGTH = 0xFFFF
_HEAD = struct.Struct(">BH")


class TlvError(ValueError):
    """Malformed TLV data (truncated item, length past the end, bad fixed-size value)."""


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    value: bytes
    offset: int  # where the item (its tag byte) starts in the buffer it was read from
    padding: bool = False  # a lone padding byte: no length field, no value

    @property
    def end(self) -> int:
        """Offset just past this item."""
        return self.offset + (1 if self.padding else 3 + len(self.value))


def encode(tag: int, value: bytes) -> bytes:
    """One TLV item. Refuses values that do not fit the 16-bit length."""
    if not 0 <= tag <= 0xFF:
        raise TlvError(f"tag {tag} does not fit in one byte")
    if len(value) > MAX_VALUE_LENGTH:
        raise TlvError(f"value for tag {tag} is {len(value)} bytes, "
                       f"over the {MAX_VALUE_LENGTH} limit")
    return _HEAD.pack(tag, len(value)) + value


def encode_u8(tag: int, number: int) -> bytes:
    return encode(tag, _fixed(number, 1, tag))


def encode_u16(tag: int, number: int) -> bytes:
    return encode(tag, _fixed(number, 2, tag))


def encode_u32(tag: int, number: int) -> bytes:
    return encode(tag, _fixed(number, 4, tag))


def encode_text(tag: int, text: str) -> bytes:
    """A NUL-terminated UTF-8 string (the length counts the NUL)."""
    raw = text.encode("utf-8")
    if b"\x00" in raw:
        raise TlvError(f"text for tag {tag} contains a NUL byte")
    return encode(tag, raw + b"\x00")


def _fixed(number: int, size: int, tag: int) -> bytes:
    if not 0 <= number < 1 << (8 * size):
        raise TlvError(f"value {number} for tag {tag} does not fit in {size} byte(s)")
    return number.to_bytes(size, "big")


def read_tlv(data: bytes, offset: int, end: int, *, allow_padding: bool = False) -> Tlv:
    """Read the item starting at `offset`; it must end at or before `end`."""
    end = min(end, len(data))
    if offset >= end:
        raise TlvError(f"expected a TLV at offset {offset}, found the end of the data")
    tag = data[offset]
    if allow_padding and tag == PADDING_TAG:
        return Tlv(PADDING_TAG, b"", offset, True)
    if offset + 3 > end:
        raise TlvError(f"TLV tag {tag} at offset {offset}: truncated length field")
    _, length = _HEAD.unpack_from(data, offset)
    start = offset + 3
    if start + length > end:
        raise TlvError(
            f"TLV tag {tag} at offset {offset}: length {length} runs past the end "
            f"({end - start} bytes left)"
        )
    return Tlv(tag, bytes(data[start:start + length]), offset)


def iter_tlvs(data: bytes, start: int = 0, end: int | None = None, *,
              allow_padding: bool = False) -> Iterator[Tlv]:
    """Every item in data[start:end]; the items must fill the range exactly."""
    end = len(data) if end is None else min(end, len(data))
    offset = start
    while offset < end:
        item = read_tlv(data, offset, end, allow_padding=allow_padding)
        yield item
        offset = item.end


def decode_uint(item: Tlv, size: int) -> int:
    """The value of a fixed-size big-endian unsigned integer item."""
    if len(item.value) != size:
        raise TlvError(f"tag {item.tag}: expected {size} byte(s), got {len(item.value)}")
    return int.from_bytes(item.value, "big")


def decode_text(item: Tlv) -> str:
    """A NUL-terminated UTF-8 string value (exactly one NUL, at the end)."""
    value = item.value
    if not value or value[-1] != 0:
        raise TlvError(f"tag {item.tag}: text is not NUL-terminated")
    if 0 in value[:-1]:
        raise TlvError(f"tag {item.tag}: text contains an embedded NUL byte")
    try:
        return value[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TlvError(f"tag {item.tag}: text is not valid UTF-8 ({exc.reason})") from None
