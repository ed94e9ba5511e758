"""The answers to a phone's set-up requests after RegisterAck, from its `DeviceProfile`.

Pure: a request and the profile in, the reply messages out. The softkey template offers only
what the core implements (no Park, MeetMe or PickUp), and each softkey set lists the keys a real
CallManager shows in that state — restricted to the device's named softkey set (`SOFTKEY_SETS`).
"""

from __future__ import annotations

import time

from ccmsec.calls.config import AgentSettings, DeviceProfile
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_setup as u
from ccmsec.wire.sccp_calls import (
    SOFTKEY_LABELS,
    DisplayPromptStatus,
    SelectSoftKeys,
    SoftKey,
    SoftKeySetIndex,
)

# The template, in order; sets refer to keys by 1-based position in it.
TEMPLATE: tuple[SoftKey, ...] = (
    SoftKey.REDIAL, SoftKey.NEW_CALL, SoftKey.HOLD, SoftKey.TRANSFER, SoftKey.CFWD_ALL,
    SoftKey.BACKSPACE, SoftKey.END_CALL, SoftKey.RESUME, SoftKey.ANSWER, SoftKey.CONFERENCE,
    SoftKey.BARGE, SoftKey.DIAL, SoftKey.CBARGE,
)

# Named softkey sets an administrator assigns to a device or a device pool (the device's own
# assignment wins; "standard" without one). Each keeps the template's order and drops the keys it
# does not offer from the template and from every state's set, so the phone never shows them; the
# call agent also ignores those keys if pressed anyway.
STANDARD = "standard"
SOFTKEY_SETS: dict[str, frozenset[SoftKey]] = {
    STANDARD: frozenset(TEMPLATE),
    # calls only: no transfer, conference, barge or forward-all from the phone
    "basic": frozenset(TEMPLATE) - {SoftKey.TRANSFER, SoftKey.CONFERENCE, SoftKey.BARGE,
                                    SoftKey.CBARGE, SoftKey.CFWD_ALL},
    # privacy: nobody barges into a shared line's call from this phone
    "no-barge": frozenset(TEMPLATE) - {SoftKey.BARGE, SoftKey.CBARGE},
}


def keys_of(softkey_set: str) -> tuple[SoftKey, ...]:
    """The template of a named softkey set, in order (KeyError: no such set)."""
    allowed = SOFTKEY_SETS[softkey_set]
    return tuple(k for k in TEMPLATE if k in allowed)

SETS: dict[SoftKeySetIndex, tuple[SoftKey, ...]] = {
    SoftKeySetIndex.ON_HOOK: (SoftKey.REDIAL, SoftKey.NEW_CALL, SoftKey.CFWD_ALL),
    SoftKeySetIndex.CONNECTED: (SoftKey.HOLD, SoftKey.END_CALL, SoftKey.TRANSFER,
                                SoftKey.CONFERENCE),
    SoftKeySetIndex.ON_HOLD: (SoftKey.RESUME, SoftKey.NEW_CALL, SoftKey.END_CALL),
    SoftKeySetIndex.RING_IN: (SoftKey.ANSWER, SoftKey.END_CALL),
    SoftKeySetIndex.OFF_HOOK: (SoftKey.REDIAL, SoftKey.END_CALL, SoftKey.CFWD_ALL),
    SoftKeySetIndex.CONNECTED_TRANSFER: (SoftKey.HOLD, SoftKey.END_CALL, SoftKey.TRANSFER),
    SoftKeySetIndex.DIGITS_FOLLOWING: (SoftKey.BACKSPACE, SoftKey.END_CALL, SoftKey.DIAL),
    SoftKeySetIndex.CONNECTED_CONFERENCE: (SoftKey.HOLD, SoftKey.END_CALL, SoftKey.CONFERENCE),
    SoftKeySetIndex.RING_OUT: (SoftKey.END_CALL, SoftKey.TRANSFER, SoftKey.CONFERENCE),
    SoftKeySetIndex.OFF_HOOK_WITH_FEATURES: (SoftKey.REDIAL, SoftKey.END_CALL),
    SoftKeySetIndex.IN_USE_HINT: (SoftKey.NEW_CALL, SoftKey.BARGE, SoftKey.CBARGE),
}

SETUP_REQUESTS = (u.ButtonTemplateReq, u.SoftKeyTemplateReq, u.SoftKeySetReq, u.LineStatReq,
                  u.SpeedDialStatReq, u.ForwardStatReq, u.ConfigStatReq, u.TimeDateReq,
                  u.ServerReq, u.VersionReq, u.RegisterAvailableLines)


def button_template(profile: DeviceProfile) -> u.ButtonTemplate:
    buttons = [u.Button(i, u.ButtonType.LINE) for i in range(1, len(profile.lines) + 1)]
    buttons += [u.Button(sd.index, u.ButtonType.SPEED_DIAL) for sd in profile.speed_dials]
    return u.ButtonTemplate(tuple(buttons[: u.ButtonTemplate.SLOTS]))


def softkey_template(softkey_set: str = STANDARD) -> u.SoftKeyTemplateRes:
    return u.SoftKeyTemplateRes(tuple(u.SoftKeyDefinition(SOFTKEY_LABELS[k], int(k))
                                      for k in keys_of(softkey_set)))


def softkey_sets(softkey_set: str = STANDARD) -> u.SoftKeySetRes:
    """Per call state, the keys of that state this set offers, by position in its template."""
    position = {key: index + 1 for index, key in enumerate(keys_of(softkey_set))}
    ordered = [SETS[SoftKeySetIndex(i)] for i in range(len(SETS))]
    return u.SoftKeySetRes(tuple(u.SoftKeySet(tuple(position[k] for k in keys if k in position))
                                 for keys in ordered))


def time_date(wall: float) -> s.DefineTimeDate:
    t = time.gmtime(wall)
    return s.DefineTimeDate(year=t.tm_year, month=t.tm_mon, day_of_week=(t.tm_wday + 1) % 7,
                            day=t.tm_mday, hour=t.tm_hour, minute=t.tm_min, second=t.tm_sec,
                            milliseconds=int((wall % 1) * 1000), system_time=int(wall))


def forward_stat(line_number: int, profile: DeviceProfile, forward_all: str) -> u.ForwardStat:
    if not 1 <= line_number <= len(profile.lines):
        return u.ForwardStat(line_number=line_number)
    line = profile.lines[line_number - 1]
    active = int(bool(forward_all or line.forward_busy or line.forward_no_answer))
    return u.ForwardStat(
        active_forward=active, line_number=line_number,
        forward_all_active=int(bool(forward_all)), forward_all_number=forward_all,
        forward_busy_active=int(bool(line.forward_busy)), forward_busy_number=line.forward_busy,
        forward_no_answer_active=int(bool(line.forward_no_answer)),
        forward_no_answer_number=line.forward_no_answer)


def skinny_text(value: str, size: int = 39) -> str:
    """Text for a Skinny string field (ASCII, NUL-terminated): printable ASCII kept, anything else
    shown as '?', at most `size` characters. New labels are refused at input
    (`ccmsec.textsafe.checked_text`, printable ASCII), but a row stored before that check may hold
    any text; it must not make the message unencodable (SccpProtocolError in the pump, which would
    drop what was queued for the other phones as well)."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in value[:size])


def answer(message: s.Message, profile: DeviceProfile, settings: AgentSettings, wall: float,
           forward_all: dict[str, str]) -> list[s.Message]:
    """Replies to one set-up request (an empty list for RegisterAvailableLines, as a real
    CallManager sends none). `forward_all`: directory number -> forward-all target."""
    if isinstance(message, u.ButtonTemplateReq):
        return [button_template(profile)]
    if isinstance(message, u.SoftKeyTemplateReq):
        return [softkey_template(profile.softkey_set)]
    if isinstance(message, u.SoftKeySetReq):
        # A real CallManager then selects the on-hook set and says "Your current options".
        return [softkey_sets(profile.softkey_set), SelectSoftKeys(0, 0, SoftKeySetIndex.ON_HOOK),
                DisplayPromptStatus(0, "Your current options")]
    if isinstance(message, u.LineStatReq):
        n = message.line_number
        if not 1 <= n <= len(profile.lines):
            return [u.LineStat(line_number=n)]
        line = profile.lines[n - 1]
        name = line.display_name or profile.user or line.dn
        label = line.label or (line.dn if name == line.dn else f"{name} {line.dn}")
        return [u.LineStat(n, line.dn, skinny_text(name), skinny_text(label))]
    if isinstance(message, u.SpeedDialStatReq):
        sd = next((d for d in profile.speed_dials if d.index == message.speed_dial_number), None)
        if sd is None:
            return [u.SpeedDialStat(message.speed_dial_number)]
        return [u.SpeedDialStat(sd.index, sd.number, skinny_text(sd.label or sd.number))]
    if isinstance(message, u.ForwardStatReq):
        n = message.line_number
        dn = profile.lines[n - 1].dn if 1 <= n <= len(profile.lines) else ""
        return [forward_stat(n, profile, forward_all.get(dn, ""))]
    if isinstance(message, u.ConfigStatReq):
        return [u.ConfigStat(profile.name, 0, 1, profile.user[:39], settings.server_name[:39],
                             len(profile.lines), len(profile.speed_dials))]
    if isinstance(message, u.TimeDateReq):
        return [time_date(wall)]
    if isinstance(message, u.ServerReq):
        return [u.ServerRes(tuple(u.ServerEntry(name[:47], port, ip)
                                  for name, ip, port in settings.servers[:5]))]
    if isinstance(message, u.VersionReq):
        return [u.Version("ccmsec")]
    return []
