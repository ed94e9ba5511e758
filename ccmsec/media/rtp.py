"""RTP fixed header (RFC 3550 §5.1) — a bounded codec, no I/O.

    0                   1                   2                   3
   |V=2|P|X|  CC   |M|     PT      |       sequence number         |
   |                           timestamp                           |
   |           synchronization source (SSRC) identifier            |
   |            contributing source (CSRC) identifiers (CC × 32)   |
   [ header extension: 16-bit profile id, 16-bit length in words, data ]
   payload [ padding, last octet = padding count ]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size  # 12
# A UDP datagram on Ethernet; nothing we send or accept is larger.
MAX_PACKET = 1500

PT_PCMU = 0   # G.711 µ-law (RFC 3551)
PT_PCMA = 8   # G.711 A-law


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet (the reason says which field)."""


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = field(default=b"", repr=False)
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile, data); data a multiple of 4 bytes
    padding: int = 0                            # padding octets to add / that were removed

    def to_bytes(self) -> bytes:
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} outside 0..127")
        if not 0 <= self.sequence <= 0xFFFF:
            raise RtpError(f"sequence number {self.sequence} outside 0..65535")
        if not 0 <= self.timestamp <= 0xFFFFFFFF or not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise RtpError("timestamp and SSRC are 32-bit unsigned")
        if len(self.csrcs) > 15:
            raise RtpError(f"{len(self.csrcs)} CSRCs; at most 15")
        if not 0 <= self.padding <= 255:
            raise RtpError(f"padding {self.padding} outside 0..255")
        first = (RTP_VERSION << 6) | (0x20 if self.padding else 0) | (0x10 if self.extension else 0) | len(self.csrcs)
        out = bytearray(HEADER.pack(first, (0x80 if self.marker else 0) | self.payload_type,
                                    self.sequence, self.timestamp, self.ssrc))
        for csrc in self.csrcs:
            out += struct.pack("!I", csrc)
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4 or len(data) > 0xFFFF * 4:
                raise RtpError("header extension data must be whole 32-bit words")
            out += struct.pack("!HH", profile, len(data) // 4) + data
        out += self.payload
        if self.padding:
            out += bytes(self.padding - 1) + bytes([self.padding])
        if len(out) > MAX_PACKET:
            raise RtpError(f"packet of {len(out)} bytes exceeds {MAX_PACKET}")
        return bytes(out)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one datagram; every length is checked against the bytes actually present."""
    if len(data) > MAX_PACKET:
        raise RtpError(f"datagram of {len(data)} bytes exceeds {MAX_PACKET}")
    if len(data) < HEADER_SIZE:
        raise RtpError(f"datagram of {len(data)} bytes is shorter than the 12-byte RTP header")
    first, second, seq, ts, ssrc = HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    cc = first & 0x0F
    offset = HEADER_SIZE + 4 * cc
    if len(data) < offset:
        raise RtpError(f"header announces {cc} CSRCs but the datagram ends at byte {len(data)}")
    csrcs = struct.unpack_from(f"!{cc}I", data, HEADER_SIZE) if cc else ()
    extension = None
    if first & 0x10:
        if len(data) < offset + 4:
            raise RtpError("header extension flag set but no extension header")
        profile, words = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + 4 * words
        if len(data) < end:
            raise RtpError(f"header extension of {words} words runs past the datagram")
        extension = (profile, bytes(data[offset + 4:end]))
        offset = end
    end = len(data)
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or end - padding < offset:
            raise RtpError(f"padding count {padding} is invalid for this datagram")
        end -= padding
    return RtpPacket(payload_type=second & 0x7F, sequence=seq, timestamp=ts, ssrc=ssrc,
                     payload=bytes(data[offset:end]), marker=bool(second & 0x80),
                     csrcs=tuple(csrcs), extension=extension, padding=padding)
