"""SCCP messages of the phone's set-up after RegisterAck (sans-IO codecs only).

A real phone asks, once registered, for everything it shows: its button template, the softkey
template and sets, the state of each line and speed dial, its forward state, its configuration,
the time and the servers; it announces how many lines it can show (RegisterAvailableLines). Call
control answers each request from the device's configuration (`ccmsec.calls.station`).

Layouts are the basic (header version 0) ones of the Wireshark Skinny dissector, so tshark decodes
our frames without malformed marks. Fixed-size arrays are always sent in full (the dissector walks
every slot: 42 buttons, 32 softkeys, 16 softkey sets, 5 servers); their count fields say how many
slots are used and are bounded on input. Softkey labels are sent as ASCII text (a real CallManager
sends locale indexes `0x80 nn`; the phone shows either).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ccmsec.wire.sccp import (
    Layout,
    Message,
    SccpProtocolError,
    _check_uint,
    _decode_ip,
    _decode_str,
    _encode_ip,
    _encode_str,
    _need,
    _u32,
)

_U32 = struct.Struct("<I")
DIRNUM = 24  # directory number fields in the basic layout (25 from header version 18 on)


# -- requests (phone -> call control) ------------------------------------------------------------

@dataclass(frozen=True)
class ForwardStatReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x0009
    LAYOUT: ClassVar[Layout] = _u32("line_number")
    line_number: int = 1


@dataclass(frozen=True)
class SpeedDialStatReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x000A
    LAYOUT: ClassVar[Layout] = _u32("speed_dial_number")
    speed_dial_number: int = 1


@dataclass(frozen=True)
class LineStatReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x000B
    LAYOUT: ClassVar[Layout] = _u32("line_number")
    line_number: int = 1


@dataclass(frozen=True)
class ConfigStatReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x000C


@dataclass(frozen=True)
class TimeDateReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x000D


@dataclass(frozen=True)
class ButtonTemplateReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x000E


@dataclass(frozen=True)
class VersionReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x000F


@dataclass(frozen=True)
class ServerReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x0012


@dataclass(frozen=True)
class SoftKeySetReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x0025


@dataclass(frozen=True)
class SoftKeyTemplateReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x0028


@dataclass(frozen=True)
class RegisterAvailableLines(Message):
    MESSAGE_ID: ClassVar[int] = 0x002D
    LAYOUT: ClassVar[Layout] = _u32("max_lines")
    max_lines: int = 1


# -- answers (call control -> phone) -------------------------------------------------------------

@dataclass(frozen=True)
class ForwardStat(Message):
    MESSAGE_ID: ClassVar[int] = 0x0090
    LAYOUT: ClassVar[Layout] = (
        ("active_forward", "u32"), ("line_number", "u32"),
        ("forward_all_active", "u32"), ("forward_all_number", ("str", DIRNUM)),
        ("forward_busy_active", "u32"), ("forward_busy_number", ("str", DIRNUM)),
        ("forward_no_answer_active", "u32"), ("forward_no_answer_number", ("str", DIRNUM)),
    )
    active_forward: int = 0
    line_number: int = 1
    forward_all_active: int = 0
    forward_all_number: str = ""
    forward_busy_active: int = 0
    forward_busy_number: str = ""
    forward_no_answer_active: int = 0
    forward_no_answer_number: str = ""


@dataclass(frozen=True)
class SpeedDialStat(Message):
    MESSAGE_ID: ClassVar[int] = 0x0091
    LAYOUT: ClassVar[Layout] = (
        ("speed_dial_number", "u32"), ("number", ("str", DIRNUM)), ("display_name", ("str", 40)),
    )
    speed_dial_number: int = 1
    number: str = ""
    display_name: str = ""


@dataclass(frozen=True)
class LineStat(Message):
    MESSAGE_ID: ClassVar[int] = 0x0092
    LAYOUT: ClassVar[Layout] = (
        ("line_number", "u32"), ("number", ("str", DIRNUM)), ("display_name", ("str", 40)),
        ("label", ("str", 40)), ("display_options", "u32"),
    )
    line_number: int = 1
    number: str = ""
    display_name: str = ""
    label: str = ""
    display_options: int = 0x0F  # show everything (original dialed, redirected dialed, …)


@dataclass(frozen=True)
class ConfigStat(Message):
    MESSAGE_ID: ClassVar[int] = 0x0093
    LAYOUT: ClassVar[Layout] = (
        ("device_name", ("str", 16)), ("user_id", "u32"), ("instance", "u32"),
        ("user_name", ("str", 40)), ("server_name", ("str", 40)),
        ("number_of_lines", "u32"), ("number_of_speed_dials", "u32"),
    )
    device_name: str = ""
    user_id: int = 0
    instance: int = 1
    user_name: str = ""
    server_name: str = ""
    number_of_lines: int = 0
    number_of_speed_dials: int = 0


@dataclass(frozen=True)
class Version(Message):
    MESSAGE_ID: ClassVar[int] = 0x0098
    LAYOUT: ClassVar[Layout] = (("version", ("str", 16)),)
    version: str = ""


class ButtonType:
    """Button definitions of the template (the dissector's ButtonType values)."""

    SPEED_DIAL = 0x02
    HOLD = 0x03
    TRANSFER = 0x04
    LINE = 0x09
    SELECT = 0x12
    CONFERENCE = 0x7D
    UNDEFINED = 0xFF


@dataclass(frozen=True)
class Button:
    instance: int
    kind: int


@dataclass(frozen=True)
class ButtonTemplate(Message):
    """Up to 42 buttons; the frame always carries 42 two-byte slots (unused: instance 0, 0xFF)."""

    MESSAGE_ID: ClassVar[int] = 0x0097
    SLOTS: ClassVar[int] = 42
    buttons: tuple[Button, ...] = ()
    offset: int = 0

    def payload(self) -> bytes:
        if len(self.buttons) > self.SLOTS:
            raise SccpProtocolError(f"ButtonTemplate: {len(self.buttons)} buttons exceed {self.SLOTS}")
        count = len(self.buttons)
        out = bytearray(struct.pack("<III", _check_uint(self.offset, 32, "ButtonTemplate.offset"),
                                    count, count))
        for b in self.buttons:
            out += bytes((_check_uint(b.instance, 8, "Button.instance"),
                          _check_uint(b.kind, 8, "Button.kind")))
        out += bytes((0, ButtonType.UNDEFINED)) * (self.SLOTS - count)
        return bytes(out)

    @classmethod
    def parse(cls, payload: bytes) -> "ButtonTemplate":
        _need(payload, 0, 12 + 2 * cls.SLOTS, "ButtonTemplate")
        offset, count, total = struct.unpack_from("<III", payload, 0)
        if total > cls.SLOTS or count > total:
            raise SccpProtocolError(f"ButtonTemplate: {total} buttons (count {count}) exceed {cls.SLOTS}")
        buttons = tuple(Button(payload[12 + 2 * i], payload[13 + 2 * i]) for i in range(total))
        return cls(buttons, offset)


@dataclass(frozen=True)
class SoftKeyDefinition:
    label: str
    event: int


@dataclass(frozen=True)
class SoftKeyTemplateRes(Message):
    """Up to 32 softkeys (16-byte label + uint32 event); 32 slots are always sent."""

    MESSAGE_ID: ClassVar[int] = 0x0108
    SLOTS: ClassVar[int] = 32
    definitions: tuple[SoftKeyDefinition, ...] = ()
    offset: int = 0

    def payload(self) -> bytes:
        if len(self.definitions) > self.SLOTS:
            raise SccpProtocolError(f"SoftKeyTemplateRes: {len(self.definitions)} softkeys exceed 32")
        count = len(self.definitions)
        out = bytearray(struct.pack("<III", _check_uint(self.offset, 32, "SoftKeyTemplateRes.offset"),
                                    count, count))
        for d in self.definitions:
            out += _encode_str(d.label, 16, "SoftKeyDefinition.label")
            out += _U32.pack(_check_uint(d.event, 32, "SoftKeyDefinition.event"))
        out += bytes(20 * (self.SLOTS - count))
        return bytes(out)

    @classmethod
    def parse(cls, payload: bytes) -> "SoftKeyTemplateRes":
        _need(payload, 0, 12 + 20 * cls.SLOTS, "SoftKeyTemplateRes")
        offset, count, total = struct.unpack_from("<III", payload, 0)
        if total > cls.SLOTS or count > total:
            raise SccpProtocolError(f"SoftKeyTemplateRes: {total} softkeys exceed {cls.SLOTS}")
        defs = []
        for i in range(total):
            at = 12 + 20 * i
            defs.append(SoftKeyDefinition(
                _decode_str(payload[at:at + 16], "SoftKeyTemplateRes.label"),
                _U32.unpack_from(payload, at + 16)[0]))
        return cls(tuple(defs), offset)


@dataclass(frozen=True)
class SoftKeySet:
    """One set: up to 16 indexes (1-based) into the softkey template."""

    template_indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class SoftKeySetRes(Message):
    """Up to 16 sets; each set is 16 uint8 template indexes + 16 uint16 info indexes."""

    MESSAGE_ID: ClassVar[int] = 0x0109
    SLOTS: ClassVar[int] = 16
    KEYS: ClassVar[int] = 16
    sets: tuple[SoftKeySet, ...] = ()
    offset: int = 0

    def payload(self) -> bytes:
        if len(self.sets) > self.SLOTS:
            raise SccpProtocolError(f"SoftKeySetRes: {len(self.sets)} sets exceed 16")
        count = len(self.sets)
        out = bytearray(struct.pack("<III", _check_uint(self.offset, 32, "SoftKeySetRes.offset"),
                                    count, count))
        for ks in self.sets:
            if len(ks.template_indexes) > self.KEYS:
                raise SccpProtocolError("SoftKeySetRes: a set holds at most 16 softkeys")
            idx = [_check_uint(i, 8, "SoftKeySet.index") for i in ks.template_indexes]
            idx += [0] * (self.KEYS - len(idx))
            out += bytes(idx)
            # Info indexes: 300 + template index for used keys (as a real CallManager sends).
            out += struct.pack("<16H", *[(300 + i) if i else 0 for i in idx])
        out += bytes(48 * (self.SLOTS - count))
        return bytes(out)

    @classmethod
    def parse(cls, payload: bytes) -> "SoftKeySetRes":
        _need(payload, 0, 12 + 48 * cls.SLOTS, "SoftKeySetRes")
        offset, count, total = struct.unpack_from("<III", payload, 0)
        if total > cls.SLOTS or count > total:
            raise SccpProtocolError(f"SoftKeySetRes: {total} sets exceed {cls.SLOTS}")
        sets = []
        for i in range(total):
            raw = payload[12 + 48 * i:12 + 48 * i + cls.KEYS]
            used = tuple(raw.rstrip(b"\0"))
            sets.append(SoftKeySet(used))
        return cls(tuple(sets), offset)


@dataclass(frozen=True)
class ServerEntry:
    name: str
    port: int = 0
    ip_address: str = "0.0.0.0"


@dataclass(frozen=True)
class ServerRes(Message):
    """Up to 5 call-control servers: 5 names (48), then 5 ports, then 5 IPv4 addresses."""

    MESSAGE_ID: ClassVar[int] = 0x009E
    SLOTS: ClassVar[int] = 5
    servers: tuple[ServerEntry, ...] = ()

    def payload(self) -> bytes:
        if len(self.servers) > self.SLOTS:
            raise SccpProtocolError(f"ServerRes: {len(self.servers)} servers exceed 5")
        pad = [ServerEntry("")] * (self.SLOTS - len(self.servers))
        entries = [*self.servers, *pad]
        out = bytearray()
        for e in entries:
            out += _encode_str(e.name, 48, "ServerRes.name")
        for e in entries:
            out += _U32.pack(_check_uint(e.port, 32, "ServerRes.port"))
        for e in entries:
            out += _encode_ip(e.ip_address, "ServerRes.ip_address")
        return bytes(out)

    @classmethod
    def parse(cls, payload: bytes) -> "ServerRes":
        _need(payload, 0, 48 * 5 + 4 * 5 + 4 * 5, "ServerRes")
        out = []
        for i in range(cls.SLOTS):
            name = _decode_str(payload[48 * i:48 * i + 48], "ServerRes.name")
            port = _U32.unpack_from(payload, 240 + 4 * i)[0]
            ip = _decode_ip(payload[260 + 4 * i:264 + 4 * i])
            if name:
                out.append(ServerEntry(name, port, ip))
        return cls(tuple(out))

