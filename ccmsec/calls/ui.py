"""What a phone is told, per leg state: the SCCP message sequences that drive its display.

Each function returns the messages for one transition (off-hook, ringing, connected, hold,
failed, cleared, in use remote); the agent sends them and, after every change, a CallInfo with
the call's security status as that phone must show it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ccmsec.calls.setup import SETS, SOFTKEY_SETS, skinny_text
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import (
    CallStateCode,
    CallType,
    ClearPromptStatus,
    DisplayPromptStatus,
    LampMode,
    RingMode,
    SelectSoftKeys,
    SetRinger,
    SoftKey,
    SoftKeySetIndex as Keys,
    SpeakerMode,
    StimulusType,
    Tone,
)

if TYPE_CHECKING:
    from ccmsec.calls.model import Call, Leg, Station


def _lamp(line: int, mode: LampMode) -> s.SetLamp:
    return s.SetLamp(StimulusType.LINE, line, mode)


def _state(code: CallStateCode, leg: "Leg") -> s.CallState:
    return s.CallState(code, leg.line, leg.reference)


def _prompt(text: str, leg: "Leg") -> DisplayPromptStatus:
    return DisplayPromptStatus(0, text[:31], leg.line, leg.reference)


# CallInfo's party number fields are 24 bytes, and a directory number has at most 24 characters:
# a 24-digit number fills its field whole, with no NUL after it (decoders, ours and Wireshark's,
# read a fixed field to its first NUL or its end). Longer text is cut to the field, never refused
# mid-call by the codec.
PARTY_NUMBER = 24
# Its party name fields are 40 bytes, and a display name has at most 40 characters (refused at
# input beyond): a 40-character name fills its field whole, with no NUL after it, like a number.
# A name is printable ASCII at input too, but a row stored before that check may hold any text: it
# is shown with '?' for the rest (as LineStat shows it), never left to make the CallInfo
# unencodable (SccpProtocolError in the service's pump, losing what was queued for other phones).
PARTY_NAME = 40


def _number(dn: str) -> str:
    return dn[:PARTY_NUMBER]


def _name(name: str) -> str:
    return skinny_text(name, PARTY_NAME)


def off_hook(leg: "Leg") -> list[s.Message]:
    return [_lamp(leg.line, LampMode.ON), _state(CallStateCode.OFF_HOOK, leg),
            SelectSoftKeys(leg.line, leg.reference, Keys.OFF_HOOK),
            _prompt("Enter number", leg), s.ActivateCallPlane(leg.line),
            s.StartTone(Tone.DIAL, 0, leg.line, leg.reference)]


def first_digit(leg: "Leg") -> list[s.Message]:
    return [s.StopTone(leg.line, leg.reference),
            SelectSoftKeys(leg.line, leg.reference, Keys.DIGITS_FOLLOWING)]


def ring_out(leg: "Leg", call: "Call") -> list[s.Message]:
    return [s.StopTone(leg.line, leg.reference), _state(CallStateCode.PROCEED, leg),
            _state(CallStateCode.RING_OUT, leg),
            s.StartTone(Tone.ALERTING, 0, leg.line, leg.reference),
            SelectSoftKeys(leg.line, leg.reference, Keys.RING_OUT),
            _prompt(f"Ring Out {call.called_dn}", leg)]


def ringing(leg: "Leg", call: "Call") -> list[s.Message]:
    return [_state(CallStateCode.RING_IN, leg), _lamp(leg.line, LampMode.BLINK),
            SetRinger(RingMode.INSIDE, 1, leg.line, leg.reference),
            SelectSoftKeys(leg.line, leg.reference, Keys.RING_IN),
            _prompt(f"From {call.calling_dn}", leg)]


def shown_as_conference(call: "Call") -> bool:
    """The call shows as a conference: three or more on the bridge (a conference, a cBarge). Two
    left on it — a conference down to two whose parties share no codec — are a two-party call."""
    return call.bridge and len(call.legs) > 2


# A barge's initiator is a party through its target's built-in bridge (Barge) or the conference
# bridge (cBarge, a barge into a conference): as in CallManager it cannot transfer or conference
# that call, so its connected set shows neither key (Hold and EndCall stay: a hold by the
# initiator leaves the barge and a resume mixes it in again). The call agent refuses the key if a
# phone sends it anyway (`agent.BARGE_NO_TRANSFER`).
BARGE_WITHHELD = frozenset({SoftKey.TRANSFER, SoftKey.CONFERENCE, SoftKey.JOIN})


def is_barge_initiator(leg: "Leg", call: "Call | None") -> bool:
    return call is not None and call.barge is not None and call.barge.initiator is leg


def valid_key_mask(leg: "Leg", keys: Keys, withheld: frozenset[SoftKey] = frozenset()) -> int:
    """SelectSoftKeys' valid-key mask: bit i for the i-th key of set `keys` as this device has it
    (its named softkey set drops keys, `setup.softkey_sets`), cleared for each key `withheld` —
    how a CallManager takes a key of a set away for one call without another set."""
    if not withheld:
        return 0xFFFFFFFF
    allowed = SOFTKEY_SETS[leg.station.profile.softkey_set]
    shown = [k for k in SETS[keys] if k in allowed]
    return sum(1 << i for i, k in enumerate(shown) if k not in withheld)


def connected_keys(leg: "Leg", call: "Call", *, conference: bool = False) -> SelectSoftKeys:
    """The connected softkey set of `leg` in `call`: the conference's (Confrn) on a bridge of three
    or more, else the two-party one (Transfer, Confrn); a barge's initiator gets neither key."""
    keys = Keys.CONNECTED_CONFERENCE if conference or shown_as_conference(call) else Keys.CONNECTED
    withheld = BARGE_WITHHELD if is_barge_initiator(leg, call) else frozenset()
    return SelectSoftKeys(leg.line, leg.reference, keys, valid_key_mask(leg, keys, withheld))


def connected(leg: "Leg", call: "Call", *, conference: bool = False) -> list[s.Message]:
    conference = conference or shown_as_conference(call)
    return [s.StopTone(leg.line, leg.reference), SetRinger(RingMode.OFF, 1, leg.line, leg.reference),
            _lamp(leg.line, LampMode.ON), _state(CallStateCode.CONNECTED, leg),
            connected_keys(leg, call, conference=conference),
            _prompt("Conference" if conference else "Connected", leg),
            s.ActivateCallPlane(leg.line)]


def two_party_again(leg: "Leg") -> list[s.Message]:
    """A connected party of a conference (or cBarge) down to two: the connected softkeys
    (Transfer, Confrn…) and prompt, in place of the conference's, without waiting for a resume."""
    return [SelectSoftKeys(leg.line, leg.reference, Keys.CONNECTED), _prompt("Connected", leg)]


def hold(leg: "Leg") -> list[s.Message]:
    return [_state(CallStateCode.HOLD, leg), _lamp(leg.line, LampMode.WINK),
            SelectSoftKeys(leg.line, leg.reference, Keys.ON_HOLD), _prompt("Hold", leg)]


def failed(leg: "Leg", tone: Tone, text: str) -> list[s.Message]:
    if tone == Tone.BUSY:
        code = CallStateCode.BUSY
    elif text == "Unknown Number":
        code = CallStateCode.INVALID_NUMBER
    else:
        code = CallStateCode.CONGESTION
    return [s.StopTone(leg.line, leg.reference), _state(code, leg),
            s.StartTone(tone, 0, leg.line, leg.reference),
            SelectSoftKeys(leg.line, leg.reference, Keys.OFF_HOOK_WITH_FEATURES),
            _prompt(text, leg)]


def cleared(leg: "Leg", *, line_idle: bool, device_idle: bool) -> list[s.Message]:
    out: list[s.Message] = [s.StopTone(leg.line, leg.reference)]
    if leg.state.value == "ringing":
        out.append(SetRinger(RingMode.OFF, 1, leg.line, leg.reference))
    out += [_state(CallStateCode.ON_HOOK, leg), ClearPromptStatus(leg.line, leg.reference),
            SelectSoftKeys(leg.line, leg.reference, Keys.ON_HOOK)]
    if line_idle:
        out.append(_lamp(leg.line, LampMode.OFF))
    if device_idle:
        out.append(s.SetSpeakerMode(SpeakerMode.OFF))
    return out


def in_use_remote(leg: "Leg", call: "Call") -> list[s.Message]:
    """A ringing shared appearance whose call was answered on another device."""
    return [SetRinger(RingMode.OFF, 1, leg.line, leg.reference),
            _state(CallStateCode.REMOTE_MULTILINE, leg),
            SelectSoftKeys(leg.line, leg.reference, Keys.IN_USE_HINT),
            _prompt("In Use Remote", leg)]


def in_use_hint(st: "Station", line: int, reference: int, call: "Call",
                status: int) -> list[s.Message]:
    """An idle shared appearance: the line's call is in use on another device."""
    return [s.CallState(CallStateCode.REMOTE_MULTILINE, line, reference),
            hint_info(line, reference, call, status),
            SelectSoftKeys(line, reference, Keys.IN_USE_HINT)]


def original_called(call: "Call") -> str:
    """CallInfo's original called party: the number the caller dialled when forwarding sent the
    call on to another, "" for a call not forwarded. One rule for every CallInfo of the call —
    a party's, and an "in use remote" appearance's as it rang and each time it is sent again —
    so a conference or a transfer, which change the called number, never make a call look
    forwarded, and a re-sent hint never loses it (a CallInfo replaces all the phone shows)."""
    return _number(call.original_called) if call.forwarded else ""


def hint_shows(call: "Call") -> tuple[str, str, str]:
    """What an appearance showing `call` "in use remote" reads: (calling number, calling name,
    called number) — the call's, as its parties change (a transfer, a conference). Its original
    called number (`original_called`) is set while the call rings and never changes after."""
    return call.calling_dn, call.calling_name, call.called_dn


def hint_info(line: int, reference: int, call: "Call", status: int) -> s.CallInfo:
    """The CallInfo of an "in use remote" appearance: who is in the line's call now, the number
    first dialled when the call was forwarded, as the appearance read it when it rang, and the
    call's security status (CALL-2: its lock icon follows the call's, never 0, unknown)."""
    calling, name, called = hint_shows(call)
    return s.CallInfo(calling_party_name=_name(name), calling_party=_number(calling),
                      called_party=_number(called), line_instance=line, call_reference=reference,
                      call_type=CallType.INBOUND, original_called_party=original_called(call),
                      call_security_status=status)


def party_number(leg: "Leg") -> str:
    """The number a leg's party is shown by: its line's, or for a trunk's or gateway's leg the
    number dialled through it (not the device's own line)."""
    return leg.shown_dn or leg.dn


def party_name(leg: "Leg") -> str:
    """The name a leg's party is shown by: its line's display name, else the device's user,
    else its number."""
    line = leg.station.line(leg.line)
    return (line.display_name if line else "") or leg.station.profile.user or party_number(leg)


def call_info(leg: "Leg", call: "Call", status: int) -> s.CallInfo:
    outbound = leg.role == "caller"
    if leg.far is not None:
        # After a transfer: the party this leg is now connected to, on the side its direction
        # shows (the called party of an outbound call, the calling party of an inbound one).
        far_number, far_name = _number(leg.far[0]), _name(leg.far[1])
        own_number, own_name = _number(party_number(leg)), _name(party_name(leg))
        return s.CallInfo(
            calling_party_name=own_name if outbound else far_name,
            calling_party=own_number if outbound else far_number,
            called_party_name=far_name if outbound else own_name,
            called_party=far_number if outbound else own_number,
            line_instance=leg.line, call_reference=leg.reference,
            call_type=CallType.OUTBOUND if outbound else CallType.INBOUND, call_instance=1,
            original_called_party=original_called(call), call_security_status=status)
    return s.CallInfo(
        calling_party_name=_name(call.calling_name), calling_party=_number(call.calling_dn),
        called_party=_number(call.called_dn), line_instance=leg.line, call_reference=leg.reference,
        call_type=CallType.OUTBOUND if outbound else CallType.INBOUND,
        original_called_party=original_called(call), call_instance=1,
        call_security_status=status)
