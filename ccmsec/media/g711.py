"""G.711 (ITU-T) µ-law and A-law companding between 16-bit linear PCM and 8-bit codes.

PCM here is always signed 16-bit little-endian, mono, 8 kHz (`s16le`). Both directions go through
tables built once at import: 65,536 entries to encode, 256 to decode.
"""

from __future__ import annotations

import array
import sys

SAMPLE_RATE = 8000
BYTES_PER_SAMPLE = 2

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _ulaw_encode_sample(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(-sample if sample < 0 else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = max(magnitude.bit_length() - 8, 0)   # segment: highest set bit among 7..14
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode_code(code: int) -> int:
    code = ~code & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return -magnitude if code & 0x80 else magnitude


def _alaw_encode_sample(sample: int) -> int:
    value = sample >> 3  # A-law works on 13 bits
    if value >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        value = -value - 1
    segment = max(value.bit_length() - 5, 0)  # segment ends 0x1F, 0x3F, … 0xFFF
    if segment >= 8:
        return 0x7F ^ mask
    code = segment << 4
    code |= (value >> 1 if segment < 2 else value >> segment) & 0x0F
    return code ^ mask


def _alaw_decode_code(code: int) -> int:
    code ^= 0x55
    value = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        value += 8
    else:
        value = (value + 0x108) << (segment - 1)
    return value if code & 0x80 else -value


def _tables(encode, decode) -> tuple[bytes, list[bytes]]:
    enc = bytes(encode(i - 65536 if i >= 32768 else i) for i in range(65536))
    dec = [decode(c).to_bytes(2, "little", signed=True) for c in range(256)]
    return enc, dec


_ULAW_ENC, _ULAW_DEC = _tables(_ulaw_encode_sample, _ulaw_decode_code)
_ALAW_ENC, _ALAW_DEC = _tables(_alaw_encode_sample, _alaw_decode_code)


def _samples(pcm: bytes) -> array.array:
    if len(pcm) % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {len(pcm)}")
    samples = array.array("H")  # unsigned view: indexes the 65,536-entry table directly
    samples.frombytes(pcm)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def ulaw_encode(pcm: bytes) -> bytes:
    return bytes(map(_ULAW_ENC.__getitem__, _samples(pcm)))


def ulaw_decode(codes: bytes) -> bytes:
    return b"".join(map(_ULAW_DEC.__getitem__, codes))


def alaw_encode(pcm: bytes) -> bytes:
    return bytes(map(_ALAW_ENC.__getitem__, _samples(pcm)))


def alaw_decode(codes: bytes) -> bytes:
    return b"".join(map(_ALAW_DEC.__getitem__, codes))


# RTP static payload types (RFC 3551) -> (encode, decode)
CODECS = {0: (ulaw_encode, ulaw_decode), 8: (alaw_encode, alaw_decode)}
CODEC_NAMES = {0: "PCMU", 8: "PCMA"}
