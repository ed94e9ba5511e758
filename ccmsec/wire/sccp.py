"""SCCP (Skinny) codec and registration state machines — sans-IO (bytes in, events out).

Framing, little-endian::

    uint32 length | uint32 header version | uint32 message id | payload

`length` counts from the message id to the end, so a frame is `length + 8` bytes. We speak header
version 0 ("basic"); field layouts follow the basic (version 0) branch of the Wireshark Skinny
dissector so that tshark decodes our frames without "malformed" marks. IPv4 addresses inside
messages are in network order.

Choices where the basic layout has no room (documented in `docs/architecture.md` too):

* CapabilitiesRes has no encryption-capability field in the basic layout. We append one trailing
  uint32 after the capability array (bit 0 = SRTP capable). The dissector stops after the array and
  ignores it; a frame without the word parses as "not capable".
* Fixed-size text fields are NUL-padded ASCII. A value that fills its field (a 24-digit number in
  CallInfo's 24-byte party fields, a 40-character name in its 40-byte name fields) has no NUL:
  decoders, ours and the dissector, read a field to its first NUL or its end. A longer value is
  refused, naming the field.
* CallInfo carries `callSecurityStatus` (0 unknown, 1 not authenticated, 2 authenticated,
  3 encrypted) natively in the basic layout, right after `callInstance`.
* The encryption-info block holds at most 16 key and 16 salt bytes (AES-128 suites); 256-bit keys
  do not fit the basic layout and are refused when serialising.
* Register is sent with the 12-byte extension (active streams, protocol version, features, max
  conferences) plus `activeConferences`, so the dissector (which shows the extension only when the
  length exceeds 52) decodes it; the basic 36-byte form is accepted on input.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable

# -- framing ------------------------------------------------------------------------------------

HEADER = struct.Struct("<III")
HEADER_SIZE = HEADER.size
BASIC_HEADER_VERSION = 0
# Largest `length` field we accept: the biggest message we speak (CallInfo) is ~ 600 bytes.
MAX_MESSAGE_LENGTH = 4096
# The framer never buffers more than one maximal frame plus one read.
MAX_BUFFER = MAX_MESSAGE_LENGTH + HEADER_SIZE + 4096


class SccpProtocolError(ValueError):
    """Bad SCCP bytes: framing, a field length, or a message that does not fit its layout."""


# -- field codecs -------------------------------------------------------------------------------

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


def _need(payload: bytes, offset: int, size: int, what: str) -> None:
    if offset + size > len(payload):
        raise SccpProtocolError(
            f"{what}: payload too short ({len(payload)} bytes, need {offset + size})"
        )


def _encode_str(value: str, size: int, what: str) -> bytes:
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError as exc:
        raise SccpProtocolError(f"{what}: only ASCII text fits a Skinny string field") from exc
    if len(raw) > size:
        raise SccpProtocolError(f"{what}: {len(raw)} bytes do not fit a {size}-byte field")
    return raw.ljust(size, b"\0")


def _decode_str(raw: bytes, what: str) -> str:
    text = raw.split(b"\0", 1)[0]
    try:
        return text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SccpProtocolError(f"{what}: non-ASCII bytes in a text field") from exc


def _encode_ip(value: str, what: str) -> bytes:
    try:
        return ipaddress.IPv4Address(value).packed
    except ValueError as exc:
        raise SccpProtocolError(f"{what}: not an IPv4 address: {value!r}") from exc


def _decode_ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _check_uint(value: int, bits: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise SccpProtocolError(f"{what}: {value!r} is not an unsigned {bits}-bit integer")
    return value


# A layout is a tuple of (attribute, kind); kinds: "u32" "u16" "u8" "ip" ("str", n) "enc".
Layout = tuple[tuple[str, object], ...]


def _kind_size(kind: object) -> int:
    if kind == "u32" or kind == "ip":
        return 4
    if kind == "u16":
        return 2
    if kind == "u8":
        return 1
    if kind == "enc":
        return EncryptionInfo.SIZE
    if isinstance(kind, tuple) and kind[0] == "str":
        return int(kind[1])
    raise AssertionError(f"unknown field kind {kind!r}")


def _layout_size(layout: Layout) -> int:
    return sum(_kind_size(kind) for _, kind in layout)


def _pack_layout(obj: object, layout: Layout) -> bytes:
    out = bytearray()
    name = type(obj).__name__
    for attr, kind in layout:
        value = getattr(obj, attr)
        what = f"{name}.{attr}"
        if kind == "u32":
            out += _U32.pack(_check_uint(value, 32, what))
        elif kind == "u16":
            out += _U16.pack(_check_uint(value, 16, what))
        elif kind == "u8":
            out.append(_check_uint(value, 8, what))
        elif kind == "ip":
            out += _encode_ip(value, what)
        elif kind == "enc":
            out += value.to_bytes()
        else:
            out += _encode_str(value, int(kind[1]), what)  # type: ignore[index]
    return bytes(out)


def _unpack_layout(payload: bytes, offset: int, layout: Layout, what: str) -> tuple[dict, int]:
    _need(payload, offset, _layout_size(layout), what)
    values: dict = {}
    for attr, kind in layout:
        if kind == "u32":
            values[attr] = _U32.unpack_from(payload, offset)[0]
            offset += 4
        elif kind == "u16":
            values[attr] = _U16.unpack_from(payload, offset)[0]
            offset += 2
        elif kind == "u8":
            values[attr] = payload[offset]
            offset += 1
        elif kind == "ip":
            values[attr] = _decode_ip(payload[offset:offset + 4])
            offset += 4
        elif kind == "enc":
            values[attr] = EncryptionInfo.from_bytes(payload[offset:offset + EncryptionInfo.SIZE])
            offset += EncryptionInfo.SIZE
        else:
            size = int(kind[1])  # type: ignore[index]
            values[attr] = _decode_str(payload[offset:offset + size], f"{what}.{attr}")
            offset += size
    return values, offset


# -- shared structures --------------------------------------------------------------------------

class SrtpAlgorithm(enum.IntEnum):
    """Algorithm ids of the encryption-info block."""

    NONE = 0
    AES_CM_128_HMAC_SHA1_32 = 1
    AES_CM_128_HMAC_SHA1_80 = 2
    F8_128_HMAC_SHA1_32 = 3
    F8_128_HMAC_SHA1_80 = 4
    AEAD_AES_128_GCM = 5
    AEAD_AES_256_GCM = 6


class CallSecurityStatus(enum.IntEnum):
    UNKNOWN = 0
    NOT_AUTHENTICATED = 1
    AUTHENTICATED = 2
    ENCRYPTED = 3


class ResetType(enum.IntEnum):
    RESET = 1
    RESTART = 2


@dataclass(frozen=True)
class EncryptionInfo:
    """The 48-byte media encryption-key block of StartMediaTransmission / OpenReceiveChannel.

    Key and salt are kept out of `repr` so that media keys never reach a log line (ENC-5).
    """

    SIZE: ClassVar[int] = 48
    MAX_KEY: ClassVar[int] = 16
    MAX_SALT: ClassVar[int] = 16
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<IHH16s16sII")

    algorithm: int = SrtpAlgorithm.NONE
    key: bytes = field(default=b"", repr=False)
    salt: bytes = field(default=b"", repr=False)
    mki_present: int = 0
    key_derivation_rate: int = 0

    @property
    def is_encrypted(self) -> bool:
        return self.algorithm != SrtpAlgorithm.NONE

    def to_bytes(self) -> bytes:
        if len(self.key) > self.MAX_KEY:
            raise SccpProtocolError(f"EncryptionInfo.key: {len(self.key)} bytes exceed 16")
        if len(self.salt) > self.MAX_SALT:
            raise SccpProtocolError(f"EncryptionInfo.salt: {len(self.salt)} bytes exceed 16")
        return self._STRUCT.pack(
            _check_uint(self.algorithm, 32, "EncryptionInfo.algorithm"),
            len(self.key), len(self.salt), self.key, self.salt,
            _check_uint(self.mki_present, 32, "EncryptionInfo.mki_present"),
            _check_uint(self.key_derivation_rate, 32, "EncryptionInfo.key_derivation_rate"),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> "EncryptionInfo":
        if len(raw) != cls.SIZE:
            raise SccpProtocolError(f"encryption info: {len(raw)} bytes, expected {cls.SIZE}")
        alg, key_len, salt_len, key, salt, mki, kdr = cls._STRUCT.unpack(raw)
        if key_len > cls.MAX_KEY:
            raise SccpProtocolError(f"encryption info: key length {key_len} exceeds 16")
        if salt_len > cls.MAX_SALT:
            raise SccpProtocolError(f"encryption info: salt length {salt_len} exceeds 16")
        return cls(alg, key[:key_len], salt[:salt_len], mki, kdr)


@dataclass(frozen=True)
class MediaCapability:
    """One entry of CapabilitiesRes: payload type, frames per packet, 8 bytes of codec params."""

    payload_capability: int
    max_frames_per_packet: int = 40
    params: bytes = b"\0" * 8

    SIZE: ClassVar[int] = 16


# -- messages -----------------------------------------------------------------------------------

MESSAGE_TYPES: dict[int, type["Message"]] = {}


@dataclass(frozen=True)
class Message:
    """Base class: a layout-driven message. Subclasses set MESSAGE_ID and LAYOUT."""

    MESSAGE_ID: ClassVar[int] = -1
    LAYOUT: ClassVar[Layout] = ()
    # Payload bytes that must be present for `parse` (defaults to the whole layout).
    MIN_PAYLOAD: ClassVar[int | None] = None

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.MESSAGE_ID >= 0:
            if cls.MESSAGE_ID in MESSAGE_TYPES:
                raise AssertionError(f"duplicate message id {cls.MESSAGE_ID:#06x}")
            MESSAGE_TYPES[cls.MESSAGE_ID] = cls

    @property
    def name(self) -> str:
        return type(self).__name__

    def payload(self) -> bytes:
        return _pack_layout(self, self.LAYOUT)

    def serialize(self, header_version: int = BASIC_HEADER_VERSION) -> bytes:
        """The whole frame: header + payload."""
        body = self.payload()
        length = 4 + len(body)
        if length > MAX_MESSAGE_LENGTH:
            raise SccpProtocolError(f"{self.name}: {length} bytes exceed the {MAX_MESSAGE_LENGTH} limit")
        return HEADER.pack(length, header_version, self.MESSAGE_ID) + body

    @classmethod
    def parse(cls, payload: bytes) -> "Message":
        """Decode a payload (the bytes after the message id). Extra trailing bytes are ignored:
        later protocol versions append fields to the basic layouts."""
        values, _ = _unpack_layout(payload, 0, cls.LAYOUT, cls.__name__)
        return cls(**values)


def _u32(*names: str) -> Layout:
    return tuple((n, "u32") for n in names)


def _parse_optional_tail(cls, payload: bytes, required: int):
    """Parse the first `required` fields of `cls.LAYOUT`, then each further field that fits whole
    (older phones and basic layouts leave trailing fields out)."""
    values, offset = _unpack_layout(payload, 0, cls.LAYOUT[:required], cls.__name__)
    for item in cls.LAYOUT[required:]:
        if len(payload) < offset + _kind_size(item[1]):
            break
        more, offset = _unpack_layout(payload, offset, (item,), cls.__name__)
        values.update(more)
    return cls(**values)


@dataclass(frozen=True)
class KeepAlive(Message):
    MESSAGE_ID: ClassVar[int] = 0x0000


@dataclass(frozen=True)
class Register(Message):
    MESSAGE_ID: ClassVar[int] = 0x0001
    BASIC: ClassVar[Layout] = (
        ("device_name", ("str", 16)), ("user_id", "u32"), ("instance", "u32"),
        ("ip_address", "ip"), ("device_type", "u32"), ("max_streams", "u32"),
    )
    EXTENSION: ClassVar[Layout] = (
        ("active_streams", "u32"), ("protocol_version", "u8"), ("unknown", "u8"),
        ("phone_features", "u16"), ("max_conferences", "u32"), ("active_conferences", "u32"),
    )
    LAYOUT: ClassVar[Layout] = BASIC + EXTENSION

    device_name: str
    ip_address: str = "0.0.0.0"
    device_type: int = 7  # 7960
    user_id: int = 0
    instance: int = 1
    max_streams: int = 5
    active_streams: int = 0
    protocol_version: int = 5
    unknown: int = 0
    phone_features: int = 0
    max_conferences: int = 0
    active_conferences: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "Register":
        values, offset = _unpack_layout(payload, 0, cls.BASIC, "Register")
        ext_size = _layout_size(cls.EXTENSION) - 4  # activeConferences is optional
        if len(payload) >= offset + ext_size:
            ext, _ = _unpack_layout(payload, offset, cls.EXTENSION[:-1], "Register")
            values.update(ext)
            if len(payload) >= offset + ext_size + 4:
                values["active_conferences"] = _U32.unpack_from(payload, offset + ext_size)[0]
        if not values["device_name"]:
            raise SccpProtocolError("Register: empty device name")
        return cls(**values)


@dataclass(frozen=True)
class IpPort(Message):
    MESSAGE_ID: ClassVar[int] = 0x0002
    LAYOUT: ClassVar[Layout] = _u32("rtp_port")
    rtp_port: int = 0


@dataclass(frozen=True)
class _LineCall(Message):
    """OffHook/OnHook: the line instance and call reference are optional in the basic layout."""

    LAYOUT: ClassVar[Layout] = _u32("line_instance", "call_reference")
    line_instance: int = 0
    call_reference: int = 0

    @classmethod
    def parse(cls, payload: bytes):
        if len(payload) == 0:
            return cls()
        return super().parse(payload)


@dataclass(frozen=True)
class KeypadButton(Message):
    MESSAGE_ID: ClassVar[int] = 0x0003
    LAYOUT: ClassVar[Layout] = _u32("button", "line_instance", "call_reference")
    button: int = 0
    line_instance: int = 0
    call_reference: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "KeypadButton":
        if len(payload) < 12:
            values, _ = _unpack_layout(payload, 0, cls.LAYOUT[:1], cls.__name__)
            return cls(**values)
        return super().parse(payload)  # type: ignore[return-value]


@dataclass(frozen=True)
class OffHook(_LineCall):
    MESSAGE_ID: ClassVar[int] = 0x0006


@dataclass(frozen=True)
class OnHook(_LineCall):
    MESSAGE_ID: ClassVar[int] = 0x0007


@dataclass(frozen=True)
class CapabilitiesRes(Message):
    """Media capabilities; `encryption_capable` rides in a trailing word (see module doc)."""

    MESSAGE_ID: ClassVar[int] = 0x0010
    MAX_CAPS: ClassVar[int] = 18
    _CAP: ClassVar[struct.Struct] = struct.Struct("<II8s")

    capabilities: tuple[MediaCapability, ...] = ()
    encryption_capable: bool = False

    def payload(self) -> bytes:
        if len(self.capabilities) > self.MAX_CAPS:
            raise SccpProtocolError(f"CapabilitiesRes: {len(self.capabilities)} capabilities exceed 18")
        out = bytearray(_U32.pack(len(self.capabilities)))
        for cap in self.capabilities:
            if len(cap.params) != 8:
                raise SccpProtocolError("CapabilitiesRes: codec params must be 8 bytes")
            out += self._CAP.pack(
                _check_uint(cap.payload_capability, 32, "payload_capability"),
                _check_uint(cap.max_frames_per_packet, 32, "max_frames_per_packet"),
                cap.params,
            )
        out += _U32.pack(1 if self.encryption_capable else 0)
        return bytes(out)

    @classmethod
    def parse(cls, payload: bytes) -> "CapabilitiesRes":
        _need(payload, 0, 4, "CapabilitiesRes")
        count = _U32.unpack_from(payload, 0)[0]
        if count > cls.MAX_CAPS:
            raise SccpProtocolError(f"CapabilitiesRes: capability count {count} exceeds 18")
        _need(payload, 4, count * MediaCapability.SIZE, "CapabilitiesRes")
        caps = []
        offset = 4
        for _ in range(count):
            ptype, frames, params = cls._CAP.unpack_from(payload, offset)
            caps.append(MediaCapability(ptype, frames, params))
            offset += MediaCapability.SIZE
        flags = _U32.unpack_from(payload, offset)[0] if len(payload) >= offset + 4 else 0
        return cls(tuple(caps), bool(flags & 1))


@dataclass(frozen=True)
class OpenReceiveChannelAck(Message):
    MESSAGE_ID: ClassVar[int] = 0x0022
    LAYOUT: ClassVar[Layout] = (
        ("status", "u32"), ("ip_address", "ip"), ("port", "u32"),
        ("pass_thru_party_id", "u32"), ("call_reference", "u32"),
    )
    status: int = 0
    ip_address: str = "0.0.0.0"
    port: int = 0
    pass_thru_party_id: int = 0
    call_reference: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "OpenReceiveChannelAck":
        if len(payload) < 20:
            values, _ = _unpack_layout(payload, 0, cls.LAYOUT[:4], cls.__name__)
            return cls(**values)
        return super().parse(payload)  # type: ignore[return-value]


@dataclass(frozen=True)
class Unregister(Message):
    MESSAGE_ID: ClassVar[int] = 0x0027
    LAYOUT: ClassVar[Layout] = _u32("reason_code")
    reason_code: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "Unregister":
        return cls() if len(payload) == 0 else super().parse(payload)  # type: ignore[return-value]


@dataclass(frozen=True)
class RegisterAck(Message):
    MESSAGE_ID: ClassVar[int] = 0x0081
    LAYOUT: ClassVar[Layout] = (
        ("keepalive_interval", "u32"), ("date_template", ("str", 6)), ("padding", "u16"),
        ("secondary_keepalive_interval", "u32"), ("max_protocol_version", "u8"),
        ("unknown", "u8"), ("phone_features", "u16"),
    )
    keepalive_interval: int = 30
    date_template: str = "D/M/YA"
    secondary_keepalive_interval: int = 60
    max_protocol_version: int = 5
    padding: int = 0
    unknown: int = 0
    phone_features: int = 0


@dataclass(frozen=True)
class StartTone(Message):
    MESSAGE_ID: ClassVar[int] = 0x0082
    LAYOUT: ClassVar[Layout] = _u32("tone", "direction", "line_instance", "call_reference")
    tone: int = 0x21  # dial tone
    direction: int = 0
    line_instance: int = 0
    call_reference: int = 0


@dataclass(frozen=True)
class StopTone(Message):
    MESSAGE_ID: ClassVar[int] = 0x0083
    LAYOUT: ClassVar[Layout] = _u32("line_instance", "call_reference")
    line_instance: int = 0
    call_reference: int = 0


@dataclass(frozen=True)
class SetLamp(Message):
    MESSAGE_ID: ClassVar[int] = 0x0086
    LAYOUT: ClassVar[Layout] = _u32("stimulus", "stimulus_instance", "lamp_mode")
    stimulus: int = 9  # line
    stimulus_instance: int = 1
    lamp_mode: int = 1  # off


@dataclass(frozen=True)
class SetSpeakerMode(Message):
    MESSAGE_ID: ClassVar[int] = 0x0088
    LAYOUT: ClassVar[Layout] = _u32("mode")
    mode: int = 2  # off


@dataclass(frozen=True)
class StartMediaTransmission(Message):
    """Tells the endpoint where to send its media; `encryption` holds the SRTP master values
    for the sending direction (ENC-4)."""

    MESSAGE_ID: ClassVar[int] = 0x008A
    LAYOUT: ClassVar[Layout] = (
        ("conference_id", "u32"), ("pass_thru_party_id", "u32"), ("remote_ip", "ip"),
        ("remote_port", "u32"), ("packet_size_ms", "u32"), ("compression_type", "u32"),
        ("precedence", "u32"), ("silence_suppression", "u32"), ("max_frames_per_packet", "u16"),
        ("padding", "u16"), ("g723_bitrate", "u32"), ("call_reference", "u32"),
        ("encryption", "enc"), ("stream_pass_through_id", "u32"), ("associated_stream_id", "u32"),
        ("rfc2833_payload_type", "u32"), ("dtmf_type", "u32"), ("mixing_mode", "u32"),
    )
    conference_id: int = 0
    pass_thru_party_id: int = 0
    remote_ip: str = "0.0.0.0"
    remote_port: int = 0
    packet_size_ms: int = 20
    compression_type: int = 4  # G.711 u-law 64k
    precedence: int = 0
    silence_suppression: int = 0
    max_frames_per_packet: int = 0
    padding: int = 0
    g723_bitrate: int = 0
    call_reference: int = 0
    encryption: EncryptionInfo = EncryptionInfo()
    stream_pass_through_id: int = 0
    associated_stream_id: int = 0
    rfc2833_payload_type: int = 0
    dtmf_type: int = 0
    mixing_mode: int = 0


@dataclass(frozen=True)
class StopMediaTransmission(Message):
    MESSAGE_ID: ClassVar[int] = 0x008B
    LAYOUT: ClassVar[Layout] = _u32(
        "conference_id", "pass_thru_party_id", "call_reference", "port_handling_flag")
    conference_id: int = 0
    pass_thru_party_id: int = 0
    call_reference: int = 0
    port_handling_flag: int = 0


@dataclass(frozen=True)
class CallInfo(Message):
    MESSAGE_ID: ClassVar[int] = 0x008F
    LAYOUT: ClassVar[Layout] = (
        ("calling_party_name", ("str", 40)), ("calling_party", ("str", 24)),
        ("called_party_name", ("str", 40)), ("called_party", ("str", 24)),
        ("line_instance", "u32"), ("call_reference", "u32"), ("call_type", "u32"),
        ("original_called_party_name", ("str", 40)), ("original_called_party", ("str", 24)),
        ("last_redirecting_party_name", ("str", 40)), ("last_redirecting_party", ("str", 24)),
        ("original_cdpn_redirect_reason", "u32"), ("last_redirecting_reason", "u32"),
        ("cgpn_voice_mailbox", ("str", 24)), ("cdpn_voice_mailbox", ("str", 24)),
        ("original_cdpn_voice_mailbox", ("str", 24)),
        ("last_redirecting_voice_mailbox", ("str", 24)),
        ("call_instance", "u32"), ("call_security_status", "u32"),
        ("party_pi_restriction_bits", "u32"),
    )
    calling_party_name: str = ""
    calling_party: str = ""
    called_party_name: str = ""
    called_party: str = ""
    line_instance: int = 0
    call_reference: int = 0
    call_type: int = 1  # inbound
    original_called_party_name: str = ""
    original_called_party: str = ""
    last_redirecting_party_name: str = ""
    last_redirecting_party: str = ""
    original_cdpn_redirect_reason: int = 0
    last_redirecting_reason: int = 0
    cgpn_voice_mailbox: str = ""
    cdpn_voice_mailbox: str = ""
    original_cdpn_voice_mailbox: str = ""
    last_redirecting_voice_mailbox: str = ""
    call_instance: int = 0
    call_security_status: int = CallSecurityStatus.UNKNOWN
    party_pi_restriction_bits: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "CallInfo":
        msg = super().parse(payload)
        if msg.call_security_status > CallSecurityStatus.ENCRYPTED:  # type: ignore[attr-defined]
            raise SccpProtocolError(
                f"CallInfo: call security status {msg.call_security_status} not in 0..3"  # type: ignore[attr-defined]
            )
        return msg  # type: ignore[return-value]


@dataclass(frozen=True)
class DefineTimeDate(Message):
    MESSAGE_ID: ClassVar[int] = 0x0094
    LAYOUT: ClassVar[Layout] = _u32(
        "year", "month", "day_of_week", "day", "hour", "minute", "second", "milliseconds",
        "system_time")
    year: int = 1970
    month: int = 1
    day_of_week: int = 4
    day: int = 1
    hour: int = 0
    minute: int = 0
    second: int = 0
    milliseconds: int = 0
    system_time: int = 0


@dataclass(frozen=True)
class CapabilitiesReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x009B


@dataclass(frozen=True)
class RegisterReject(Message):
    MESSAGE_ID: ClassVar[int] = 0x009D
    TEXT_SIZE: ClassVar[int] = 32
    LAYOUT: ClassVar[Layout] = (("text", ("str", 32)),)
    text: str = ""

    @classmethod
    def with_reason(cls, reason: str) -> "RegisterReject":
        """Fit a free-form reason into the 32-byte ASCII field (the full text stays server-side)."""
        ascii_text = reason.encode("ascii", "replace").decode("ascii")
        return cls(ascii_text[: cls.TEXT_SIZE - 1])


@dataclass(frozen=True)
class Reset(Message):
    MESSAGE_ID: ClassVar[int] = 0x009F
    LAYOUT: ClassVar[Layout] = _u32("reset_type")
    reset_type: int = ResetType.RESET

    @classmethod
    def parse(cls, payload: bytes) -> "Reset":
        msg = super().parse(payload)
        if msg.reset_type not in (ResetType.RESET, ResetType.RESTART):  # type: ignore[attr-defined]
            raise SccpProtocolError(f"Reset: reset type {msg.reset_type} is neither 1 nor 2")  # type: ignore[attr-defined]
        return msg  # type: ignore[return-value]


@dataclass(frozen=True)
class KeepAliveAck(Message):
    MESSAGE_ID: ClassVar[int] = 0x0100


@dataclass(frozen=True)
class OpenReceiveChannel(Message):
    """Asks the endpoint to open a receive port; `encryption` holds the SRTP master values for
    the receiving direction (ENC-4)."""

    MESSAGE_ID: ClassVar[int] = 0x0105
    LAYOUT: ClassVar[Layout] = (
        ("conference_id", "u32"), ("pass_thru_party_id", "u32"), ("packet_size_ms", "u32"),
        ("compression_type", "u32"), ("echo_cancellation", "u32"), ("g723_bitrate", "u32"),
        ("call_reference", "u32"), ("encryption", "enc"), ("stream_pass_through_id", "u32"),
        ("associated_stream_id", "u32"), ("rfc2833_payload_type", "u32"), ("dtmf_type", "u32"),
    )
    conference_id: int = 0
    pass_thru_party_id: int = 0
    packet_size_ms: int = 20
    compression_type: int = 4
    echo_cancellation: int = 0
    g723_bitrate: int = 0
    call_reference: int = 0
    encryption: EncryptionInfo = EncryptionInfo()
    stream_pass_through_id: int = 0
    associated_stream_id: int = 0
    rfc2833_payload_type: int = 0
    dtmf_type: int = 0


@dataclass(frozen=True)
class CloseReceiveChannel(Message):
    MESSAGE_ID: ClassVar[int] = 0x0106
    LAYOUT: ClassVar[Layout] = _u32(
        "conference_id", "pass_thru_party_id", "call_reference", "port_handling_flag")
    conference_id: int = 0
    pass_thru_party_id: int = 0
    call_reference: int = 0
    port_handling_flag: int = 0


@dataclass(frozen=True)
class CallState(Message):
    MESSAGE_ID: ClassVar[int] = 0x0111
    LAYOUT: ClassVar[Layout] = _u32(
        "call_state", "line_instance", "call_reference", "privacy", "precedence_level",
        "precedence_domain")
    call_state: int = 2  # on hook
    line_instance: int = 0
    call_reference: int = 0
    privacy: int = 0
    precedence_level: int = 4
    precedence_domain: int = 0


@dataclass(frozen=True)
class ActivateCallPlane(Message):
    MESSAGE_ID: ClassVar[int] = 0x0116
    LAYOUT: ClassVar[Layout] = _u32("line_instance")
    line_instance: int = 0


@dataclass(frozen=True)
class UnregisterAck(Message):
    MESSAGE_ID: ClassVar[int] = 0x0118
    LAYOUT: ClassVar[Layout] = _u32("status")
    status: int = 0  # ok


@dataclass(frozen=True)
class StartMediaTransmissionAck(Message):
    MESSAGE_ID: ClassVar[int] = 0x0154
    LAYOUT: ClassVar[Layout] = (
        ("conference_id", "u32"), ("pass_thru_party_id", "u32"), ("call_reference", "u32"),
        ("transmit_ip", "ip"), ("port", "u32"), ("status", "u32"),
    )
    conference_id: int = 0
    pass_thru_party_id: int = 0
    call_reference: int = 0
    transmit_ip: str = "0.0.0.0"
    port: int = 0
    status: int = 0


@dataclass(frozen=True)
class UnknownMessage(Message):
    """A message id we do not model; kept as raw payload so callers can log or ignore it."""

    message_id: int = 0
    raw: bytes = b""

    def payload(self) -> bytes:
        return self.raw

    def serialize(self, header_version: int = BASIC_HEADER_VERSION) -> bytes:
        if 4 + len(self.raw) > MAX_MESSAGE_LENGTH:
            raise SccpProtocolError("UnknownMessage: payload too long")
        return HEADER.pack(4 + len(self.raw), header_version, self.message_id) + self.raw


# -- decoding -----------------------------------------------------------------------------------

def decode_message(message_id: int, payload: bytes) -> Message:
    """Decode one payload by message id. Unknown ids give an `UnknownMessage`."""
    cls = MESSAGE_TYPES.get(message_id)
    if cls is None:
        return UnknownMessage(message_id=message_id, raw=bytes(payload))
    try:
        return cls.parse(bytes(payload))
    except SccpProtocolError:
        raise
    except (ValueError, struct.error) as exc:  # defensive: never leak a bare traceback type
        raise SccpProtocolError(f"{cls.__name__}: {exc}") from exc


def parse_frame(frame: bytes) -> Message:
    """Decode exactly one complete frame (header + payload)."""
    if len(frame) < HEADER_SIZE:
        raise SccpProtocolError(f"frame shorter than the 12-byte header ({len(frame)} bytes)")
    length, _version, message_id = HEADER.unpack_from(frame, 0)
    _check_length(length)
    if len(frame) != length + 8:
        raise SccpProtocolError(
            f"frame length field says {length + 8} bytes, frame has {len(frame)}"
        )
    return decode_message(message_id, frame[HEADER_SIZE:])


def _check_length(length: int) -> None:
    if length < 4:
        raise SccpProtocolError(f"length field {length} is smaller than the message id")
    if length > MAX_MESSAGE_LENGTH:
        raise SccpProtocolError(f"length field {length} exceeds the {MAX_MESSAGE_LENGTH}-byte limit")


class SccpFramer:
    """Streaming framer: feed TCP bytes, get whole messages. After an error it stays broken
    (the stream has lost its framing; the connection must be closed)."""

    __slots__ = ("_buffer", "_error", "header_version")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: SccpProtocolError | None = None
        self.header_version: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        """Whole messages from `data`. One read may carry many messages (a burst, or what queued
        while we were busy), so the bound is on what stays buffered, not on the read: the data
        goes in in pieces of at most the free room, whole messages are taken out after each, and
        only a buffer full without a complete message is an error (a valid frame always fits)."""
        if self._error is not None:
            raise self._error
        out: list[Message] = []
        view = memoryview(data)
        while True:
            room = MAX_BUFFER - len(self._buffer)
            if room <= 0:
                self._fail(SccpProtocolError(
                    f"receive buffer would exceed {MAX_BUFFER} bytes without a complete message"))
            piece = view[:room]
            self._buffer += piece
            view = view[len(piece):]
            self._take_messages(out)
            if not view:
                return out

    def _take_messages(self, out: list[Message]) -> None:
        while len(self._buffer) >= HEADER_SIZE:
            length, version, message_id = HEADER.unpack_from(self._buffer, 0)
            try:
                _check_length(length)
            except SccpProtocolError as exc:
                self._fail(exc)
            total = length + 8
            if len(self._buffer) < total:
                break
            payload = bytes(self._buffer[HEADER_SIZE:total])
            del self._buffer[:total]
            try:
                out.append(decode_message(message_id, payload))
            except SccpProtocolError as exc:
                self._fail(exc)
            self.header_version = version

    def _fail(self, exc: SccpProtocolError) -> None:
        self._error = exc
        self._buffer.clear()
        raise exc


# -- registration state machines ------------------------------------------------------------------

@dataclass(frozen=True)
class RegistrationRequest:
    """What the server's decision callback sees for one Register."""

    device_name: str
    peer_address: tuple[str, int] | None
    peer_certificate: object | None  # cryptography x509.Certificate of the TLS client, if any
    secure: bool  # transport is TLS
    tls_cipher: str | None
    register: Register


@dataclass(frozen=True)
class RegistrationDecision:
    accepted: bool
    reason: str = ""

    @classmethod
    def accept(cls) -> "RegistrationDecision":
        return cls(True)

    @classmethod
    def reject(cls, reason: str) -> "RegistrationDecision":
        return cls(False, reason)


# Events (server and phone side) -----------------------------------------------------------------

@dataclass(frozen=True)
class RegistrationRequested:
    request: RegistrationRequest


@dataclass(frozen=True)
class DeviceRegistered:
    device_name: str
    register: Register


@dataclass(frozen=True)
class RegistrationRefused:
    device_name: str
    reason: str


@dataclass(frozen=True)
class CapabilitiesReceived:
    device_name: str
    capabilities: CapabilitiesRes


@dataclass(frozen=True)
class KeepAliveReceived:
    device_name: str | None


@dataclass(frozen=True)
class DeviceUnregistered:
    device_name: str


@dataclass(frozen=True)
class MessageIgnored:
    message: Message
    reason: str


@dataclass(frozen=True)
class MessageReceived:
    """A call-control or media message for the application (OffHook, StartMediaTransmission…)."""

    message: Message


@dataclass(frozen=True)
class KeepAliveTimeout:
    device_name: str | None


@dataclass(frozen=True)
class RegisterAccepted:
    ack: RegisterAck


@dataclass(frozen=True)
class RegisterRejected:
    text: str


@dataclass(frozen=True)
class KeepAliveAcked:
    pass


@dataclass(frozen=True)
class ResetRequested:
    """The phone must re-run its boot (reset) or restart its application (restart)."""

    reset_type: ResetType


@dataclass(frozen=True)
class UnregisterAcked:
    status: int


@dataclass(frozen=True)
class StandbyHeld:
    """A connection that has not registered sent KeepAlive: a phone's standby connection."""


class ServerState(enum.Enum):
    CONNECTED = "connected"
    PENDING = "pending"  # Register received, waiting for the decision
    REGISTERED = "registered"
    CLOSED = "closed"


Decider = Callable[[RegistrationRequest], RegistrationDecision]


class SccpServerSession:
    """Call-control side of one SCCP connection.

    Feed bytes with `receive_data`; read bytes to send with `data_to_send`. With a `decide`
    callback the Register is decided inline; without one the session emits
    `RegistrationRequested` and waits for `accept()` / `reject()` (for async deciders).
    """

    __slots__ = ("_framer", "_out", "_decide", "peer_address", "peer_certificate", "secure",
                 "tls_cipher", "keepalive_interval", "state", "device_name", "_last_heard",
                 "_pending", "messages_received", "standby")

    def __init__(self, decide: Decider | None = None, *, peer_address=None, peer_certificate=None,
                 secure: bool = False, tls_cipher: str | None = None,
                 keepalive_interval: int = 30, now: float = 0.0) -> None:
        self._framer = SccpFramer()
        self._out = bytearray()
        self._decide = decide
        self.peer_address = peer_address
        self.peer_certificate = peer_certificate
        self.secure = secure
        self.tls_cipher = tls_cipher
        self.keepalive_interval = keepalive_interval
        self.state = ServerState.CONNECTED
        self.device_name: str | None = None
        self._last_heard = now
        self._pending: Register | None = None
        self.messages_received = 0
        # A phone registered elsewhere keeps this connection as its standby: KeepAlives before any
        # Register are answered, so a failover here needs no new handshake (LATER-7).
        self.standby = False

    # output
    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def send(self, message: Message) -> None:
        if self.state is not ServerState.CLOSED:
            self._out += message.serialize()

    # input
    def receive_data(self, data: bytes, now: float | None = None) -> list[object]:
        """Raises SccpProtocolError on broken framing; the caller then closes the connection."""
        if self.state is ServerState.CLOSED:
            return []
        if now is not None:
            self._last_heard = now
        events: list[object] = []
        for message in self._framer.feed(data):
            self.messages_received += 1
            events.extend(self.handle_message(message))
        return events

    def handle_message(self, message: Message) -> list[object]:
        if isinstance(message, Register):
            return self._on_register(message)
        if isinstance(message, KeepAlive):
            if self.state is ServerState.REGISTERED:
                self.send(KeepAliveAck())
                return [KeepAliveReceived(self.device_name)]
            if self.state is ServerState.CONNECTED:
                self.send(KeepAliveAck())
                became = not self.standby
                self.standby = True
                return [StandbyHeld()] if became else []
            return [MessageIgnored(message, "keepalive while the Register is decided")]
        if isinstance(message, Unregister):
            if self.state is not ServerState.REGISTERED:
                return [MessageIgnored(message, "unregister without registration")]
            self.send(UnregisterAck(0))
            name = self.device_name or ""
            self.state = ServerState.CLOSED
            return [DeviceUnregistered(name)]
        if self.state is not ServerState.REGISTERED:
            return [MessageIgnored(message, f"{message.name} before registration")]
        if isinstance(message, CapabilitiesRes):
            return [CapabilitiesReceived(self.device_name or "", message)]
        return [MessageReceived(message)]

    def _on_register(self, message: Register) -> list[object]:
        if self.state is not ServerState.CONNECTED:
            return [MessageIgnored(message, f"Register while {self.state.value}")]
        self.state = ServerState.PENDING
        self.device_name = message.device_name
        request = RegistrationRequest(
            device_name=message.device_name, peer_address=self.peer_address,
            peer_certificate=self.peer_certificate, secure=self.secure,
            tls_cipher=self.tls_cipher, register=message,
        )
        self._pending = message
        if self._decide is None:
            return [RegistrationRequested(request)]
        decision = self._decide(request)
        return self._apply(decision, message)

    # decisions (also used by async deciders through accept/reject)
    def accept(self) -> list[object]:
        return self._decided(RegistrationDecision.accept())

    def reject(self, reason: str) -> list[object]:
        return self._decided(RegistrationDecision.reject(reason))

    def _decided(self, decision: RegistrationDecision) -> list[object]:
        if self.state is not ServerState.PENDING:
            raise RuntimeError("no registration is waiting for a decision")
        assert self._pending is not None
        return self._apply(decision, self._pending)

    def _apply(self, decision: RegistrationDecision, message: Register) -> list[object]:
        name = message.device_name
        self._pending = None
        if not decision.accepted:
            self.send(RegisterReject.with_reason(decision.reason or "registration refused"))
            self.state = ServerState.CLOSED
            return [RegistrationRefused(name, decision.reason)]
        self.send(RegisterAck(
            keepalive_interval=self.keepalive_interval,
            secondary_keepalive_interval=self.keepalive_interval * 2,
        ))
        self.send(CapabilitiesReq())
        self.state = ServerState.REGISTERED
        return [DeviceRegistered(name, message)]

    def send_reset(self, reset_type: ResetType = ResetType.RESET) -> None:
        """Queue a Reset (RST-*). Only meaningful for a registered device."""
        if self.state is not ServerState.REGISTERED:
            raise RuntimeError("cannot reset a device that is not registered")
        self.send(Reset(ResetType(reset_type)))

    def tick(self, now: float) -> list[object]:
        """A registered device silent for two keepalive intervals (plus grace) is gone."""
        if self.state is ServerState.CLOSED:
            return []
        limit = self.keepalive_interval * 2 + 5
        if now - self._last_heard > limit:
            self.state = ServerState.CLOSED
            return [KeepAliveTimeout(self.device_name)]
        return []

    def close(self) -> None:
        self.state = ServerState.CLOSED


class PhoneState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    REJECTED = "rejected"
    UNREGISTERING = "unregistering"
    CLOSED = "closed"


class SccpPhoneSession:
    """Phone side of one SCCP connection: Register, answer CapabilitiesReq, keepalives, Reset.

    Time is passed in (`now`, seconds) so the state machine stays free of clocks and sockets.
    """

    # Keepalives without an ack before the phone declares call control lost.
    MAX_UNACKED_KEEPALIVES = 3

    __slots__ = ("_framer", "_out", "register", "capabilities", "state", "keepalive_interval",
                 "_next_keepalive", "_unacked")

    def __init__(self, register: Register, capabilities: CapabilitiesRes | None = None) -> None:
        self._framer = SccpFramer()
        self._out = bytearray()
        self.register = register
        self.capabilities = capabilities or CapabilitiesRes(
            (MediaCapability(4, 40), MediaCapability(2, 40)), encryption_capable=False)
        self.state = PhoneState.IDLE
        self.keepalive_interval: int | None = None
        self._next_keepalive = 0.0
        self._unacked = 0

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def send(self, message: Message) -> None:
        self._out += message.serialize()

    def start(self) -> None:
        if self.state is not PhoneState.IDLE:
            raise RuntimeError(f"cannot register while {self.state.value}")
        self.send(self.register)
        self.state = PhoneState.REGISTERING

    def unregister(self) -> None:
        if self.state is not PhoneState.REGISTERED:
            raise RuntimeError("not registered")
        self.send(Unregister(0))
        self.state = PhoneState.UNREGISTERING

    def receive_data(self, data: bytes, now: float = 0.0) -> list[object]:
        events: list[object] = []
        for message in self._framer.feed(data):
            events.extend(self.handle_message(message, now))
        return events

    def handle_message(self, message: Message, now: float = 0.0) -> list[object]:
        if isinstance(message, RegisterAck):
            if self.state is not PhoneState.REGISTERING:
                return [MessageIgnored(message, f"RegisterAck while {self.state.value}")]
            self.state = PhoneState.REGISTERED
            self.keepalive_interval = max(1, message.keepalive_interval)
            self._next_keepalive = now + self.keepalive_interval
            return [RegisterAccepted(message)]
        if isinstance(message, RegisterReject):
            if self.state is not PhoneState.REGISTERING:
                return [MessageIgnored(message, f"RegisterReject while {self.state.value}")]
            self.state = PhoneState.REJECTED
            return [RegisterRejected(message.text)]
        if self.state not in (PhoneState.REGISTERED, PhoneState.UNREGISTERING):
            return [MessageIgnored(message, f"{message.name} while {self.state.value}")]
        if isinstance(message, CapabilitiesReq):
            self.send(self.capabilities)
            return []
        if isinstance(message, KeepAliveAck):
            self._unacked = 0
            return [KeepAliveAcked()]
        if isinstance(message, Reset):
            self.state = PhoneState.CLOSED
            return [ResetRequested(ResetType(message.reset_type))]
        if isinstance(message, UnregisterAck):
            self.state = PhoneState.CLOSED
            return [UnregisterAcked(message.status)]
        return [MessageReceived(message)]

    def tick(self, now: float) -> list[object]:
        """Send a keepalive when due; report call control lost after too many unanswered."""
        if self.state is not PhoneState.REGISTERED or self.keepalive_interval is None:
            return []
        if now < self._next_keepalive:
            return []
        if self._unacked >= self.MAX_UNACKED_KEEPALIVES:
            self.state = PhoneState.CLOSED
            return [KeepAliveTimeout(self.register.device_name)]
        self.send(KeepAlive())
        self._unacked += 1
        self._next_keepalive = now + self.keepalive_interval
        return []

    @property
    def next_keepalive(self) -> float:
        return self._next_keepalive


def all_message_types() -> Iterable[type[Message]]:
    return MESSAGE_TYPES.values()


# The set-up and call-control messages live in their own modules (one concept each); importing
# them here registers their ids, so every decoder of this module knows every message we speak.
from ccmsec.wire import sccp_calls as _sccp_calls  # noqa: E402,F401
from ccmsec.wire import sccp_setup as _sccp_setup  # noqa: E402,F401
