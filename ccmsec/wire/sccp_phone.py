"""The phone side of SCCP after registration — sans-IO: what a phone shows and what it sends.

`SccpPhone` runs the set-up exchange a real phone makes after RegisterAck (button template,
softkey template and sets, config, line / speed-dial / forward state, time, servers, available
lines) and shows its lines and softkeys only once every answer is in (`ready`). It then keeps,
per call reference, what the display shows — state, parties, tone, ringer, softkeys, prompt and the
call's security status as an icon (lock = encrypted, shield = authenticated, none) — and turns
user actions (off-hook, digits, softkeys…) into messages. A softkey is pressed only when the
current softkey set offers it, as on a real phone.

Media: OpenReceiveChannel produces an `OpenChannel` event; the caller opens a real UDP socket and
calls `channel_opened(party_id, ip, port)`, which answers OpenReceiveChannelAck with that address.
StartMediaTransmission / StopMediaTransmission / CloseReceiveChannel produce `StartTransmit`,
`StopTransmit` and `CloseChannel` for the same channel object (the media seam: RTP/SRTP plug in
there). Messages in, messages and events out; no sockets, no clock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field, replace

from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire import sccp_setup as u
from ccmsec.wire.sccp_calls import CallStateCode, SoftKey, SoftKeySetIndex
from ccmsec.wire.sccp_userdata import UserToDeviceData

MAX_CALLS = 64        # call references a phone tracks at once (a misbehaving server is bounded)
MAX_CHANNELS = 16
MAX_DIGITS = 24
HISTORY = 32
KEYPAD_CODES = {**{str(i): i for i in range(10)}, "*": 0x0E, "#": 0x0F, "+": 0x10}

ICONS = {3: "lock", 2: "shield"}   # CallInfo status -> what the phone displays (else "none")


class PhoneActionError(Exception):
    """The phone cannot do that now (no such call, softkey not offered, not ready…)."""


@dataclass(frozen=True)
class LineInfo:
    number: str
    display_name: str = ""
    label: str = ""


@dataclass
class PhoneCall:
    """One call reference as the phone displays it."""

    reference: int
    line: int
    state: CallStateCode = CallStateCode.OFF_HOOK
    calling: str = ""
    calling_name: str = ""
    called: str = ""
    original_called: str = ""
    call_type: int = 0
    security: int = 0
    softkey_set: int = -1
    softkey_mask: int = 0xFFFFFFFF   # SelectSoftKeys' valid-key mask: bit i, the set's i-th key
    prompt: str = ""
    tone: int = 0
    ringing: bool = False
    dialed: str = ""
    last_tone: int = 0

    @property
    def icon(self) -> str:
        """CALL-2: lock only while the media is encrypted; shield when authenticated."""
        return ICONS.get(self.security, "none")

    @property
    def state_name(self) -> str:
        return self.state.name.lower().replace("_", "-")


@dataclass
class MediaChannel:
    """One receive/transmit pair the call agent asked for (a pass-through party)."""

    party_id: int
    call_reference: int
    conference_id: int
    codec: int
    rx_encryption: s.EncryptionInfo = field(default_factory=s.EncryptionInfo)
    rx: tuple[str, int] | None = None
    tx: tuple[str, int] | None = None
    tx_encryption: s.EncryptionInfo = field(default_factory=s.EncryptionInfo)


@dataclass(frozen=True)
class SetupComplete:
    lines: int
    speed_dials: int


@dataclass(frozen=True)
class CallChanged:
    reference: int


@dataclass(frozen=True)
class CallEnded:
    call: PhoneCall


@dataclass(frozen=True)
class OpenChannel:
    channel: MediaChannel


@dataclass(frozen=True)
class StartTransmit:
    channel: MediaChannel


@dataclass(frozen=True)
class StopTransmit:
    channel: MediaChannel


@dataclass(frozen=True)
class CloseChannel:
    channel: MediaChannel


@dataclass(frozen=True)
class Notified:
    text: str


class SccpPhone:
    def __init__(self, device_name: str) -> None:
        self.device_name = device_name
        self._out: list[s.Message] = []
        self.buttons: tuple[u.Button, ...] | None = None
        self.softkeys: dict[int, SoftKey | int] = {}          # template position -> event
        self.softkey_labels: dict[int, str] = {}
        self.softkey_sets: list[tuple[int, ...]] | None = None
        self.config: u.ConfigStat | None = None
        self.time: s.DefineTimeDate | None = None
        self.servers: tuple[u.ServerEntry, ...] = ()
        self.lines: dict[int, LineInfo] = {}
        self.speed_dials: dict[int, tuple[str, str]] = {}
        self.forward: dict[int, u.ForwardStat] = {}
        self.calls: dict[int, PhoneCall] = {}
        self.channels: dict[int, MediaChannel] = {}
        self.ended: collections.deque[PhoneCall] = collections.deque(maxlen=HISTORY)
        self.notifications: collections.deque[str] = collections.deque(maxlen=HISTORY)
        self.idle_softkeys: int = -1
        self.mobility: object | None = None   # the last extension-mobility answer (MobilityResult)
        self._mobility_txn = 0
        self.speaker = False
        self.ready = False
        self._setup_started = False
        self.ignored = 0

    # -- output ----------------------------------------------------------------------------
    def messages_to_send(self) -> list[s.Message]:
        out, self._out = self._out, []
        return out

    def _send(self, *messages: s.Message) -> None:
        self._out.extend(messages)

    # -- set-up --------------------------------------------------------------------------------
    def start_setup(self) -> None:
        """After RegisterAck: ask for everything the display needs."""
        self._setup_started = True
        self._send(u.ButtonTemplateReq(), u.SoftKeyTemplateReq(), u.SoftKeySetReq(),
                   u.ConfigStatReq(), u.TimeDateReq(), u.ServerReq())

    def _line_buttons(self) -> list[int]:
        return [b.instance for b in self.buttons or () if b.kind == u.ButtonType.LINE]

    def _speed_buttons(self) -> list[int]:
        return [b.instance for b in self.buttons or () if b.kind == u.ButtonType.SPEED_DIAL]

    def _check_ready(self, events: list[object]) -> None:
        if self.ready or self.buttons is None or self.softkey_sets is None or not self.softkeys \
                or self.config is None or self.time is None:
            return
        lines, speeds = self._line_buttons(), self._speed_buttons()
        if set(lines) - set(self.lines) or set(speeds) - set(self.speed_dials) \
                or set(lines) - set(self.forward):
            return
        self.ready = True
        events.append(SetupComplete(len(lines), len(speeds)))

    # -- input ---------------------------------------------------------------------------------
    def handle(self, message: s.Message) -> list[object]:
        events: list[object] = []
        handler = _HANDLERS.get(type(message))
        if handler is None:
            self.ignored += 1
        else:
            handler(self, message, events)
        return events

    def _on_buttons(self, m: u.ButtonTemplate, events: list) -> None:
        self.buttons = m.buttons
        for instance in self._line_buttons():
            self._send(u.LineStatReq(instance), u.ForwardStatReq(instance))
        for instance in self._speed_buttons():
            self._send(u.SpeedDialStatReq(instance))
        self._send(u.RegisterAvailableLines(max(1, len(self._line_buttons()))))
        self._check_ready(events)

    def _on_softkey_template(self, m: u.SoftKeyTemplateRes, events: list) -> None:
        self.softkeys = {i: d.event for i, d in enumerate(m.definitions, 1)}
        self.softkey_labels = {i: d.label for i, d in enumerate(m.definitions, 1)}
        self._check_ready(events)

    def _on_softkey_sets(self, m: u.SoftKeySetRes, events: list) -> None:
        self.softkey_sets = [ks.template_indexes for ks in m.sets]
        self._check_ready(events)

    def _on_config(self, m: u.ConfigStat, events: list) -> None:
        self.config = m
        self._check_ready(events)

    def _on_time(self, m: s.DefineTimeDate, events: list) -> None:
        self.time = m
        self._check_ready(events)

    def _on_servers(self, m: u.ServerRes, events: list) -> None:
        self.servers = m.servers

    def _on_line(self, m: u.LineStat, events: list) -> None:
        if m.line_number in self._line_buttons():
            self.lines[m.line_number] = LineInfo(m.number, m.display_name, m.label)
            self._check_ready(events)
        else:
            self.ignored += 1

    def _on_speed_dial(self, m: u.SpeedDialStat, events: list) -> None:
        if m.speed_dial_number in self._speed_buttons():
            self.speed_dials[m.speed_dial_number] = (m.number, m.display_name)
            self._check_ready(events)
        else:
            self.ignored += 1

    def _on_forward(self, m: u.ForwardStat, events: list) -> None:
        if m.line_number in self._line_buttons() or not self.buttons:
            self.forward[m.line_number] = m
            self._check_ready(events)
        else:
            self.ignored += 1

    # call display --------------------------------------------------------------------------------
    def _call(self, line: int, reference: int, create: bool = True) -> PhoneCall | None:
        call = self.calls.get(reference)
        if call is None and create and reference:
            if len(self.calls) >= MAX_CALLS:
                self.ignored += 1
                return None
            call = self.calls[reference] = PhoneCall(reference, line)
        return call

    def _on_call_state(self, m: s.CallState, events: list) -> None:
        if m.call_state == CallStateCode.ON_HOOK:
            call = self.calls.pop(m.call_reference, None)
            if call is not None:
                call.state = CallStateCode.ON_HOOK
                self.ended.append(call)
                events.append(CallEnded(call))
            return
        call = self._call(m.line_instance, m.call_reference)
        if call is None:
            return
        try:
            call.state = CallStateCode(m.call_state)
        except ValueError:
            self.ignored += 1
            return
        call.line = m.line_instance or call.line
        events.append(CallChanged(call.reference))

    def _on_call_info(self, m: s.CallInfo, events: list) -> None:
        call = self._call(m.line_instance, m.call_reference)
        if call is None:
            return
        call.calling, call.calling_name = m.calling_party, m.calling_party_name
        call.called, call.original_called = m.called_party, m.original_called_party
        call.call_type, call.security = m.call_type, m.call_security_status
        events.append(CallChanged(call.reference))

    def _on_softkeys(self, m: c.SelectSoftKeys, events: list) -> None:
        call = self.calls.get(m.call_reference) if m.call_reference else None
        if call is not None:
            call.softkey_set = m.soft_key_set
            call.softkey_mask = m.valid_key_mask
            events.append(CallChanged(call.reference))
        elif not m.call_reference:
            self.idle_softkeys = m.soft_key_set

    def _on_prompt(self, m: c.DisplayPromptStatus, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.prompt = m.text

    def _on_clear_prompt(self, m: c.ClearPromptStatus, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.prompt = ""

    def _on_notify(self, m: c.DisplayNotify, events: list) -> None:
        self.notifications.append(m.text)
        events.append(Notified(m.text))

    def _on_start_tone(self, m: s.StartTone, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.tone = call.last_tone = m.tone
            events.append(CallChanged(call.reference))

    def _on_stop_tone(self, m: s.StopTone, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.tone = 0

    def _on_ringer(self, m: c.SetRinger, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.ringing = m.ring_mode != c.RingMode.OFF

    def _on_dialed(self, m: c.DialedNumber, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.dialed = m.number

    def _on_backspace(self, m: c.BackSpaceReq, events: list) -> None:
        call = self.calls.get(m.call_reference)
        if call is not None:
            call.dialed = call.dialed[:-1]

    def _on_speaker(self, m: s.SetSpeakerMode, events: list) -> None:
        self.speaker = m.mode == c.SpeakerMode.ON

    def _on_nothing(self, m: s.Message, events: list) -> None:
        """Shown on a real display (lamps, call plane); nothing to keep here."""

    # media -----------------------------------------------------------------------------------------
    def _on_open(self, m: s.OpenReceiveChannel, events: list) -> None:
        if m.pass_thru_party_id in self.channels or len(self.channels) >= MAX_CHANNELS:
            self.ignored += 1
            self._send(s.OpenReceiveChannelAck(1, "0.0.0.0", 0, m.pass_thru_party_id,
                                               m.call_reference))
            return
        ch = MediaChannel(m.pass_thru_party_id, m.call_reference, m.conference_id,
                          m.compression_type, m.encryption)
        self.channels[ch.party_id] = ch
        events.append(OpenChannel(ch))

    def _on_start_media(self, m: s.StartMediaTransmission, events: list) -> None:
        ch = self.channels.get(m.pass_thru_party_id)
        if ch is None:
            self.ignored += 1
            return
        ch.tx = (m.remote_ip, m.remote_port)
        ch.tx_encryption = m.encryption
        ch.codec = m.compression_type
        events.append(StartTransmit(ch))

    def _on_stop_media(self, m: s.StopMediaTransmission, events: list) -> None:
        ch = self.channels.get(m.pass_thru_party_id)
        if ch is None or ch.tx is None:
            self.ignored += 1
            return
        ch.tx = None
        events.append(StopTransmit(ch))

    def _on_close(self, m: s.CloseReceiveChannel, events: list) -> None:
        ch = self.channels.pop(m.pass_thru_party_id, None)
        if ch is None:
            self.ignored += 1
            return
        if ch.tx is not None:
            ch.tx = None
            events.append(StopTransmit(ch))
        events.append(CloseChannel(ch))

    def channel_opened(self, party_id: int, ip: str, port: int) -> None:
        """The caller opened the receive socket: tell call control where to send."""
        ch = self.channels.get(party_id)
        if ch is None:
            return  # closed meanwhile
        ch.rx = (ip, port)
        self._send(s.OpenReceiveChannelAck(0, ip, port, party_id, ch.call_reference))

    def channel_failed(self, party_id: int) -> None:
        ch = self.channels.pop(party_id, None)
        if ch is not None:
            self._send(s.OpenReceiveChannelAck(1, "0.0.0.0", 0, party_id, ch.call_reference))

    # -- user actions ----------------------------------------------------------------------------
    def _require_ready(self) -> None:
        if not self.ready:
            raise PhoneActionError(f"{self.device_name} has not finished its set-up after "
                                   "registration (no lines or softkeys yet)")

    def active_call(self) -> PhoneCall | None:
        for call in self.calls.values():
            if call.state not in (CallStateCode.HOLD, CallStateCode.RING_IN,
                                  CallStateCode.REMOTE_MULTILINE):
                return call
        return None

    def find(self, reference: int = 0, *, states: tuple[CallStateCode, ...] = ()) -> PhoneCall:
        if reference:
            call = self.calls.get(reference)
            if call is None:
                raise PhoneActionError(f"{self.device_name} has no call {reference}")
            return call
        for call in self.calls.values():
            if not states or call.state in states:
                return call
        wanted = "/".join(st.name.lower() for st in states) or "any"
        raise PhoneActionError(f"{self.device_name} has no {wanted} call")

    def _shown_positions(self, call: PhoneCall | None) -> list[int]:
        """Template positions of the keys the display shows for `call` (or idle): its set's keys
        whose bit in the SelectSoftKeys valid-key mask is set (bit i: the set's i-th key)."""
        index = call.softkey_set if call is not None else self.idle_softkeys
        if self.softkey_sets is None or not 0 <= index < len(self.softkey_sets):
            return []
        mask = call.softkey_mask if call is not None else 0xFFFFFFFF
        return [p for i, p in enumerate(self.softkey_sets[index]) if mask >> i & 1]

    def offered(self, call: PhoneCall | None) -> list[int]:
        """The softkey events the display offers for `call` (or idle)."""
        return [int(self.softkeys[i]) for i in self._shown_positions(call) if i in self.softkeys]

    def offered_names(self, call: PhoneCall | None) -> list[str]:
        return [self.softkey_labels[i] for i in self._shown_positions(call)
                if i in self.softkey_labels]

    def press(self, key: SoftKey, call: PhoneCall | None = None, line: int = 0) -> None:
        """Press a softkey the display offers (for `call`, or the idle set)."""
        self._require_ready()
        if int(key) not in self.offered(call):
            where = f"call {call.reference} ({call.state_name})" if call is not None else "idle"
            raise PhoneActionError(f"{self.device_name}: softkey {key.name} is not offered "
                                   f"({where} shows {', '.join(self.offered_names(call)) or 'none'})")
        self._send(c.SoftKeyEvent(key, line or (call.line if call else 0),
                                  call.reference if call else 0))

    def off_hook(self, line: int = 0) -> None:
        self._require_ready()
        if line and line not in self.lines:
            raise PhoneActionError(f"{self.device_name} has no line {line}")
        self._send(s.OffHook(line, 0))

    def on_hook(self) -> None:
        self._send(s.OnHook(0, 0))

    def keypad(self, digits: str) -> None:
        """Press keypad buttons, one message per digit (bounded: a number and the '#' ending it)."""
        self._require_ready()
        bad = [d for d in digits if d not in KEYPAD_CODES]
        if bad or len(digits.removesuffix("#")) > MAX_DIGITS:
            raise PhoneActionError(f"digits must be 0-9 * # +, at most {MAX_DIGITS} "
                                   f"(and a '#' ending them): {digits!r}")
        active = self.active_call()
        line, ref = (active.line, active.reference) if active is not None else (0, 0)
        for d in digits:
            self._send(s.KeypadButton(KEYPAD_CODES[d], line, ref))

    def dial(self, number: str, line: int = 0) -> None:
        """Go off-hook and dial the whole number at once (en-bloc). A '#' ending it only ends
        dialling: a number of the full 24 digits is sent without it (the field holds 24)."""
        self._require_ready()
        if not number or any(d not in KEYPAD_CODES for d in number):
            raise PhoneActionError(f"{number!r} is not a number (0-9 * # +, at most {MAX_DIGITS})")
        if len(number.removesuffix("#")) > MAX_DIGITS:
            raise PhoneActionError(f"{number!r} is not a number: {len(number.removesuffix('#'))} "
                                   f"digits, a number has at most {MAX_DIGITS}")
        if line and line not in self.lines:
            raise PhoneActionError(f"{self.device_name} has no line {line}")
        if len(number) > c.DIRNUM:
            number = number.removesuffix("#")
        self._send(c.EnblocCall(number, line or 1))

    def answer(self, reference: int = 0) -> PhoneCall:
        call = self.find(reference, states=(CallStateCode.RING_IN,))
        self.press(SoftKey.ANSWER, call)
        return call

    def hang_up(self, reference: int = 0) -> PhoneCall:
        if reference:
            call = self.find(reference)
        else:
            call = self.active_call() or self.find(states=(CallStateCode.RING_IN,
                                                           CallStateCode.HOLD))
        if call.state == CallStateCode.RING_IN:
            self.press(SoftKey.END_CALL, call)
        else:
            self._send(c.SoftKeyEvent(SoftKey.END_CALL, call.line, call.reference))
        return call

    def hold(self, reference: int = 0) -> PhoneCall:
        call = self.find(reference, states=(CallStateCode.CONNECTED,))
        self.press(SoftKey.HOLD, call)
        return call

    def resume(self, reference: int = 0) -> PhoneCall:
        call = self.find(reference, states=(CallStateCode.HOLD,))
        self.press(SoftKey.RESUME, call)
        return call

    def transfer(self, reference: int = 0) -> PhoneCall:
        call = self.find(reference, states=(CallStateCode.CONNECTED, CallStateCode.RING_OUT,
                                            CallStateCode.PROCEED))
        self.press(SoftKey.TRANSFER, call)
        return call

    def conference(self, reference: int = 0) -> PhoneCall:
        call = self.find(reference, states=(CallStateCode.CONNECTED,))
        self.press(SoftKey.CONFERENCE, call)
        return call

    def barge(self, *, cbarge: bool = False, reference: int = 0) -> PhoneCall:
        call = self.find(reference, states=(CallStateCode.REMOTE_MULTILINE,))
        self.press(SoftKey.CBARGE if cbarge else SoftKey.BARGE, call)
        return call

    def forward_all(self, number: str, line: int = 1) -> None:
        """Press CFwdALL and key `number` (its '#' added); no number cancels. A number over 24
        digits is refused here: call control would set the forward to its first 24."""
        self._require_ready()
        if number and (len(number) > MAX_DIGITS or any(d not in KEYPAD_CODES or d == "#"
                                                        for d in number)):
            raise PhoneActionError(f"{number[:MAX_DIGITS + 8]!r} is not a number to forward to "
                                   f"(0-9 * +, at most {MAX_DIGITS})")
        self._send(c.SoftKeyEvent(SoftKey.CFWD_ALL, line, 0))
        if number:
            for d in number:
                self._send(s.KeypadButton(KEYPAD_CODES[d], line, 0))
            self._send(s.KeypadButton(KEYPAD_CODES["#"], line, 0))

    # -- extension mobility (the phone's service: user id and PIN) ------------------------------
    def mobility_login(self, user: str, pin: str) -> None:
        """Log `user` in at this phone; call control answers, then restarts the phone with the
        user's line (it keeps its own security mode, DEV-2)."""
        from ccmsec.calls.mobility import MobilityRequestError, login_message

        self._require_ready()
        if self.calls:
            raise PhoneActionError("hang up first: logging in restarts the phone")
        self._mobility_txn += 1
        try:
            self._send(login_message(user, pin, self._mobility_txn))
        except MobilityRequestError as exc:
            raise PhoneActionError(str(exc)) from None
        self.mobility = None

    def mobility_logout(self) -> None:
        from ccmsec.calls.mobility import logout_message

        self._require_ready()
        if self.calls:
            raise PhoneActionError("hang up first: logging out restarts the phone")
        self._mobility_txn += 1
        self._send(logout_message(self._mobility_txn))
        self.mobility = None

    def _on_user_data(self, m: UserToDeviceData, events: list) -> None:
        from ccmsec.calls.mobility import MobilityRequestError, parse_result

        try:
            result = parse_result(m)
        except MobilityRequestError:
            self.ignored += 1
            return
        self.mobility = result
        text = f"Extension mobility {result.action}: {'' if result.ok else 'refused: '}{result.text}"
        self.notifications.append(text)
        events.append(Notified(text))

    def snapshot(self) -> list[PhoneCall]:
        return [replace(call) for call in self.calls.values()]


_HANDLERS = {
    u.ButtonTemplate: SccpPhone._on_buttons,
    u.SoftKeyTemplateRes: SccpPhone._on_softkey_template,
    u.SoftKeySetRes: SccpPhone._on_softkey_sets,
    u.ConfigStat: SccpPhone._on_config,
    s.DefineTimeDate: SccpPhone._on_time,
    u.ServerRes: SccpPhone._on_servers,
    u.LineStat: SccpPhone._on_line,
    u.SpeedDialStat: SccpPhone._on_speed_dial,
    u.ForwardStat: SccpPhone._on_forward,
    u.Version: SccpPhone._on_nothing,
    s.CallState: SccpPhone._on_call_state,
    s.CallInfo: SccpPhone._on_call_info,
    c.SelectSoftKeys: SccpPhone._on_softkeys,
    c.DisplayPromptStatus: SccpPhone._on_prompt,
    c.ClearPromptStatus: SccpPhone._on_clear_prompt,
    c.DisplayNotify: SccpPhone._on_notify,
    c.ClearNotify: SccpPhone._on_nothing,
    s.StartTone: SccpPhone._on_start_tone,
    s.StopTone: SccpPhone._on_stop_tone,
    c.SetRinger: SccpPhone._on_ringer,
    c.DialedNumber: SccpPhone._on_dialed,
    c.BackSpaceReq: SccpPhone._on_backspace,
    s.SetSpeakerMode: SccpPhone._on_speaker,
    s.SetLamp: SccpPhone._on_nothing,
    s.ActivateCallPlane: SccpPhone._on_nothing,
    c.DeactivateCallPlane: SccpPhone._on_nothing,
    s.OpenReceiveChannel: SccpPhone._on_open,
    s.StartMediaTransmission: SccpPhone._on_start_media,
    s.StopMediaTransmission: SccpPhone._on_stop_media,
    s.CloseReceiveChannel: SccpPhone._on_close,
    UserToDeviceData: SccpPhone._on_user_data,
}
