"""CAPF frame codec: the frame and element layout, value codecs and a streaming reader.

Frame: `0x55`, command (1 byte), session id (uint32 BE), body length (uint16 BE), then elements as
TLVs (tag 1 byte, length uint16 BE). Every length is bounded before anything is buffered; any
malformed input raises `CapfProtocolError` carrying the reason code (7, invalid element) a
session ends with.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Iterable

PROTOCOL_ID = 0x55
PROTOCOL_VERSION = 3
HEADER = struct.Struct(">BBIH")
HEADER_SIZE = HEADER.size  # 8
ELEMENT_HEADER = struct.Struct(">BH")

# Bounds. An authentication response is the largest frame: a certificate (RSA-4096 ≈ 1.5 KiB),
# two signatures (≤ 512 bytes each) and opaque SUDI data (another certificate and signatures).
# 8 KiB leaves room while keeping a hostile peer from making us buffer 64 KiB per frame.
MAX_BODY = 8192
MAX_ELEMENTS = 16
MAX_NAME = 64
MAX_PASSWORD = 64
MAX_REASON_INFO = 256
MAX_RETRY_DELAY = 7 * 24 * 3600  # a week: anything longer is a server error, not a schedule


class Command(enum.IntEnum):
    AUTH_REQUEST = 1
    AUTH_RESPONSE = 2
    KEY_GEN_REQUEST = 3
    KEY_GEN_RESPONSE = 4
    STORE_CERT_REQUEST = 9
    STORE_CERT_RESPONSE = 10
    FETCH_CERT_REQUEST = 11
    FETCH_CERT_RESPONSE = 12
    DELETE_CERT_REQUEST = 13
    DELETE_CERT_RESPONSE = 14
    END_SESSION = 15
    RETRY_LATER = 16
    REQUEST_IN_PROGRESS = 17
    STATUS_REQUEST = 18
    STATUS_RESPONSE = 19
    ABORT_REQUEST = 20
    ABORT_RESPONSE = 21
    SIGN_CERT_REQUEST = 22
    SIGN_CERT_RESPONSE = 23


class Element(enum.IntEnum):
    REASON = 1
    REASON_INFO = 2
    CERT_TYPE = 3
    CERTIFICATE = 4
    CERT_ID = 5
    SIGNED_DATA = 6  # SHA-1 signature, bare
    VERSION = 7
    AUTH_TYPE = 8
    PUBLIC_KEY = 9
    KEY_SIZE = 10
    PASSWORD = 11
    RETRY_DELAY = 12
    DEVICE_NAME = 13
    SUDI_DATA = 16  # sent by newer phones; opaque to us
    KEY_TYPE = 17
    CURVE = 18
    DIGEST_TYPE = 19
    SIGNED_DATA_SHA2 = 20  # uint8 hash | uint16 length | signature


class Reason(enum.IntEnum):
    NO_ACTION = 0
    OK = 1
    INVALID_ELEMENT = 7
    UNKNOWN_DEVICE = 9


class AuthType(enum.IntEnum):
    NONE = 0
    PASSWORD = 1
    NO_PASSWORD = 2
    LSC = 3
    MIC = 4


class CertType(enum.IntEnum):
    LSC = 1
    MIC = 2


class KeyType(enum.IntEnum):
    RSA = 0
    EC = 1


class Curve(enum.IntEnum):
    P256 = 0
    P384 = 1
    P521 = 2


class HashAlgorithm(enum.IntEnum):
    """The hash named in front of a SIGNED_DATA_SHA2 signature."""

    SHA1 = 1
    SHA256 = 2
    SHA512 = 3


# Fixed value sizes; any other length for these tags is an invalid element.
_FIXED_SIZE = {
    Element.REASON: 1, Element.CERT_TYPE: 1, Element.VERSION: 1, Element.AUTH_TYPE: 1,
    Element.KEY_SIZE: 2, Element.KEY_TYPE: 1, Element.CURVE: 1, Element.DIGEST_TYPE: 1,
}
_ENUM_VALUE = {
    Element.CERT_TYPE: CertType, Element.AUTH_TYPE: AuthType, Element.KEY_TYPE: KeyType,
    Element.CURVE: Curve,
}
REQUIRED: dict[Command, frozenset[Element]] = {
    Command.AUTH_REQUEST: frozenset({Element.VERSION, Element.AUTH_TYPE}),
    Command.AUTH_RESPONSE: frozenset({Element.VERSION, Element.DEVICE_NAME}),
    Command.KEY_GEN_REQUEST: frozenset({Element.KEY_TYPE}),
    Command.KEY_GEN_RESPONSE: frozenset({Element.PUBLIC_KEY}),
    Command.STORE_CERT_REQUEST: frozenset({Element.CERT_TYPE, Element.CERTIFICATE}),
    Command.STORE_CERT_RESPONSE: frozenset({Element.REASON}),
    # A fetch response carries the certificate, or a reason saying why not (a phone with none).
    Command.DELETE_CERT_RESPONSE: frozenset({Element.REASON}),
    Command.END_SESSION: frozenset({Element.REASON}),
    Command.RETRY_LATER: frozenset({Element.RETRY_DELAY}),
    Command.SIGN_CERT_REQUEST: frozenset({Element.DEVICE_NAME}),
    Command.SIGN_CERT_RESPONSE: frozenset({Element.REASON}),
}


class CapfProtocolError(ValueError):
    """Bad CAPF input; `reason` is the CAPF reason code to end the session with."""

    def __init__(self, message: str, reason: int = Reason.INVALID_ELEMENT):
        super().__init__(message)
        self.reason = int(reason)


@dataclass(frozen=True)
class Frame:
    command: Command
    session_id: int
    elements: dict[Element, bytes] = field(default_factory=dict)

    def has(self, tag: Element) -> bool:
        return tag in self.elements

    def raw(self, tag: Element) -> bytes:
        try:
            return self.elements[tag]
        except KeyError:
            raise CapfProtocolError(f"{self.command.name}: missing element {tag.name}") from None

    def u8(self, tag: Element) -> int:
        return self.raw(tag)[0]

    def u16(self, tag: Element) -> int:
        return int.from_bytes(self.raw(tag), "big")

    def text(self, tag: Element) -> str:
        return decode_cstring(self.raw(tag), tag)

    def certificate(self) -> tuple[CertType, bytes]:
        return decode_certificate_element(self.raw(Element.CERTIFICATE))

    def encode(self) -> bytes:
        return encode_frame(self.command, self.session_id, self.elements.items())


def encode_frame(command: int, session_id: int, elements: Iterable[tuple[int, bytes]]) -> bytes:
    body = bytearray()
    count = 0
    for tag, value in elements:
        if len(value) > 0xFFFF:
            raise CapfProtocolError(f"element {tag} too long to encode ({len(value)} bytes)")
        body += ELEMENT_HEADER.pack(int(tag), len(value)) + value
        count += 1
    if len(body) > MAX_BODY or count > MAX_ELEMENTS:
        raise CapfProtocolError(f"frame too large to encode ({len(body)} bytes, {count} elements)")
    if not 0 <= session_id <= 0xFFFFFFFF:
        raise CapfProtocolError(f"session id out of range: {session_id}")
    return HEADER.pack(PROTOCOL_ID, int(command), session_id, len(body)) + bytes(body)


def parse_header(data: bytes) -> tuple[Command, int, int]:
    """(command, session id, body length) of the 8 header bytes; refused before any body."""
    proto, command, session_id, length = HEADER.unpack_from(data)
    if proto != PROTOCOL_ID:
        raise CapfProtocolError(f"not a CAPF frame: protocol id 0x{proto:02x}, expected 0x55")
    try:
        cmd = Command(command)
    except ValueError:
        raise CapfProtocolError(f"unknown CAPF command {command}") from None
    if length > MAX_BODY:
        raise CapfProtocolError(f"frame body of {length} bytes exceeds the {MAX_BODY}-byte cap")
    return cmd, session_id, length


def _parse_elements(command: Command, body: bytes) -> dict[Element, bytes]:
    elements: dict[Element, bytes] = {}
    pos = 0
    while pos < len(body):
        if len(elements) >= MAX_ELEMENTS:
            raise CapfProtocolError(f"{command.name}: more than {MAX_ELEMENTS} elements")
        if len(body) - pos < ELEMENT_HEADER.size:
            raise CapfProtocolError(f"{command.name}: truncated element header at offset {pos}")
        tag_num, length = ELEMENT_HEADER.unpack_from(body, pos)
        pos += ELEMENT_HEADER.size
        if length > len(body) - pos:
            raise CapfProtocolError(
                f"{command.name}: element {tag_num} claims {length} bytes, "
                f"only {len(body) - pos} left in the frame"
            )
        try:
            tag = Element(tag_num)
        except ValueError:
            raise CapfProtocolError(f"{command.name}: unknown element tag {tag_num}") from None
        if tag in elements:
            raise CapfProtocolError(f"{command.name}: duplicate element {tag.name}")
        value = bytes(body[pos:pos + length])
        pos += length
        _check_value(command, tag, value)
        elements[tag] = value
    missing = REQUIRED.get(command, frozenset()) - elements.keys()
    if missing:
        names = ", ".join(sorted(t.name for t in missing))
        raise CapfProtocolError(f"{command.name}: missing required element(s) {names}")
    return elements


def _check_value(command: Command, tag: Element, value: bytes) -> None:
    size = _FIXED_SIZE.get(tag)
    if size is not None and len(value) != size:
        raise CapfProtocolError(f"{command.name}: element {tag.name} must be {size} byte(s), got {len(value)}")
    enum_type = _ENUM_VALUE.get(tag)
    if enum_type is not None:
        try:
            enum_type(value[0])
        except ValueError:
            raise CapfProtocolError(f"{command.name}: invalid {tag.name} value {value[0]}") from None
    if tag in (Element.DEVICE_NAME, Element.PASSWORD):
        decode_cstring(value, tag)
    elif tag is Element.CERTIFICATE:
        decode_certificate_element(value)
    elif tag is Element.REASON_INFO and len(value) > MAX_REASON_INFO:
        raise CapfProtocolError(f"{command.name}: REASON_INFO longer than {MAX_REASON_INFO} bytes")
    elif tag is Element.RETRY_DELAY:
        decode_retry_delay(value)
    elif tag is Element.SIGNED_DATA_SHA2:
        decode_signed_data_sha2(value)


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame; trailing or missing bytes are errors."""
    if len(data) < HEADER_SIZE:
        raise CapfProtocolError(f"truncated CAPF header: {len(data)} of {HEADER_SIZE} bytes")
    command, session_id, length = parse_header(data)
    if len(data) != HEADER_SIZE + length:
        raise CapfProtocolError(
            f"CAPF frame length mismatch: header says {length} body bytes, got {len(data) - HEADER_SIZE}"
        )
    return Frame(command, session_id, _parse_elements(command, data[HEADER_SIZE:]))


class FrameReader:
    """Streaming decoder: feed arbitrary chunks, get whole frames. Buffers at most one frame."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buf += chunk
        frames: list[Frame] = []
        while len(self._buf) >= HEADER_SIZE:
            # The header is validated before the body arrives, so the buffer never exceeds
            # HEADER_SIZE + MAX_BODY plus one read's worth.
            _cmd, _sid, length = parse_header(bytes(self._buf[:HEADER_SIZE]))
            end = HEADER_SIZE + length
            if len(self._buf) < end:
                break
            frames.append(decode_frame(bytes(self._buf[:end])))
            del self._buf[:end]
        return frames

    def at_eof(self) -> None:
        """The stream closed: a half-received frame is an error, never silently dropped."""
        if self._buf:
            raise CapfProtocolError(f"stream ended inside a CAPF frame ({len(self._buf)} bytes pending)")


# ---------------------------------------------------------------------------------------------
# Element value codecs


def u8(value: int) -> bytes:
    return bytes([int(value)])


def u16(value: int) -> bytes:
    return int(value).to_bytes(2, "big")


def encode_cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


def decode_cstring(value: bytes, tag: Element) -> str:
    """A NUL-terminated text element. PASSWORD may be empty (a lone NUL): standard clients send
    one when they have nothing to prove; a device name never is."""
    limit = MAX_NAME if tag is Element.DEVICE_NAME else MAX_PASSWORD
    if not value or value[-1] != 0:
        raise CapfProtocolError(f"{tag.name} is not NUL-terminated")
    raw = value[:-1]
    least = 0 if tag is Element.PASSWORD else 1
    if not least <= len(raw) <= limit or b"\x00" in raw:
        raise CapfProtocolError(f"{tag.name} must be {least}..{limit} bytes without embedded NUL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CapfProtocolError(f"{tag.name} is not valid UTF-8") from None
    if tag is Element.DEVICE_NAME and not all(c.isascii() and (c.isalnum() or c in "-_.") for c in text):
        raise CapfProtocolError(f"DEVICE_NAME has characters outside [A-Za-z0-9-_.]: {text!r}")
    return text


def encode_certificate_element(cert_type: CertType, der: bytes) -> bytes:
    # Nested form `01 <len> 00 <type> <DER>`; len covers the `00 <type>` pair and the DER.
    return struct.pack(">BHBB", 1, len(der) + 2, 0, int(cert_type)) + der


def decode_certificate_element(value: bytes) -> tuple[CertType, bytes]:
    if len(value) < 6:
        raise CapfProtocolError(f"CERTIFICATE element too short ({len(value)} bytes)")
    marker, inner, zero, ctype = struct.unpack_from(">BHBB", value)
    if marker != 1 or zero != 0:
        raise CapfProtocolError("CERTIFICATE element has a bad nested header")
    if inner != len(value) - 3:
        raise CapfProtocolError(f"CERTIFICATE nested length {inner} does not match element ({len(value) - 3})")
    try:
        cert_type = CertType(ctype)
    except ValueError:
        raise CapfProtocolError(f"CERTIFICATE has unknown certificate type {ctype}") from None
    return cert_type, bytes(value[5:])


def encode_retry_delay(seconds: int) -> bytes:
    """RETRY_DELAY value: seconds as uint32 BE."""
    if not 1 <= seconds <= MAX_RETRY_DELAY:
        raise CapfProtocolError(f"retry delay {seconds}s outside 1..{MAX_RETRY_DELAY}")
    return int(seconds).to_bytes(4, "big")


def decode_retry_delay(value: bytes) -> int:
    """1..4 bytes BE, 1 second up to a week."""
    if not 1 <= len(value) <= 4:
        raise CapfProtocolError(f"RETRY_DELAY must be 1..4 bytes, got {len(value)}")
    seconds = int.from_bytes(value, "big")
    if not 1 <= seconds <= MAX_RETRY_DELAY:
        raise CapfProtocolError(f"RETRY_DELAY of {seconds}s outside 1..{MAX_RETRY_DELAY}")
    return seconds


def encode_signed_data_sha2(algorithm: HashAlgorithm, signature: bytes) -> bytes:
    """SIGNED_DATA_SHA2 value: `uint8 hash | uint16 length | signature`."""
    return struct.pack(">BH", int(algorithm), len(signature)) + signature


def decode_signed_data_sha2(value: bytes) -> tuple[HashAlgorithm, bytes]:
    if len(value) < 3:
        raise CapfProtocolError(f"SIGNED_DATA_SHA2 too short ({len(value)} bytes)")
    algorithm, length = struct.unpack_from(">BH", value)
    try:
        hash_id = HashAlgorithm(algorithm)
    except ValueError:
        raise CapfProtocolError(f"SIGNED_DATA_SHA2 names unknown hash {algorithm}") from None
    if length == 0 or length != len(value) - 3:
        raise CapfProtocolError(f"SIGNED_DATA_SHA2 signature length {length} does not match the element "
                                f"({len(value) - 3} bytes after the header)")
    return hash_id, bytes(value[3:])
