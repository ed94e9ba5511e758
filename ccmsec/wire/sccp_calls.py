"""SCCP call-control messages and their code values (sans-IO codecs only).

What a phone sends during calls (OffHook/OnHook/KeypadButton live in `sccp.py`): EnblocCall,
Stimulus, HookFlash, SoftKeyEvent. What call control drives the phone with (StartTone/StopTone,
SetLamp, SetSpeakerMode, CallState, CallInfo, ActivateCallPlane, the media messages are in
`sccp.py`): SetRinger, SelectSoftKeys, DisplayPromptStatus/ClearPromptStatus, DisplayNotify/
ClearNotify, DeactivateCallPlane, DialedNumber, BackSpaceReq.

Layouts: the basic (header version 0) ones of the Wireshark Skinny dissector. Code values (tones,
call states, softkeys…) are the dissector's; the softkey events are the template indexes a real
CallManager 4.1 assigns (Barge 21, cBarge 33).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from ccmsec.wire.sccp import Layout, Message, _parse_optional_tail, _u32

DIRNUM = 24


# -- code values ---------------------------------------------------------------------------------

class Tone(enum.IntEnum):
    SILENCE = 0x00
    DIAL = 0x21           # inside dial tone
    BUSY = 0x23           # line busy
    ALERTING = 0x24       # ring-back heard by the caller
    REORDER = 0x25        # unknown number / failure
    CALL_WAITING = 0x2D
    HOLD = 0x35
    BARGE_IN = 0x43


class RingMode(enum.IntEnum):
    OFF = 1
    INSIDE = 2
    OUTSIDE = 3


class LampMode(enum.IntEnum):
    OFF = 1
    ON = 2
    WINK = 3
    FLASH = 4
    BLINK = 5


class SpeakerMode(enum.IntEnum):
    ON = 1
    OFF = 2


class StimulusType(enum.IntEnum):
    REDIAL = 0x01
    SPEED_DIAL = 0x02
    HOLD = 0x03
    TRANSFER = 0x04
    FORWARD_ALL = 0x05
    LINE = 0x09
    CONFERENCE = 0x7D


class CallStateCode(enum.IntEnum):
    """DCallState: what a call instance on a line is doing, as the phone shows it."""

    IDLE = 0x00
    OFF_HOOK = 0x01
    ON_HOOK = 0x02
    RING_OUT = 0x03
    RING_IN = 0x04
    CONNECTED = 0x05
    BUSY = 0x06
    CONGESTION = 0x07
    HOLD = 0x08
    CALL_WAITING = 0x09
    CALL_TRANSFER = 0x0A
    CALL_PARK = 0x0B
    PROCEED = 0x0C
    REMOTE_MULTILINE = 0x0D  # the shared line is in use on another device
    INVALID_NUMBER = 0x0E


class CallType(enum.IntEnum):
    INBOUND = 1
    OUTBOUND = 2
    FORWARD = 3


class SoftKey(enum.IntEnum):
    """Softkey events = template indexes, as a real CallManager 4.1 numbers them."""

    REDIAL = 1
    NEW_CALL = 2
    HOLD = 3
    TRANSFER = 4
    CFWD_ALL = 5
    CFWD_BUSY = 6
    CFWD_NO_ANSWER = 7
    BACKSPACE = 8
    END_CALL = 9
    RESUME = 10
    ANSWER = 11
    INFO = 12
    CONFERENCE = 13
    PARK = 14
    JOIN = 15
    MEET_ME = 16
    PICKUP = 17
    GROUP_PICKUP = 18
    BARGE = 21
    DIAL = 32
    CBARGE = 33


SOFTKEY_LABELS: dict[SoftKey, str] = {
    SoftKey.REDIAL: "Redial", SoftKey.NEW_CALL: "NewCall", SoftKey.HOLD: "Hold",
    SoftKey.TRANSFER: "Transfer", SoftKey.CFWD_ALL: "CFwdALL", SoftKey.CFWD_BUSY: "CFwdBusy",
    SoftKey.CFWD_NO_ANSWER: "CFwdNoAnswer", SoftKey.BACKSPACE: "<<", SoftKey.END_CALL: "EndCall",
    SoftKey.RESUME: "Resume", SoftKey.ANSWER: "Answer", SoftKey.INFO: "Info",
    SoftKey.CONFERENCE: "Confrn", SoftKey.PARK: "Park", SoftKey.JOIN: "Join",
    SoftKey.MEET_ME: "MeetMe", SoftKey.PICKUP: "PickUp", SoftKey.GROUP_PICKUP: "GPickUp",
    SoftKey.BARGE: "Barge", SoftKey.DIAL: "Dial", SoftKey.CBARGE: "cBarge",
}


class SoftKeySetIndex(enum.IntEnum):
    """Which softkey set a phone shows (SelectSoftKeys.soft_key_set)."""

    ON_HOOK = 0
    CONNECTED = 1
    ON_HOLD = 2
    RING_IN = 3
    OFF_HOOK = 4
    CONNECTED_TRANSFER = 5
    DIGITS_FOLLOWING = 6
    CONNECTED_CONFERENCE = 7
    RING_OUT = 8
    OFF_HOOK_WITH_FEATURES = 9
    IN_USE_HINT = 10


# -- phone -> call control -------------------------------------------------------------------------

@dataclass(frozen=True)
class EnblocCall(Message):
    """The whole number at once (en-bloc dialling); the line instance is optional."""

    MESSAGE_ID: ClassVar[int] = 0x0004
    LAYOUT: ClassVar[Layout] = (("called_party", ("str", DIRNUM)), ("line_instance", "u32"))
    called_party: str = ""
    line_instance: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "EnblocCall":
        return _parse_optional_tail(cls, payload, 1)


@dataclass(frozen=True)
class Stimulus(Message):
    """A button press: line, speed dial, hold, transfer… (`StimulusType` values)."""

    MESSAGE_ID: ClassVar[int] = 0x0005
    LAYOUT: ClassVar[Layout] = _u32("stimulus", "line_instance", "call_reference", "stimulus_status")
    stimulus: int = StimulusType.LINE
    line_instance: int = 0
    call_reference: int = 0
    stimulus_status: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "Stimulus":
        return _parse_optional_tail(cls, payload, 2)



@dataclass(frozen=True)
class HookFlash(Message):
    MESSAGE_ID: ClassVar[int] = 0x0008
    LAYOUT: ClassVar[Layout] = _u32("line_instance", "call_reference")
    line_instance: int = 0
    call_reference: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "HookFlash":
        return _parse_optional_tail(cls, payload, 0)


@dataclass(frozen=True)
class SoftKeyEvent(Message):
    MESSAGE_ID: ClassVar[int] = 0x0026
    LAYOUT: ClassVar[Layout] = _u32("event", "line_instance", "call_reference")
    event: int = SoftKey.NEW_CALL
    line_instance: int = 0
    call_reference: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> "SoftKeyEvent":
        return _parse_optional_tail(cls, payload, 1)


# -- call control -> phone -------------------------------------------------------------------------

@dataclass(frozen=True)
class SetRinger(Message):
    MESSAGE_ID: ClassVar[int] = 0x0085
    LAYOUT: ClassVar[Layout] = _u32("ring_mode", "ring_duration", "line_instance", "call_reference")
    ring_mode: int = RingMode.OFF
    ring_duration: int = 1  # normal
    line_instance: int = 0
    call_reference: int = 0


@dataclass(frozen=True)
class SelectSoftKeys(Message):
    MESSAGE_ID: ClassVar[int] = 0x0110
    LAYOUT: ClassVar[Layout] = _u32("line_instance", "call_reference", "soft_key_set",
                                    "valid_key_mask")
    line_instance: int = 0
    call_reference: int = 0
    soft_key_set: int = SoftKeySetIndex.ON_HOOK
    valid_key_mask: int = 0xFFFFFFFF


@dataclass(frozen=True)
class DisplayPromptStatus(Message):
    MESSAGE_ID: ClassVar[int] = 0x0112
    LAYOUT: ClassVar[Layout] = (("timeout", "u32"), ("text", ("str", 32)),
                                ("line_instance", "u32"), ("call_reference", "u32"))
    timeout: int = 0
    text: str = ""
    line_instance: int = 0
    call_reference: int = 0


@dataclass(frozen=True)
class ClearPromptStatus(Message):
    MESSAGE_ID: ClassVar[int] = 0x0113
    LAYOUT: ClassVar[Layout] = _u32("line_instance", "call_reference")
    line_instance: int = 0
    call_reference: int = 0


@dataclass(frozen=True)
class DisplayNotify(Message):
    MESSAGE_ID: ClassVar[int] = 0x0114
    LAYOUT: ClassVar[Layout] = (("timeout", "u32"), ("text", ("str", 32)))
    timeout: int = 10
    text: str = ""


@dataclass(frozen=True)
class ClearNotify(Message):
    MESSAGE_ID: ClassVar[int] = 0x0115


@dataclass(frozen=True)
class DeactivateCallPlane(Message):
    MESSAGE_ID: ClassVar[int] = 0x0117


@dataclass(frozen=True)
class BackSpaceReq(Message):
    MESSAGE_ID: ClassVar[int] = 0x0119
    LAYOUT: ClassVar[Layout] = _u32("line_instance", "call_reference")
    line_instance: int = 0
    call_reference: int = 0


@dataclass(frozen=True)
class DialedNumber(Message):
    MESSAGE_ID: ClassVar[int] = 0x011D
    LAYOUT: ClassVar[Layout] = (("number", ("str", DIRNUM)), ("line_instance", "u32"),
                                ("call_reference", "u32"))
    number: str = ""
    line_instance: int = 0
    call_reference: int = 0
