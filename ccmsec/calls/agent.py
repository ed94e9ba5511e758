"""The call agent: sans-IO call processing for SCCP devices (events in, messages out).

    agent = CallAgent(AgentSettings())
    agent.register(DeviceProfile("SEP…", lines=(LineConfig("1001"),)), now)
    agent.receive("SEP…", OffHook(), now)          # any SCCP message from a registered device
    agent.tick(now)                                # timers: digits, no answer, failed calls
    for device, message in agent.messages_to_send(): ...
    while (event := agent.next_event()) is not None: ...   # CallEvent for watchers

Time is passed in (`now`, seconds, monotonic); the wall clock for DefineTimeDate is `now +
wall_offset`. Nothing here touches a socket, a database or a clock, so SRST's limited call
processing can run the same core.

Features: dial plan (digits and en-bloc; unknown number → reorder; busy → busy tone or call
forward busy; no answer → call forward no answer), shared lines (every idle appearance rings; the
first answer wins; the others see the call "in use remote" while a party on the line is in it —
a phone registering mid-call too, from its registration — and may barge), hold and resume (the
held party hears music on hold, or with `tone_on_hold` — SRST — a tone on hold the resources
stream), transfer (consultative, and blind when completed while the target is still ringing), ad
hoc conference through the
conference bridge, call forward all (set from the phone), barge and cBarge (CALL-4…8 through
`ccmsec.policy.calls.barge`), and every call's security status re-computed after every change
(CALL-1/2/3) and sent to each phone in CallInfo. Bad input (a stale call reference, a message out
of order, digits while ringing, a flood of digits) changes nothing and is counted in `ignored`;
a number too long to name a line (over 24 characters) is refused as an unknown number.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from typing import Callable

from ccmsec.calls import setup as setup_answers
from ccmsec.calls import ui
from ccmsec.calls.config import AgentSettings, DeviceProfile, ProfileError
from ccmsec.calls.dialplan import DialPlan, Match, MatchKind
from ccmsec.calls.media import G711_CODECS, AddressPool, MediaResources
from ccmsec.calls.model import (
    BargeState,
    Call,
    CallEvent,
    CallPhase,
    CallView,
    Channel,
    Consult,
    Leg,
    LegState,
    LegView,
    Purpose,
    Station,
)
from ccmsec.calls.security import endpoint, evaluate, lower
from ccmsec.policy.calls import (
    CallSecurityLevel,
    EndpointKind,
    CodecChoice,
    barge as barge_policy,
    choose_codec,
)
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire.sccp_calls import SoftKey, StimulusType, Tone

MAX_EVENTS = 10_000
MAX_DIGITS = 24  # a directory number has at most 24 characters
CONFERENCE = "Conference"              # the called number an ad hoc conference shows
NO_COMMON_CODEC = "No common codec"   # what the refused phone shows (reorder tone)
TWO_BARGES = "Barge in both calls"    # a transfer or conference that would put two barges in one call
# a barge's initiator pressing Transfer or Confrn on its barge leg (not offered to it:
# `ui.BARGE_WITHHELD`)
BARGE_NO_TRANSFER = "No transfer from a barge"
BARGE_NO_CONFERENCE = "No conference from a barge"
# a Transfer or Confrn sent from a held leg (the On Hold set offers neither): refused, as the
# phone must resume the call first
HELD_NO_TRANSFER = "Resume to transfer"
HELD_NO_CONFERENCE = "Resume to conference"
# a key no softkey set offers (Join: not implemented) sent anyway
KEY_NOT_ACTIVE = "Key is not active"
KEYPAD = {**{i: str(i) for i in range(10)}, 0x0E: "*", 0x0F: "#", 0x10: "+"}
DIALABLE = frozenset(KEYPAD.values())
# A key source gives the encryption-info block for one channel direction ("rx" or "tx"); the
# media issue plugs the key manager in here. Default: none (algorithm 0, RTP).
KeySource = Callable[[Call, Channel, str], s.EncryptionInfo]


class CallAgent:
    def __init__(self, settings: AgentSettings | None = None, *,
                 resources: MediaResources | None = None, key_source: KeySource | None = None):
        self.settings = settings or AgentSettings()
        self.resources = resources or AddressPool()
        self.key_source = key_source
        self.wall_offset = 0.0
        self.stations: dict[str, Station] = {}
        self.plan = DialPlan()
        self.appearances: dict[str, list[tuple[Station, int]]] = {}
        self.configured_dns: set[str] = set()   # configured anywhere (registered or not)
        self.forward_all: dict[str, str] = {}
        self.calls: dict[int, Call] = {}
        self.legs: dict[int, Leg] = {}          # call reference -> leg, every station
        self._ids = itertools.count(1)
        self._out: list[tuple[str, s.Message]] = []
        # Pending events (kind, call, time, detail); views are built when they are taken.
        self._events: collections.deque[tuple[str, Call, float, str]] = collections.deque(
            maxlen=MAX_EVENTS)
        self._timers: list[tuple[float, int, str, int]] = []  # (when, seq, kind, ref)
        self._seq = itertools.count()
        self._now = 0.0
        self.ignored = 0
        self.calls_total = 0
        self.barges_refused = 0
        self.codec_refusals = 0

    # -- output ------------------------------------------------------------------------------
    def messages_to_send(self) -> list[tuple[str, s.Message]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> CallEvent | None:
        if not self._events:
            return None
        kind, call, at, detail = self._events.popleft()
        return CallEvent(kind, self.view(call), at, detail)

    def _send(self, station: Station, *messages: s.Message) -> None:
        name = station.profile.name
        self._out.extend((name, m) for m in messages)

    # -- devices -----------------------------------------------------------------------------
    def register(self, profile: DeviceProfile, now: float) -> None:
        if profile.name in self.stations:
            self.unregister(profile.name, now)
        st = Station(profile, now)
        self.stations[profile.name] = st
        for instance, line in enumerate(profile.lines, 1):
            self.plan.add_dn(line.dn)
            self.appearances.setdefault(line.dn, []).append((st, instance))
        if profile.route_pattern:
            self.plan.add_pattern(profile.route_pattern, profile.name)
        self._show_current_hints(st)

    def _show_current_hints(self, st: Station) -> None:
        """A phone registering (or back after a reset) shows the connected calls on its shared
        lines "in use remote" now, as part of its registration — not only at the call's next
        change. Only the calls with a party on one of its lines are looked at."""
        calls: dict[int, Call] = {}
        for line in st.profile.lines:
            for other, _ in self.appearances.get(line.dn, ()):
                if other is st:
                    continue
                for leg in other.legs.values():
                    if leg.dn == line.dn and leg.call is not None:
                        calls[leg.call.id] = leg.call
        for call in calls.values():
            self._sync_hints(call)
            self._sync_hint_status(call)   # no security update follows here

    def update_profile(self, profile: DeviceProfile) -> bool:
        """New routing for a registered device (forwards, speed dials, region): its next call
        uses it. Its lines must be the ones it registered with (the dial plan and the phone's
        display hold them); False, and nothing changed, otherwise."""
        st = self.stations.get(profile.name)
        if st is None or [ln.dn for ln in st.profile.lines] != [ln.dn for ln in profile.lines]:
            return False
        st.profile = profile
        return True

    def capabilities(self, device: str, caps: s.CapabilitiesRes) -> None:
        st = self.stations.get(device)
        if st is not None:
            st.codecs = tuple(cap.payload_capability for cap in caps.capabilities)
            st.srtp_capable = caps.encryption_capable

    def unregister(self, device: str, now: float) -> None:
        """The device is gone (unregistered, connection lost): its calls are cleared for the
        others and its resources freed."""
        st = self.stations.pop(device, None)
        if st is None:
            return
        self._now = now
        for leg in list(st.legs.values()):
            self._drop(leg, now, notify_device=False)
        for instance, line in enumerate(st.profile.lines, 1):
            self.plan.remove_dn(line.dn)
            apps = self.appearances.get(line.dn, [])
            apps[:] = [(s2, i) for s2, i in apps if s2 is not st]
            if not apps:
                self.appearances.pop(line.dn, None)
        if st.profile.route_pattern:
            self.plan.remove_pattern(st.profile.route_pattern)
        st.hints.clear()

    def set_configured_numbers(self, dns: set[str]) -> None:
        """Numbers configured on any device, registered or not (unregistered → unavailable)."""
        self.configured_dns = set(dns)

    # -- input -------------------------------------------------------------------------------
    def receive(self, device: str, message: s.Message, now: float) -> None:
        st = self.stations.get(device)
        if st is None:
            self.ignored += 1
            return
        self._now = now
        st.messages += 1
        if isinstance(message, setup_answers.SETUP_REQUESTS):
            self._send(st, *setup_answers.answer(message, st.profile, self.settings,
                                                 now + self.wall_offset, self.forward_all))
        elif isinstance(message, s.OffHook):
            self._off_hook(st, message.line_instance, message.call_reference, now)
        elif isinstance(message, s.OnHook):
            self._on_hook(st, message.call_reference, now)
        elif isinstance(message, s.KeypadButton):
            self._keypad(st, message, now)
        elif isinstance(message, c.EnblocCall):
            self._enbloc(st, message.called_party, message.line_instance, now)
        elif isinstance(message, c.SoftKeyEvent):
            self._softkey(st, message.event, message.line_instance, message.call_reference, now)
        elif isinstance(message, c.Stimulus):
            self._stimulus(st, message, now)
        elif isinstance(message, s.OpenReceiveChannelAck):
            self._channel_ack(st, message, now)
        elif isinstance(message, s.CapabilitiesRes):
            self.capabilities(device, message)
        else:  # StartMediaTransmissionAck, HookFlash, alarms…: nothing to do
            self.ignored += 1

    def tick(self, now: float) -> None:
        self._now = now
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, ref = heapq.heappop(self._timers)
            self._fire(kind, ref, now)

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def _arm(self, when: float, kind: str, ref: int) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), kind, ref))

    def _fire(self, kind: str, ref: int, now: float) -> None:
        if kind == "digits":
            leg = self._leg(ref)
            if leg is not None and leg.digit_deadline is not None and leg.digit_deadline <= now:
                leg.digit_deadline = None
                self._route(leg, now, final=True)
        elif kind == "no-answer":
            call = self.calls.get(ref)
            if call is not None and call.phase is CallPhase.SETUP and call.ring_deadline \
                    and call.ring_deadline <= now:
                self._no_answer(call, now)
        elif kind == "failed":
            leg = self._leg(ref)
            if leg is not None and leg.state is LegState.FAILED and leg.fail_deadline \
                    and leg.fail_deadline <= now:
                self._clear_leg(leg, now)

    def _leg(self, ref: int) -> Leg | None:
        return self.legs.get(ref)

    def _add_leg(self, leg: Leg) -> Leg:
        leg.station.legs[leg.reference] = leg
        self.legs[leg.reference] = leg
        return leg

    # -- phone actions -------------------------------------------------------------------------
    def _ignore(self) -> None:
        self.ignored += 1

    def _off_hook(self, st: Station, line: int, ref: int, now: float) -> None:
        ringing = st.ringing_leg(ref)
        if ringing is not None:
            self._answer(ringing, now)
        elif st.active_leg() is None:
            self._new_leg(st, line, now)
        else:
            self._ignore()  # already off hook

    def _new_leg(self, st: Station, line: int, now: float,
                 purpose: Purpose = Purpose.CALL) -> Leg | None:
        if not st.profile.lines:
            self._ignore()
            return None
        if st.line(line) is None:
            line = 1
        active = st.active_leg()
        if active is not None:
            if active.state is LegState.CONNECTED:
                self._hold(active, now)   # a new call puts the current one on hold
            else:
                self._ignore()
                return None
        leg = self._add_leg(Leg(next(self._ids), st, line, st.line(line).dn, LegState.OFF_HOOK,
                                now, purpose=purpose))
        self._send(st, *ui.off_hook(leg))
        leg.tone = Tone.DIAL
        return leg

    def _on_hook(self, st: Station, ref: int, now: float) -> None:
        leg = st.legs.get(ref) if ref else st.active_leg()
        if leg is None or leg.state is LegState.HOLD and not ref:
            self._ignore()
            return
        if leg.consult is Consult.TRANSFER and leg.consult_for is not None and leg.call is not None:
            # hanging up during a consultation completes the transfer; when it is refused (no
            # common codec, out of a conference) the phone is still on hook: end the consultation
            if self._complete(leg, now):
                return
        self._hang_up(leg, now)

    def _keypad(self, st: Station, msg: s.KeypadButton, now: float) -> None:
        digit = KEYPAD.get(msg.button)
        leg = st.legs.get(msg.call_reference) if msg.call_reference else st.active_leg()
        if digit is None or leg is None:
            self._ignore()
            return
        if leg.state not in (LegState.OFF_HOOK, LegState.DIALING):
            self._ignore()  # digits while ringing, connected (DTMF is media's) or failed
            return
        if digit == "#":
            self._route(leg, now, final=True)
            return
        if len(leg.digits) >= MAX_DIGITS:
            # A number has at most 24 characters: a 25th digit names no line. Refused as the
            # en-bloc path refuses a longer number (reorder, 'Unknown Number', the failed call
            # cleared by its timer), never dropped silently. ('#' ending 24 digits is above.)
            leg.digit_deadline = None
            self._fail(leg, Tone.REORDER, "Unknown Number", now)
            return
        if leg.state is LegState.OFF_HOOK:
            leg.state = LegState.DIALING
            leg.tone = 0
            self._send(st, *ui.first_digit(leg))
        leg.digits += digit
        self._route(leg, now, final=False)

    def _enbloc(self, st: Station, number: str, line: int, now: float) -> None:
        # Checked before a leg is made: an empty or malformed number from an idle phone must not
        # leave it off-hook (dial tone, and busy for every call to it) until it hangs up.
        if not number or not set(number) <= DIALABLE:
            self._ignore()
            return
        # A '#' at the end only ends dialling: it does not count against the 24 characters of a
        # number (24 digits + '#' is a 24-digit number). A longer number names no line: it is
        # refused as an unknown number (reorder), never dropped silently.
        too_long = len(number.removesuffix("#")) > MAX_DIGITS
        leg = st.active_leg()
        if leg is None:
            leg = self._new_leg(st, line, now)
        if leg is None or leg.state not in (LegState.OFF_HOOK, LegState.DIALING):
            self._ignore()
            return
        if leg.state is LegState.OFF_HOOK:
            leg.state = LegState.DIALING
            self._send(st, *ui.first_digit(leg))
        if too_long:
            leg.digit_deadline = None
            self._fail(leg, Tone.REORDER, "Unknown Number", now)
            return
        leg.digits = number
        self._route(leg, now, final=True)

    def _softkey(self, st: Station, event: int, line: int, ref: int, now: float) -> None:
        if event not in setup_answers.SOFTKEY_SETS[st.profile.softkey_set]:
            self._ignore()  # a key its softkey set does not give it (never shown on its display)
            if event == SoftKey.JOIN:   # in no set at all: the phone reads why nothing happened
                self._send(st, c.DisplayNotify(10, KEY_NOT_ACTIVE))
            return
        leg = st.legs.get(ref) if ref else None
        if ref and leg is None and event not in (SoftKey.BARGE, SoftKey.CBARGE):
            self._ignore()  # a stale or foreign call reference
            return
        if event == SoftKey.NEW_CALL:
            self._new_leg(st, line, now)
        elif event == SoftKey.ANSWER:
            ringing = st.ringing_leg(ref)
            self._answer(ringing, now) if ringing is not None else self._ignore()
        elif event == SoftKey.END_CALL:
            target = leg or st.active_leg()
            self._hang_up(target, now) if target is not None else self._ignore()
        elif event == SoftKey.HOLD:
            target = leg or st.active_leg()
            if target is not None and target.state is LegState.CONNECTED:
                self._hold(target, now)
            else:
                self._ignore()
        elif event == SoftKey.RESUME:
            target = leg or next((lg for lg in st.legs.values() if lg.state is LegState.HOLD), None)
            if target is not None and target.state is LegState.HOLD:
                self._resume(target, now)
            else:
                self._ignore()
        elif event in (SoftKey.TRANSFER, SoftKey.CONFERENCE):
            kind = Consult.TRANSFER if event == SoftKey.TRANSFER else Consult.CONFERENCE
            target = leg or st.active_leg()
            if target is not None and ui.is_barge_initiator(target, target.call):
                self._refuse_from_barge(target, kind, now)
            elif target is not None and target.state is LegState.HOLD:
                # naming a held call whose consultation rings or talks (the softkey with its
                # reference, the phone's button with it selected) completes that consultation,
                # as from it: "resume it first" would hang up or hold the consultation
                pending = next((lg for lg in st.legs.values() if lg.consult_for is target
                                and lg.state in (LegState.CONNECTED, LegState.RING_OUT)), None)
                if pending is not None:
                    self._consult(st, pending, kind, now)
                else:
                    self._refuse_on_hold(target, kind, now)
            else:
                self._consult(st, target, kind, now)
        elif event in (SoftKey.BARGE, SoftKey.CBARGE):
            self._barge(st, line, ref, event == SoftKey.CBARGE, now)
        elif event == SoftKey.CFWD_ALL:
            self._forward_all_key(st, line, now)
        elif event == SoftKey.REDIAL:
            if st.last_dialed:
                self._enbloc(st, st.last_dialed, line, now)
            else:
                self._ignore()
        elif event == SoftKey.DIAL:
            target = leg or st.active_leg()
            if target is not None and target.state is LegState.DIALING:
                self._route(target, now, final=True)
            else:
                self._ignore()
        elif event == SoftKey.BACKSPACE:
            target = leg or st.active_leg()
            if target is not None and target.state is LegState.DIALING and target.digits:
                target.digits = target.digits[:-1]
                self._send(st, c.BackSpaceReq(target.line, target.reference))
                self._arm_digits(target, now)
            else:
                self._ignore()
        else:
            self._ignore()

    def _stimulus(self, st: Station, msg: c.Stimulus, now: float) -> None:
        kind = msg.stimulus
        if kind == StimulusType.LINE:
            ringing = next((lg for lg in st.legs.values() if lg.state is LegState.RINGING
                            and lg.line == msg.line_instance), None)
            if ringing is not None:
                self._answer(ringing, now)
            elif st.active_leg() is None:
                self._new_leg(st, msg.line_instance, now)
            else:
                self._ignore()
        elif kind == StimulusType.SPEED_DIAL:
            sd = next((d for d in st.profile.speed_dials if d.index == msg.line_instance), None)
            self._enbloc(st, sd.number, 1, now) if sd is not None else self._ignore()
        elif kind == StimulusType.HOLD:
            self._softkey(st, SoftKey.HOLD, msg.line_instance, msg.call_reference, now)
        elif kind == StimulusType.TRANSFER:
            self._softkey(st, SoftKey.TRANSFER, msg.line_instance, msg.call_reference, now)
        elif kind == StimulusType.CONFERENCE:
            self._softkey(st, SoftKey.CONFERENCE, msg.line_instance, msg.call_reference, now)
        elif kind == StimulusType.REDIAL:
            self._softkey(st, SoftKey.REDIAL, msg.line_instance, 0, now)
        elif kind == StimulusType.FORWARD_ALL:
            self._forward_all_key(st, msg.line_instance, now)
        else:
            self._ignore()

    # -- routing -------------------------------------------------------------------------------
    def _arm_digits(self, leg: Leg, now: float) -> None:
        leg.digit_deadline = now + self.settings.inter_digit_timeout
        self._arm(leg.digit_deadline, "digits", leg.reference)

    def _route(self, leg: Leg, now: float, *, final: bool) -> None:
        if leg.purpose is Purpose.FORWARD_ALL:
            self._forward_all_digits(leg, now, final)
            return
        digits = leg.digits
        if not digits:
            if final:
                self._fail(leg, Tone.REORDER, "Enter number", now)
            return
        match = self.plan.final(digits) if final else self.plan.match(digits)
        if match.kind in (MatchKind.PARTIAL, MatchKind.AMBIGUOUS):
            self._arm_digits(leg, now)
            return
        leg.digit_deadline = None
        if match.kind is MatchKind.NONE:
            if digits.rstrip("#") in self.configured_dns:   # '#' only ends dialling
                self._fail(leg, Tone.REORDER, "Temp Fail", now)   # configured, not registered
            else:
                self._fail(leg, Tone.REORDER, "Unknown Number", now)
            return
        # The number as matched: an en-bloc "3204#" ends with the '#' that only says "no more
        # digits" — offered as dialled it found no appearance ("Temp Fail").
        digits = match.dn or digits.rstrip("#")
        leg.station.last_dialed = digits
        self._place(leg, digits, match, now)

    def _place(self, caller: Leg, digits: str, match: Match, now: float) -> None:
        """Start a call from `caller` (digits collected) to the matched destination."""
        st = caller.station
        line = st.line(caller.line)
        call = Call(next(self._ids), now, caller, legs=[caller], calling_dn=caller.dn,
                    calling_name=(line.display_name if line else "") or st.profile.user or caller.dn,
                    called_dn=digits, original_called=digits)
        self.calls[call.id] = call
        self.calls_total += 1
        caller.call = call
        caller.state = LegState.RING_OUT
        self._send(st, c.DialedNumber(digits, caller.line, caller.reference))
        self._emit("created", call, now)
        if match.device:
            self._offer_device(call, self.stations.get(match.device), digits, now)
        else:
            self._offer(call, digits, now)

    def _offer(self, call: Call, dn: str, now: float) -> None:
        caller = call.caller
        target = self.forward_all.get(dn, "")
        if target and call.forward_hops < self.settings.max_forward_hops:
            call.forward_hops += 1
            call.called_dn = target
            self._redirect(call, target, now)
            return
        apps = [(st, i) for st, i in self.appearances.get(dn, ())
                if not (st is caller.station and i == caller.line)]
        if not apps:
            self._fail(caller, Tone.REORDER, "Temp Fail", now, call=call)
            return
        free = [(st, i) for st, i in apps if not st.busy]
        if not free:
            busy_target = next((st.line(i).forward_busy for st, i in apps if st.line(i).forward_busy), "")
            if busy_target and call.forward_hops < self.settings.max_forward_hops:
                call.forward_hops += 1
                call.called_dn = busy_target
                self._redirect(call, busy_target, now)
            else:
                self._fail(caller, Tone.BUSY, "Busy", now, call=call)
            return
        # CALL-9 before anything rings: an appearance with no codec in common with the caller
        # is not offered the call (no transcoder); none left is a refused set-up. A phone whose
        # CapabilitiesRes is not in yet is not judged here: the answer-time check does.
        choices = {st.name: self._codec_for([caller.station, st]) for st, _ in free
                   if not self._codecs_pending(caller.station, st)}
        usable = [(st, i) for st, i in free
                  if st.name not in choices or choices[st.name].codec is not None]
        if not usable:
            self._refuse_codec(call, choices[free[0][0].name], now)
            return
        free = usable
        call.no_answer_target = next((st.line(i).forward_no_answer for st, i in apps
                                      if st.line(i).forward_no_answer), "")
        for st, instance in free:
            self._ring(call, st, instance, now)
        call.ring_deadline = now + (self.settings.no_answer_timeout if call.no_answer_target
                                    else self.settings.max_ring_time)
        self._arm(call.ring_deadline, "no-answer", call.id)
        self._send(caller.station, *ui.ring_out(caller, call))
        caller.tone = Tone.ALERTING
        self._update_security(call, now, force=True)

    def _offer_device(self, call: Call, st: Station | None, digits: str, now: float) -> None:
        if st is None or not st.profile.lines:
            self._fail(call.caller, Tone.REORDER, "Temp Fail", now, call=call)
            return
        if st.busy and not st.profile.auto_answer:
            self._fail(call.caller, Tone.BUSY, "Busy", now, call=call)
            return
        choice = self._codec_for([call.caller.station, st])
        if choice.codec is None and not self._codecs_pending(call.caller.station, st):
            # CALL-9: a gateway/trunk that cannot speak the caller's codecs
            self._refuse_codec(call, choice, now)
            return
        self._ring(call, st, 1, now, shown_dn=digits)   # a trunk/gateway: shown as dialled
        call.ring_deadline = now + self.settings.max_ring_time
        self._arm(call.ring_deadline, "no-answer", call.id)
        self._send(call.caller.station, *ui.ring_out(call.caller, call))
        self._update_security(call, now, force=True)

    def _redirect(self, call: Call, target: str, now: float) -> None:
        call.forwarded = target != call.original_called   # a loop back to it is not forwarded
        for leg in [lg for lg in call.legs if lg.state is LegState.RINGING]:
            self._remove_leg(leg, now)
        match = self.plan.final(target)
        if match.kind is MatchKind.NONE:
            self._fail(call.caller, Tone.REORDER, "Unknown Number", now, call=call)
        elif match.device:
            self._offer_device(call, self.stations.get(match.device), target, now)
        else:
            self._offer(call, target, now)

    def _ring(self, call: Call, st: Station, instance: int, now: float, *,
              shown_dn: str = "") -> None:
        leg = self._add_leg(Leg(next(self._ids), st, instance, st.line(instance).dn,
                                LegState.RINGING, now, role="called", call=call, shown_dn=shown_dn))
        call.legs.append(leg)
        self._send(st, *ui.ringing(leg, call))

    def _no_answer(self, call: Call, now: float) -> None:
        target = call.no_answer_target
        if target and call.forward_hops < self.settings.max_forward_hops:
            call.forward_hops += 1
            call.no_answer_target = ""
            call.called_dn = target
            self._redirect(call, target, now)
        else:
            self._end_call(call, now)

    def _fail(self, leg: Leg, tone: Tone, text: str, now: float, call: Call | None = None,
              detail: str = "") -> None:
        if call is not None:
            for other in [lg for lg in call.legs if lg is not leg]:
                self._remove_leg(other, now)
            for ch in list(call.channels.values()):
                self._close_channel(call, ch)
            call.legs = [leg]
            self._clear_hints(call)
            call.phase = CallPhase.ENDED
            self._emit("ended", call, now, detail=detail or text)
            self.calls.pop(call.id, None)
            leg.call = None
        leg.state = LegState.FAILED
        leg.tone = tone
        leg.fail_deadline = now + self.settings.failed_call_timeout
        self._arm(leg.fail_deadline, "failed", leg.reference)
        self._send(leg.station, *ui.failed(leg, tone, text))

    # -- answer, hang up -------------------------------------------------------------------------
    def _answer(self, leg: Leg, now: float) -> None:
        call = leg.call
        if call is None or leg.state is not LegState.RINGING:
            self._ignore()
            return
        # CALL-9 was checked when the call was offered; a profile or capabilities may have
        # changed while it rang (or a blind transfer put another caller in): check again first.
        choice = self._codec_for([lg.station for lg in call.legs if lg.state in (
            LegState.CONNECTED, LegState.HOLD, LegState.RING_OUT)] + [leg.station])
        if choice.codec is None:
            if any(lg.state is LegState.RINGING and lg is not leg for lg in call.legs):
                # a shared line: only this appearance is refused, the others still ring
                self.codec_refusals += 1
                self._remove_leg(leg, now)
                self._send(leg.station, c.DisplayNotify(10, NO_COMMON_CODEC))
                self._update_security(call, now)   # the caller shows the appearances left
                self._emit("refused", call, now, detail=f"{choice.rule_id}: {choice.reason}")
                return
            self._refuse_codec(call, choice, now)
            return
        active = leg.station.active_leg()
        if active is not None and active is not leg:
            if active.state is LegState.CONNECTED:
                self._hold(active, now)
            else:
                self._hang_up(active, now)
        for other in [lg for lg in call.legs if lg.state is LegState.RINGING and lg is not leg]:
            self._remove_leg(other, now, hint=other.dn == leg.dn)
        leg.state = LegState.CONNECTED
        call.caller.state = LegState.CONNECTED
        call.caller.tone = 0
        call.phase = CallPhase.CONNECTED
        call.connected_at = now
        call.ring_deadline = None
        self._choose_codec(call)   # there is one: checked above, before anything changed
        for party in call.legs:
            if party.state is LegState.CONNECTED:   # a barge initiator a blind transfer carried
                self._send(party.station, *ui.connected(party, call))   # along on hold stays so
        self._sync_hints(call)
        self._plan_media(call)
        self._update_security(call, now, force=True)
        self._emit("updated", call, now)

    def _hang_up(self, leg: Leg, now: float) -> None:
        call = leg.call
        if call is None:
            self._clear_leg(leg, now)
            return
        if call.phase is CallPhase.SETUP:
            if leg is call.caller:
                self._end_call(call, now)
            else:  # a callee declines (or a barge's initiator carried along leaves)
                self._leave_setup(leg)
                self._remove_leg(leg, now)
                if not any(lg.state is LegState.RINGING for lg in call.legs):
                    self._fail(call.caller, Tone.BUSY, "Busy", now, call=call)
            return
        self._drop(leg, now)

    def _drop(self, leg: Leg, now: float, *, notify_device: bool = True) -> None:
        """Remove a leg from its call (hang-up or device gone) and fix up the rest."""
        call = leg.call
        self._forget_consult(leg)
        if call is None:
            self._clear_leg(leg, now, notify=notify_device)
            return
        if call.phase is CallPhase.SETUP:
            if leg is call.caller:
                self._end_call(call, now, skip=leg if not notify_device else None)
                if not notify_device:
                    self._clear_leg(leg, now, notify=False)
                return
            self._leave_setup(leg)
            self._remove_leg(leg, now, notify=notify_device)
            if not any(lg.state is LegState.RINGING for lg in call.legs):
                self._fail(call.caller, Tone.BUSY, "Busy", now, call=call)
            return
        barge = call.barge
        conference = ui.shown_as_conference(call)   # before it loses a party
        self._remove_leg(leg, now, notify=notify_device)
        if barge is not None:
            if leg is barge.target and not call.bridge:
                self._end_call(call, now)   # the target's built-in bridge is gone
                return
            # A cBarge, or a barge into a conference, is mixed by the conference bridge, not by
            # the target's phone: the target leaving ends the barge, the others talk on.
            if leg is barge.initiator or leg is barge.target or len(call.legs) <= 2:
                self._end_barge(call)
        if len(call.legs) <= 1:
            self._end_call(call, now)
            return
        if call.bridge and len(call.legs) == 2 and call.barge is None:
            self._leave_bridge(call)   # an ad hoc conference down to two: join them directly
        named = False
        if conference and not ui.shown_as_conference(call):
            # a two-party call again (direct, or on the bridge for want of a common codec): the
            # parties talking get the connected softkeys (Transfer) now, not at their next
            # resume; one holding keeps its hold set (a resume shows the connected one)
            for party in call.legs:
                if party.state is LegState.CONNECTED:
                    self._send(party.station, *ui.two_party_again(party))
            named = self._name_the_two(call)
        elif barge is not None and call.barge is None and len(call.legs) == 2:
            named = self._name_the_two(call)   # a built-in barge ended, its initiator left in
        if barge is not None and call.barge is None and barge.initiator in call.legs \
                and barge.initiator.state is LegState.CONNECTED \
                and not (conference and not ui.shown_as_conference(call)):
            # no longer an initiator but a party: its connected set offers Transfer and Confrn
            # again (a conference or cBarge down to two sent it that set above)
            self._send(barge.initiator.station, ui.connected_keys(barge.initiator, call))
        self._sync_hints(call)         # the last party on a shared line may have left
        self._plan_media(call)
        self._update_security(call, now, force=named)   # forced: the CallInfo naming each other
        self._emit("updated", call, now)

    @staticmethod
    def _leave_setup(leg: Leg) -> None:
        """A leg leaving a call still ringing: a Barge the other party's blind transfer carried
        along (its target ringing out) ends with its initiator. Its target is the caller, whose
        leaving ends the whole call."""
        call = leg.call
        if call is not None and call.barge is not None and leg is call.barge.initiator:
            call.barge = None

    @staticmethod
    def _name_the_two(call: Call) -> bool:
        """A conference down to two: each party reads the other again, not "Conference" (in its
        own direction, as after a transfer), and the call — its line's "in use remote"
        appearances — reads one calling the other (the remaining caller first). So does a barge
        ended with its initiator still in (its target gone, or the other party): the call's
        numbers name the target's line, the initiator's own, not the party it now talks to.
        False when neither (a cBarge whose initiator left: its parties' display never changed)."""
        if call.called_dn != CONFERENCE and not any(lg.role in ("barge", "cbarge")
                                                    for lg in call.legs):
            return False
        first, second = call.legs
        if second.role == "caller" and first.role != "caller":
            first, second = second, first
        call.calling_dn, call.calling_name = ui.party_number(first), ui.party_name(first)
        call.called_dn = ui.party_number(second)
        for leg, other in ((first, second), (second, first)):
            leg.far = (ui.party_number(other), ui.party_name(other))
        return True

    def _end_barge(self, call: Call) -> None:
        if call.barge is not None and call.barge.cbarge and len(call.legs) <= 2:
            call.barge = None
            self._leave_bridge(call)
        call.barge = None

    def _leave_bridge(self, call: Call) -> None:
        """Two parties left on the bridge talk directly again, in a codec both offered (CALL-9).
        When they share none (each reached the bridge in its own G.711 law) they stay on the
        bridge, which mixes through linear PCM: never a direct channel in a codec one of them
        did not offer."""
        if self._choose_codec(call):
            call.bridge = False

    def _end_call(self, call: Call, now: float, skip: Leg | None = None) -> None:
        for leg in list(call.legs):
            if leg is not skip:
                self._remove_leg(leg, now)
        for ch in list(call.channels.values()):
            self._close_channel(call, ch, notify=False)
        self._clear_hints(call)
        call.phase = CallPhase.ENDED
        self.calls.pop(call.id, None)
        self._emit("ended", call, now)

    def _remove_leg(self, leg: Leg, now: float, *, notify: bool = True, hint: bool = False) -> None:
        call = leg.call
        if call is not None:
            for key, ch in list(call.channels.items()):
                if ch.leg is leg:
                    self._close_channel(call, ch, notify=notify)
            if leg in call.legs:
                call.legs.remove(leg)
        if hint and call is not None and notify and leg.station.name not in call.hint_refs:
            # The shared line was answered elsewhere: this appearance shows it in use. A phone
            # with two appearances of the line shows it once (one hint per device, cleared with
            # the call): its other ringing appearance is just cleared.
            leg.station.legs.pop(leg.reference, None)
            self.legs.pop(leg.reference, None)
            leg.station.hints[leg.reference] = call.id
            call.hint_refs[leg.station.name] = (leg.reference, leg.line)
            call.hint_shown[leg.station.name] = ui.hint_shows(call)   # its CallInfo as it rang
            # ... whose status was the caller's and this appearance's, not the call's: the
            # `_update_security` after the answer sends the call's when they differ
            call.hint_status[leg.station.name] = leg.shown_status
            self._send(leg.station, *ui.in_use_remote(leg, call))
            leg.call = None
            return
        self._clear_leg(leg, now, notify=notify)

    def _clear_leg(self, leg: Leg, now: float, notify: bool = True) -> None:
        st = leg.station
        self._forget_consult(leg)
        st.legs.pop(leg.reference, None)
        self.legs.pop(leg.reference, None)
        leg.call = None
        leg.digit_deadline = leg.fail_deadline = None
        if notify and st.profile.name in self.stations:
            line_idle = not any(lg.line == leg.line for lg in st.legs.values())
            self._send(st, *ui.cleared(leg, line_idle=line_idle, device_idle=not st.legs))

    def _forget_consult(self, leg: Leg) -> None:
        for other in leg.station.legs.values():
            if other.consult_for is leg:
                other.consult_for = None
                other.consult = None

    # -- hold / resume ---------------------------------------------------------------------------
    def _hold(self, leg: Leg, now: float) -> None:
        call = leg.call
        if call is None or leg.state is not LegState.CONNECTED:
            self._ignore()
            return
        # The target of a Barge holding the call: its built-in bridge, which mixed the initiator
        # in, is gone. As in CallManager the initiator is released (cleared as if it had hung up,
        # its line's appearance "in use remote" again) and the party left hears music on hold.
        released = self._barged_by(call, leg)
        named = False
        if released is not None:
            self._release_barges([released], now)
            named = len(call.legs) == 2 and self._name_the_two(call)
            self._sync_hints(call)
        leg.state = LegState.HOLD
        self._send(leg.station, *ui.hold(leg))
        self._plan_media(call)
        self._update_security(call, now, force=named)
        self._emit("updated", call, now)

    def _resume(self, leg: Leg, now: float) -> None:
        call = leg.call
        if call is None:
            self._ignore()
            return
        active = leg.station.active_leg()
        if active is not None:
            if active.state is LegState.CONNECTED:
                self._hold(active, now)
            else:
                self._hang_up(active, now)
        leg.state = LegState.CONNECTED
        self._send(leg.station, *ui.connected(leg, call))
        self._plan_media(call)
        self._update_security(call, now, force=True)
        self._emit("updated", call, now)

    # -- transfer and conference -----------------------------------------------------------------
    def _consult(self, st: Station, leg: Leg | None, kind: Consult, now: float) -> None:
        if leg is None:
            self._ignore()
            return
        if leg.consult is not None and leg.consult_for is not None:
            self._complete(leg, now)
            return
        if leg.state is not LegState.CONNECTED or leg.call is None or len(leg.call.parties()) < 2:
            self._ignore()
            return
        self._hold(leg, now)
        consult = self._new_leg(st, leg.line, now)
        if consult is None:
            return
        consult.consult_for = leg
        consult.consult = kind

    def _refuse_from_barge(self, leg: Leg, kind: Consult, now: float) -> None:
        """A barge's initiator is a party through its target's bridge (Barge) or the conference
        bridge (cBarge): as in CallManager it cannot transfer or conference that call. Its phone
        is not offered the keys (`ui.connected_keys`); one sent anyway is refused before anything
        changes — no hold, no consultation, both calls as they were — and the phone reads why."""
        self._refuse_consult(leg, kind, now, (BARGE_NO_TRANSFER, BARGE_NO_CONFERENCE),
                             "CALL-1: a barge initiator cannot {action} the call it barged into")

    def _refuse_on_hold(self, leg: Leg, kind: Consult, now: float) -> None:
        """A Transfer or Confrn sent from a held leg — a held consultation or the call it was made
        for — is not offered there (the On Hold set: Resume, NewCall, EndCall) and, as for a
        held call, nothing is transferred or conferenced from hold: refused before anything
        changes, and the phone reads that it must resume the call first."""
        self._refuse_consult(leg, kind, now, (HELD_NO_TRANSFER, HELD_NO_CONFERENCE),
                             "no {action} from a held call: resume it first")

    def _refuse_consult(self, leg: Leg, kind: Consult, now: float, prompts: tuple[str, str],
                        detail: str) -> None:
        """Refuse a Transfer or Confrn before anything changes: the phone reads why (`prompts`:
        for a transfer, for a conference) and the call's event says so (`detail`, its `{action}`
        "transfer" or "conference")."""
        self._ignore()
        transfer = kind is Consult.TRANSFER
        self._send(leg.station, c.DisplayNotify(10, prompts[0] if transfer else prompts[1]))
        assert leg.call is not None
        self._emit("refused", leg.call, now,
                   detail=detail.format(action="transfer" if transfer else "conference"))

    def _complete(self, consult: Leg, now: float) -> bool:
        """Complete a transfer or conference; False when it was not done (both calls unchanged)."""
        held = consult.consult_for
        kind = consult.consult
        call2 = consult.call
        if held is None or held.call is None or call2 is None:
            self._ignore()
            return False
        call1 = held.call
        # A Barge mixed by this phone (its held or consultation leg the target, the built-in
        # bridge) ends when the phone transfers or conferences the call, as in CallManager: the
        # initiator is released, the others go on. It takes no part in the checks below and is
        # released only once nothing refuses the transfer or conference.
        released = [x for x in (self._barged_by(call1, held), self._barged_by(call2, consult))
                    if x is not None]
        if kind is Consult.CONFERENCE:
            if call2.phase is not CallPhase.CONNECTED:
                self._ignore()   # a conference joins answered calls only
                return False
            if self._two_barges(call1, call2, released, consult, now):
                return False
            members = [lg.station for lg in call1.legs + call2.legs
                       if lg is not consult and lg not in released]
            if self._codec_refused(consult, self._bridge_codec_for(members), call1, now):
                return False
            self._release_barges(released, now)
            self._end_consult_barge(call2, consult)
            self._join_conference(held, consult, now)
            return True
        if consult.state not in (LegState.CONNECTED, LegState.RING_OUT):
            self._ignore()
            return False
        # Transfer: the far party of the held call takes the consultation leg's place.
        others = [lg for lg in call1.legs if lg is not held and lg not in released]
        # The other party transferring a barged call (a Barge whose target is its far party): the
        # target moves, its built-in bridge with it, and the initiator rides along, as in
        # CallManager (unless the consultation keeps a barge of its own: one call, one barge).
        riding = self._riding_barge(call1, others)
        if riding is not None:
            if self._two_barges(call1, call2, released, consult, now):
                return False
            others = [riding.target]
        if len(others) != 1:
            self._ignore()   # transferring out of a conference is not offered
            return False
        moving = others[0]
        along = [riding.initiator.station] if riding is not None else []
        blind = call2.phase is CallPhase.SETUP
        # CALL-9: the moving party must share a codec with whoever it is put through to. Blind,
        # as at set-up: the ringing appearances that share none stop ringing, the others ring on
        # (a phone whose CapabilitiesRes is not in yet is left to the answer-time check).
        others2 = [lg for lg in call2.legs if lg is not consult and lg not in released]
        choices = [(lg, self._codec_for([moving.station, lg.station, *along])) for lg in others2
                   if not (blind and self._codecs_pending(moving.station, lg.station, *along))]
        unusable = [(lg, choice) for lg, choice in choices if choice.codec is None]
        if unusable and (not blind or len(unusable) == len(others2)):
            self._codec_refused(consult, unusable[0][1], call1, now)
            return False
        self._release_barges(released, now)
        self._end_consult_barge(call2, consult)
        # who each remaining party was shown as, before the calls change: the moving party as
        # the transferring phone showed it in the held call, the consultation's party as dialled
        moving_as = self._far_party(held, call1, moving)
        target = next((lg for lg in others2 if lg.role == "called"), None)
        target_as = self._far_party(consult, call2, target)
        self._close_leg_channels(call1, moving)
        call1.legs.remove(moving)
        if riding is not None:
            call1.barge = None
            self._close_leg_channels(call1, riding.initiator)
            call1.legs.remove(riding.initiator)
        self._remove_leg(held, now)
        self._end_call(call1, now)
        call2.legs[call2.legs.index(consult)] = moving
        self._close_leg_channels(call2, consult)
        moving.call = call2
        if riding is not None:   # the same Barge, in call2: its target mixes the new party in
            call2.barge = riding
            riding.initiator.call = call2
            call2.legs.append(riding.initiator)
        moving.hold_tone = False   # ring-out / connected below stop any tone on hold
        self._clear_leg(consult, now)
        for lg, _ in unusable:   # blind only: appearances the moving party cannot talk to
            self._remove_leg(lg, now)
        if blind:
            call2.caller = moving
            moving.role = "caller"
            moving.state = LegState.RING_OUT
            call2.calling_dn, call2.calling_name = moving_as
            moving.far = None   # the call's calling/called numbers name both sides now
            self._send(moving.station, *ui.ring_out(moving, call2))
        else:
            moving.state = LegState.CONNECTED
            # each remaining party is shown the one it is now connected to, not the transferring
            # phone (the CallInfo below, forced, carries it to both): the call's calling party is
            # the moving one (the consultation's party, and its line's other appearances, see
            # it), and the moving party sees the consultation's party whatever its direction
            call2.calling_dn, call2.calling_name = moving_as
            moving.far = target_as
            self._choose_codec(call2)
            for party in call2.legs:
                if party.state is LegState.CONNECTED:   # an initiator carried along on hold stays so
                    self._send(party.station, *ui.connected(party, call2))
        # the consultation's line (the transferring phone's) is no longer in call2; the moving
        # party's is: their shared appearances show it as it now is
        self._sync_hints(call2)
        self._plan_media(call2)
        self._update_security(call2, now, force=True)
        self._emit("updated", call2, now, detail="transferred" + (" (blind)" if blind else ""))
        return True

    @staticmethod
    def _barged_by(call: Call, leg: Leg) -> Leg | None:
        """The initiator of a Barge whose target is `leg` and which `leg`'s phone mixes (built-in
        bridge: not a cBarge, not a barge into a conference), else None."""
        barge = call.barge
        if barge is not None and barge.target is leg and not barge.cbarge and not call.bridge:
            return barge.initiator
        return None

    def _two_barges(self, call1: Call, call2: Call, released: list[Leg], consult: Leg,
                    now: float) -> bool:
        """One call carries one barge (CALL-1: a second barge into a call is refused; the call's
        barge record — its initiator's and the others' security shown, who may barge next — is
        one). A transfer or conference that would join two calls each keeping a barge (its
        target staying in) is refused as a whole: both calls stay as they are and the pressing
        phone reads why. A barge the pressing phone mixes is released, and one whose target is
        the consultation leg (a cBarge) ends with it: neither counts."""
        kept = [cl.barge for cl in (call1, call2) if cl.barge is not None
                and cl.barge.initiator not in released and cl.barge.target is not consult]
        if len(kept) < 2:
            return False
        self._ignore()
        self._send(consult.station, c.DisplayNotify(10, TWO_BARGES))
        self._emit("refused", call1, now, detail="CALL-1: another barge is already in the other call")
        return True

    @staticmethod
    def _riding_barge(call: Call, others: list[Leg]) -> BargeState | None:
        """The Barge (built-in bridge) of `call` whose target and initiator are the two `others`
        — the parties a transfer of `call` by its other party would move — else None."""
        barge = call.barge
        if barge is not None and not barge.cbarge and not call.bridge and len(others) == 2 \
                and barge.target in others and barge.initiator in others:
            return barge
        return None

    @staticmethod
    def _end_consult_barge(call: Call, consult: Leg) -> None:
        """The consultation leg leaves its call as the transfer or conference goes ahead: a barge
        it was the target of and that the bridge mixes (a cBarge; a Barge it mixed itself was
        released) ends as when a target hangs up — its initiator talks on as a member, and no
        record stays anchored on the departed leg (lowering what the call shows, refusing every
        later barge)."""
        if call.barge is not None and call.barge.target is consult:
            call.barge = None

    def _release_barges(self, initiators: list[Leg], now: float) -> None:
        """The target's transfer or conference goes ahead: each Barge it mixed ends and its
        initiator is cleared, as if it had hung up (its channels closed, its phone back to what
        it had). The transfer or conference that follows re-plans the call's media and display
        and emits the change (one event, not a half-done one before it)."""
        for initiator in initiators:
            call = initiator.call
            if call is not None:
                call.barge = None
                self._remove_leg(initiator, now)

    @staticmethod
    def _far_party(leg: Leg, call: Call, other: Leg | None) -> tuple[str, str]:
        """(number, name) of the party `leg`'s phone shows across `call` (its CallInfo): the
        called number on an outbound call, the calling party on an inbound one, unless a
        transfer, a conference or a barge's end set it (`leg.far`). A name the call does not
        carry is `other`'s (the party shown).

        `leg` is the transferring phone's: a consultation's leg (a caller), or the held leg of a
        two-party call. A barge's or cBarge's initiator — neither side of the call's numbers —
        is only ever the latter with `far` set: a call gets down to two only by a party leaving
        (`_drop`), which names the two (`_name_the_two`) whenever an initiator is one of them,
        or through a conference, which names every member; a Barge whose target leaves ends."""
        if leg.far is not None:
            number, name = leg.far
        elif leg.role == "caller":
            number, name = call.called_dn, ""
        else:
            number, name = call.calling_dn, call.calling_name
        if number == CONFERENCE and other is not None:
            number, name = ui.party_number(other), ""   # not "Conference": the party itself
        return number, name or (ui.party_name(other) if other is not None else number)

    def _codec_refused(self, leg: Leg, choice: CodecChoice, call: Call, now: float) -> bool:
        """A transfer or conference whose parties share no codec is refused as a whole: both
        calls stay as they are and the pressing phone reads why."""
        if choice.codec is not None:
            return False
        self.codec_refusals += 1
        self._ignore()
        self._send(leg.station, c.DisplayNotify(10, NO_COMMON_CODEC))
        self._emit("refused", call, now, detail=f"{choice.rule_id}: {choice.reason}")
        return True

    def _join_conference(self, held: Leg, consult: Leg, now: float) -> None:
        call1, call2 = held.call, consult.call
        assert call1 is not None and call2 is not None
        joining = [lg for lg in call2.legs if lg is not consult]
        for lg in joining:
            self._close_leg_channels(call2, lg)
            call2.legs.remove(lg)
            lg.call = call1
            call1.legs.append(lg)
        if call1.barge is None:
            # a barge into the consultation whose target stays (the conferencing phone's own
            # were released): now a barge into a conference, mixed by the bridge
            call1.barge = call2.barge
        self._remove_leg(consult, now)
        self._end_call(call2, now)
        held.state = LegState.CONNECTED
        call1.bridge = True
        choice = self._bridge_codec_for([lg.station for lg in call1.legs])
        call1.codec = self.settings.bridge_codec
        call1.codec_rule = f"{choice.rule_id}: {choice.reason}"
        call1.called_dn = CONFERENCE
        for lg in call1.legs:
            # every member shows the conference, whatever its direction (and not a party a
            # transfer named before)
            lg.far = (CONFERENCE, CONFERENCE)
        for party in call1.legs:
            self._send(party.station, *ui.connected(party, call1, conference=True))
        self._sync_hints(call1)   # the joining parties' shared lines show the conference
        self._plan_media(call1)
        self._update_security(call1, now, force=True)
        self._emit("updated", call1, now, detail="conference")

    # -- barge (CALL-4…8) --------------------------------------------------------------------------
    def _barge(self, st: Station, line: int, ref: int, cbarge: bool, now: float) -> None:
        call = self.calls.get(st.hints.get(ref, 0)) if ref else None
        if call is None:
            dns = {ln.dn for ln in st.profile.lines} if not line else \
                ({st.line(line).dn} if st.line(line) else set())
            call = next((cl for cl in self.calls.values() if cl.phase is CallPhase.CONNECTED
                         and any(lg.dn in dns and lg.station is not st for lg in cl.legs)), None)
        if call is None or call.phase is not CallPhase.CONNECTED:
            self._send(st, c.DisplayNotify(10, "No call to barge"))
            self._ignore()
            return
        target = next((lg for lg in call.legs if lg.station is not st and
                       any(ln.dn == lg.dn for ln in st.profile.lines)), None)
        if target is None:   # the shared line's party has left the call
            self._send(st, c.DisplayNotify(10, "No call to barge"))
            self._ignore()
            return
        instance = next(i for i, ln in enumerate(st.profile.lines, 1) if ln.dn == target.dn)
        active = st.active_leg()
        if active is not None and active.state is not LegState.CONNECTED:
            self._ignore()   # off hook, dialling or ringing out: no new call from here
            return
        # Every refusal is decided before the initiator's leg is made: making it puts the
        # phone's current call on hold, and a refused barge must leave that call as it was.
        potential = call.potential.level if call.potential else CallSecurityLevel.NON_SECURE
        result = barge_policy(endpoint(st.profile, keyed=True), potential, cbarge=cbarge)
        if call.barge is not None:
            result = type(result)(False, None, "CALL-1", "another barge is already in this call",
                                  busy_tone=True)
        elif not cbarge and not call.bridge and target.state is not LegState.CONNECTED:
            # a Barge is mixed by the target's built-in bridge, which a hold takes away (a hold
            # by the target releases an initiator): none into a call its target holds — the
            # initiator and the held party would talk directly around it. A cBarge, or a barge
            # into a conference, is mixed by the conference bridge and goes ahead.
            result = type(result)(False, None, "CALL-1", "the target is holding the call",
                                  busy_tone=True)
        refusal = None
        if not result.allowed:
            refusal = (Tone.BUSY, "Barge failed", f"{result.rule_id}: {result.reason}")
        else:
            # CALL-9: the initiator's codecs count; a barge that would need a codec some party
            # never offered is refused (no transcoder), the call keeps its codec and channels.
            stations = [lg.station for lg in call.legs if lg.state in (
                LegState.CONNECTED, LegState.HOLD, LegState.RING_OUT)] + [st]
            # A conference (or cBarge) goes through the bridge: a barge into it joins the bridge,
            # so the initiator must offer a G.711 law (its leg's codec) and the call keeps its codec.
            bridged = cbarge or call.bridge
            choice = self._bridge_codec_for(stations) if bridged else self._codec_for(stations)
            if choice.codec is None:
                self.codec_refusals += 1
                refusal = (Tone.REORDER, NO_COMMON_CODEC, f"{choice.rule_id}: {choice.reason}")
        if refusal is not None:
            tone, text, detail = refusal
            self.barges_refused += 1
            if active is None:   # an idle phone hears why on a failed call (cleared by its timer)
                initiator = self._new_leg(st, instance, now)
                if initiator is not None:
                    initiator.role = "cbarge" if cbarge else "barge"
                    self._fail(initiator, tone, text, now)
            else:                # its own call stays connected: the refusal is shown on the display
                self._send(st, c.DisplayNotify(10, text))
            self._emit("refused", call, now, detail=detail)
            return
        initiator = self._new_leg(st, instance, now)
        if initiator is None:
            return
        initiator.role = "cbarge" if cbarge else "barge"
        initiator.call = call
        initiator.state = LegState.CONNECTED
        call.legs.append(initiator)
        call.barge = BargeState(initiator, target, result, cbarge)
        if cbarge or call.bridge:
            call.bridge = True
            call.codec = self.settings.bridge_codec
            call.codec_rule = f"{choice.rule_id}: {choice.reason}"
        elif not call.bridge:
            # The initiator's device counts for the codec as for the status: its codecs, its
            # region and, in an encrypted call, its model (CALL-9: no wideband with a 7960/7940).
            codec = call.codec
            self._choose_codec(call)
            if call.codec != codec:   # every channel again, in the codec all three can use
                for ch in list(call.channels.values()):
                    self._close_channel(call, ch)
        for party in call.legs:
            if party.state is LegState.CONNECTED:   # a party holding the call stays on hold
                self._send(party.station, *ui.connected(party, call))
        self._sync_hints(call)
        self._plan_media(call)
        self._update_security(call, now, force=True)
        self._emit("updated", call, now, detail=f"{initiator.role} {result.rule_id}: {result.reason}")

    # -- call forward all (set from the phone) -----------------------------------------------------
    def _forward_all_key(self, st: Station, line: int, now: float) -> None:
        ln = st.line(line) or st.line(1)
        if ln is None:
            self._ignore()
            return
        if self.forward_all.get(ln.dn):
            self._set_forward_all(ln.dn, "")
            self._send(st, c.DisplayNotify(10, "CFwdALL off"))
            return
        leg = st.active_leg()
        if leg is not None and leg.state in (LegState.OFF_HOOK, LegState.DIALING):
            leg.purpose = Purpose.FORWARD_ALL
        else:
            leg = self._new_leg(st, line, now, purpose=Purpose.FORWARD_ALL)
        if leg is not None:
            self._send(st, c.DisplayPromptStatus(0, "CFwdALL: enter number", leg.line, leg.reference))

    def _forward_all_digits(self, leg: Leg, now: float, final: bool) -> None:
        match = self.plan.final(leg.digits) if final else self.plan.match(leg.digits)
        if match.kind in (MatchKind.PARTIAL, MatchKind.AMBIGUOUS) and not final:
            self._arm_digits(leg, now)
            return
        if match.kind is MatchKind.NONE or leg.digits == leg.dn:
            self._fail(leg, Tone.REORDER, "Unknown Number", now)
            return
        self._set_forward_all(leg.dn, leg.digits.rstrip("#"))
        self._clear_leg(leg, now)

    def _set_forward_all(self, dn: str, target: str) -> None:
        if target:
            self.forward_all[dn] = target
        else:
            self.forward_all.pop(dn, None)
        for st, instance in self.appearances.get(dn, ()):
            self._send(st, setup_answers.forward_stat(instance, st.profile, target))

    # -- media ---------------------------------------------------------------------------------------
    def _offered(self, st: Station) -> tuple[int, ...]:
        # A device that sent no CapabilitiesRes (CTI port, trunk) speaks the default; one that
        # sent an empty list offers nothing, so every call it would take part in is refused.
        return st.codecs if st.codecs is not None else (self.settings.default_codec,)

    @staticmethod
    def _codecs_pending(*stations: Station) -> bool:
        # A phone is asked for its CapabilitiesRes with the RegisterAck: until it answers, what it
        # offers is not known (CTI ports and the trunk never send one: they are the default).
        return any(st.codecs is None and st.profile.kind is EndpointKind.PHONE for st in stations)

    def _codec_for(self, stations: list[Station]) -> CodecChoice:
        """CALL-9 over these devices: the first codec of the first one's list that every other
        offers and the policy allows; `codec` None when there is none. There is no transcoder,
        so call control never falls back to a codec some device did not offer."""
        lists = [self._offered(st) for st in stations]
        offered = [cd for cd in lists[0] if all(cd in other for other in lists[1:])] if lists else []
        potential = evaluate([(st.profile, True) for st in stations])
        choice = choose_codec(offered, call_level=potential.level,
                              endpoints=[endpoint(st.profile, keyed=True) for st in stations],
                              wideband_region=all(st.profile.wideband_region for st in stations))
        if choice.codec is None:
            offers = "; ".join(f"{st.name} offers {','.join(map(str, self._offered(st)))}"
                               for st in stations)
            reason = "no codec in common" if not offered else choice.reason
            return CodecChoice(None, choice.rule_id, f"{reason} ({offers}); no transcoder")
        return choice

    def _g711_for(self, st: Station) -> int | None:
        """The G.711 law a bridge or music-on-hold stream to this device uses: the first of its
        offered codecs the resource encodes (`G711_CODECS`); None when it offers neither law."""
        return next((cd for cd in self._offered(st) if cd in G711_CODECS), None)

    def _bridge_codec_for(self, stations: list[Station]) -> CodecChoice:
        """The conference bridge mixes in linear PCM and talks G.711 to each member in a law that
        member offered (µ-law and A-law phones share a conference): every member must offer one
        of them. `codec` is the call's shown codec (`bridge_codec`); each leg's is `_g711_for`."""
        laws = {st.name: self._g711_for(st) for st in stations}
        missing = [f"{st.name} offers {','.join(map(str, self._offered(st))) or 'nothing'}"
                   for st in stations if laws[st.name] is None]
        if missing:
            return CodecChoice(None, "CALL-9", "conference bridge needs G.711 µ-law (4) or A-law "
                                               f"(2) from every member ({'; '.join(missing)}); "
                                               "no transcoder")
        per_leg = ", ".join(f"{name} {law}" for name, law in laws.items())
        return CodecChoice(self.settings.bridge_codec, "CALL-9",
                           f"conference bridge, G.711 per leg ({per_leg})")

    def _choose_codec(self, call: Call) -> bool:
        """Set the call's codec from its parties; False (call unchanged) when they have none in
        common — the caller must then refuse what it was doing, never tell a phone a codec it
        did not offer."""
        legs = [lg for lg in call.legs if lg.state in (LegState.CONNECTED, LegState.HOLD,
                                                        LegState.RING_OUT)]
        choice = self._codec_for([lg.station for lg in legs] or [call.caller.station])
        if choice.codec is None:
            return False
        call.codec = choice.codec
        call.codec_rule = f"{choice.rule_id}: {choice.reason}"
        return True

    def _refuse_codec(self, call: Call, choice: CodecChoice, now: float) -> None:
        """No common codec at set-up: the caller hears reorder and reads why; every other leg is
        cleared and the call record says why (no channel was opened, so no keys were taken)."""
        call.codec_rule = f"{choice.rule_id}: {choice.reason}"
        self.codec_refusals += 1
        self._fail(call.caller, Tone.REORDER, NO_COMMON_CODEC, now, call=call,
                   detail=f"{NO_COMMON_CODEC}: {call.codec_rule}")

    def _desired_channels(self, call: Call) -> tuple[dict[tuple, tuple[bool, int]], set[int]]:
        """(leg ref, peer) -> (whether the leg transmits, the channel's codec) for the call's
        current topology, and the legs that play tone on hold instead of music (held, offering no
        law the music-on-hold source encodes). Every codec is one the leg's device offered
        (CALL-9): the call's codec between phones, a G.711 law of its own towards a resource."""
        active = [lg for lg in call.legs if lg.state is LegState.CONNECTED]
        held = any(lg.state is LegState.HOLD for lg in call.legs)
        want: dict[tuple, tuple[bool, int]] = {}
        tone: set[int] = set()
        if call.phase is not CallPhase.CONNECTED:
            return want, tone
        codec = call.codec
        # The one party still talking on a bridge whose others all hold (a conference down to two
        # that stays on it, µ-law-only and A-law-only) would hear nobody: it gets music on hold, as
        # in a direct call, below.
        if call.bridge and not (len(active) == 1 and held):
            for lg in active:
                law = self._g711_for(lg.station)
                if law is not None:   # checked when it joined; never a law it did not offer
                    want[(lg.reference, (EndpointKind.CONFERENCE, call.id, lg.reference))] = (
                        True, law)
            return want, tone
        barge = call.barge
        if barge is not None and barge.initiator in active and barge.target in active:
            others = [lg for lg in active if lg is not barge.initiator and lg is not barge.target]
            for other in others:
                want[(other.reference, ("leg", barge.target.reference, ""))] = (True, codec)
                want[(barge.target.reference, ("leg", other.reference, ""))] = (True, codec)
            want[(barge.initiator.reference, ("leg", barge.target.reference, "barge"))] = (True, codec)
            want[(barge.target.reference, ("leg", barge.initiator.reference, "barge"))] = (True, codec)
            if not others and held:
                # The other party holds: the target is the held side, as in a direct call, and
                # its built-in bridge mixes the music on hold (or hold tone) it receives into
                # the initiator's stream, as it mixed the other party's voice
                self._on_hold_media(call, barge.target, want, tone)
            return want, tone
        if len(active) == 2:
            a, b = active
            want[(a.reference, ("leg", b.reference, ""))] = (True, codec)
            want[(b.reference, ("leg", a.reference, ""))] = (True, codec)
        elif len(active) == 1 and held:
            self._on_hold_media(call, active[0], want, tone)
        return want, tone

    def _on_hold_media(self, call: Call, lg: Leg, want: dict[tuple, tuple[bool, int]],
                       tone: set[int]) -> None:
        """The held side `lg` (its far party holds): a receive-only channel from music on hold
        (or the hold-tone source, as configured), or tone on hold played by its phone."""
        if not (self.settings.music_on_hold or self.settings.tone_on_hold):
            return
        codec = call.codec
        # the law the call negotiated when this leg offered it (a gateway's telephone network
        # keeps talking the law of its call), else the first G.711 law it offered
        law = codec if codec in G711_CODECS and codec in self._offered(lg.station) \
            else self._g711_for(lg.station)
        kind = EndpointKind.MUSIC_ON_HOLD if self.settings.music_on_hold else EndpointKind.TONE_ON_HOLD
        if law is None:
            tone.add(lg.reference)   # no channel in a codec it never offered: tone on hold
        else:
            want[(lg.reference, (kind, call.id, lg.reference))] = (False, law)

    def _plan_media(self, call: Call) -> None:
        want, tone = self._desired_channels(call)
        for key, ch in list(call.channels.items()):
            if want.get(key) != (ch.sends, ch.codec):
                self._close_channel(call, ch)
        legs = {lg.reference: lg for lg in call.legs}
        for key, (sends, codec) in want.items():
            if key in call.channels:
                continue
            leg = legs[key[0]]
            ch = Channel(next(self._ids), leg, key[1], sends, codec)
            call.channels[key] = ch
            if isinstance(ch.peer[0], EndpointKind):
                self.resources.open(ch.peer)
            if self.key_source is not None:
                ch.rx_encryption = self.key_source(call, ch, "rx")
            self._send(leg.station, s.OpenReceiveChannel(
                conference_id=call.id, pass_thru_party_id=ch.party_id, packet_size_ms=20,
                compression_type=codec, call_reference=leg.reference, encryption=ch.rx_encryption))
        for leg in call.legs:
            playing = leg.reference in tone
            if playing != leg.hold_tone:
                leg.hold_tone = playing
                self._send(leg.station, s.StartTone(c.Tone.HOLD, 0, leg.line, leg.reference)
                           if playing else s.StopTone(leg.line, leg.reference))
        self._start_ready(call)

    def _peer_address(self, call: Call, ch: Channel) -> tuple[str, int] | None:
        peer = ch.peer
        if isinstance(peer[0], EndpointKind):
            return self.resources.open(peer)
        back = call.channels.get((peer[1], ("leg", ch.leg.reference, peer[2])))
        return back.rx if back is not None else None

    def _start_ready(self, call: Call) -> None:
        for ch in call.channels.values():
            if ch.sends and ch.tx is None and ch.rx is not None:
                target = self._peer_address(call, ch)
                if target is None:
                    continue
                ch.tx = target
                if self.key_source is not None:
                    ch.tx_encryption = self.key_source(call, ch, "tx")
                self._send(ch.leg.station, s.StartMediaTransmission(
                    conference_id=call.id, pass_thru_party_id=ch.party_id, remote_ip=target[0],
                    remote_port=target[1], packet_size_ms=20, compression_type=ch.codec,
                    call_reference=ch.leg.reference, encryption=ch.tx_encryption))
            if isinstance(ch.peer[0], EndpointKind) and ch.rx is not None and not ch.resource_started:
                ch.resource_started = True
                self.resources.start(ch.peer, ch.rx, ch.codec)

    def _close_channel(self, call: Call, ch: Channel, *, notify: bool = True) -> None:
        key = (ch.leg.reference, ch.peer)
        call.channels.pop(key, None)
        if isinstance(ch.peer[0], EndpointKind):
            self.resources.close(ch.peer)
        if notify and ch.leg.station.profile.name in self.stations:
            if ch.tx is not None:
                self._send(ch.leg.station, s.StopMediaTransmission(
                    call.id, ch.party_id, ch.leg.reference, 0))
            self._send(ch.leg.station, s.CloseReceiveChannel(call.id, ch.party_id,
                                                              ch.leg.reference, 0))

    def _close_leg_channels(self, call: Call, leg: Leg) -> None:
        for ch in [ch for ch in call.channels.values() if ch.leg is leg or
                   (ch.peer[0] == "leg" and ch.peer[1] == leg.reference)]:
            self._close_channel(call, ch)

    def _channel_ack(self, st: Station, ack: s.OpenReceiveChannelAck, now: float) -> None:
        for call in {lg.call.id: lg.call for lg in st.legs.values() if lg.call is not None}.values():
            for ch in call.channels.values():
                if ch.party_id == ack.pass_thru_party_id and ch.leg.station is st:
                    if ack.status != 0 or ch.rx is not None:
                        self._ignore()
                        return
                    ch.rx = (ack.ip_address, ack.port)
                    self._start_ready(call)
                    self._update_security(call, now)
                    self._emit("updated", call, now, detail="media")
                    return
        self._ignore()   # an ack for a channel that is gone (stale) or never was

    # -- security status (CALL-1/2/3, CALL-4…8) -----------------------------------------------------
    def _leg_keyed(self, call: Call, leg: Leg) -> bool:
        chans = [ch for ch in call.channels.values() if ch.leg is leg]
        return bool(chans) and all(ch.keyed for ch in chans)

    def _shown(self, call: Call, leg: Leg) -> int:
        """The status `leg`'s phone displays now."""
        if call.phase is CallPhase.SETUP:
            sec = evaluate([(call.caller.station.profile, False), (leg.station.profile, False)]
                           if leg is not call.caller else
                           [(lg.station.profile, False) for lg in call.legs])
            return int(sec.level)
        if call.security is None:
            return 0
        level = call.security.level
        barge = call.barge
        if barge is not None and barge.result.level is not None:
            if leg is barge.initiator:
                level = lower(barge.result.level, call.security.level)
            else:
                originals = [lg for lg in call.legs if lg is not barge.initiator]
                before = evaluate([(lg.station.profile, self._leg_keyed(call, lg))
                                   for lg in originals], call.resources())
                level = lower(barge.result.level, before.level)
        return int(level)

    def _update_security(self, call: Call, now: float, *, force: bool = False) -> None:
        legs = [lg for lg in call.legs if lg.state in (LegState.CONNECTED, LegState.HOLD)] \
            if call.phase is CallPhase.CONNECTED else list(call.legs)
        if not legs:
            return
        resources = call.resources()
        shown = evaluate([(lg.station.profile, self._leg_keyed(call, lg)) for lg in legs], resources)
        # What the call is by its devices and what it is built on (a conference bridge), not by
        # the music a held party hears for now: holding an encrypted call must not open it to a
        # barge by a phone that CALL-4 keeps out of it.
        potential = evaluate([(lg.station.profile, True) for lg in legs],
                             [k for k in resources if k is not EndpointKind.MUSIC_ON_HOLD])
        changed = call.security != shown
        call.security, call.potential = shown, potential
        for leg in call.legs:
            status = self._shown(call, leg)
            if force or status != leg.shown_status:
                leg.shown_status = status
                self._send(leg.station, ui.call_info(leg, call, status))
        self._sync_hint_status(call)
        if changed:
            self._emit("updated", call, now, detail="security")

    def _sync_hints(self, call: Call) -> None:
        """Shared lines: every other appearance of a line that has a party in the connected call
        (talking or holding it) shows the call "in use remote" and may barge into it; an
        appearance whose line has no party in the call any more — the last one transferred it
        away, left the conference, hung up — is cleared, so no phone keeps offering Barge into a
        call nobody on its line is in; one kept is sent the call's CallInfo again when who is in
        it changed (`ui.hint_shows`) by `_sync_hint_status`, after the change's security update.
        Run after every change of who is in a call."""
        want: dict[str, list[int]] = {}   # device -> its appearances of the parties' lines
        if call.phase is CallPhase.CONNECTED:
            for leg in call.parties():
                for st, instance in self.appearances.get(leg.dn, ()):
                    # only a registered phone: one going (its legs are dropped before its
                    # appearances go) is sent nothing and owes no hint
                    if st is not leg.station and self.stations.get(st.name) is st:
                        want.setdefault(st.name, []).append(instance)
        for device, (ref, instance) in list(call.hint_refs.items()):
            st = self.stations.get(device)
            if st is None or st.hints.get(ref) != call.id or instance not in want.get(device, ()):
                self._drop_hint(call, device)
        # a hint kept through the change reads who is in the call now (a transfer's parties, a
        # conference): sent by `_sync_hint_status` once the change's security is known (every
        # caller plans media and updates security next), in one CallInfo with the call's status
        shows, status = ui.hint_shows(call), self._hint_status(call)
        in_call = {lg.station.name for lg in call.legs}
        for device, instances in want.items():
            if device in call.hint_refs or device in in_call:
                continue   # already shown, or a party itself (a barge initiator keeps its own)
            st = self.stations[device]
            ref = next(self._ids)
            st.hints[ref] = call.id
            call.hint_refs[device] = (ref, instances[0])
            call.hint_shown[device] = shows
            call.hint_status[device] = status
            self._send(st, *ui.in_use_hint(st, instances[0], ref, call, status))

    @staticmethod
    def _hint_status(call: Call) -> int:
        """The callSecurityStatus an "in use remote" appearance shows: the call's (CALL-2), as
        its parties show it — a barge's result lowers it (CALL-5: an encrypted phone barging into
        an authenticated call makes it non-secure, though each device is authenticated or
        better)."""
        if call.security is None:
            return 0
        level = call.security.level
        if call.barge is not None and call.barge.result.level is not None:
            level = lower(call.barge.result.level, level)
        return int(level)

    def _sync_hint_status(self, call: Call) -> None:
        """CALL-2: every appearance showing `call` "in use remote" shows the call's security
        status; one that shows another (its ring-time status, the call's before a change) is
        sent the call's CallInfo again."""
        shows, status = ui.hint_shows(call), self._hint_status(call)
        for device, (ref, instance) in call.hint_refs.items():
            if device not in self.stations:
                continue
            # who is in the call changed (`_sync_hints` left it to this, run after the change's
            # security update: one CallInfo, never one with the status from before the change
            # followed by another), or its status did
            if call.hint_shown.get(device) != shows or \
                    (status and call.hint_status.get(device) != status):
                call.hint_shown[device] = shows
                call.hint_status[device] = status
                self._send(self.stations[device], ui.hint_info(instance, ref, call, status))

    def _drop_hint(self, call: Call, device: str) -> None:
        """The appearance's "in use remote" for this call goes (on the line it was shown on)."""
        ref, instance = call.hint_refs.pop(device)
        call.hint_shown.pop(device, None)
        call.hint_status.pop(device, None)
        st = self.stations.get(device)
        if st is not None and st.hints.get(ref) == call.id:
            del st.hints[ref]
            self._send(st, c.SelectSoftKeys(instance, ref, c.SoftKeySetIndex.ON_HOOK),
                       s.CallState(c.CallStateCode.ON_HOOK, instance, ref))

    def _clear_hints(self, call: Call) -> None:
        for device in list(call.hint_refs):
            self._drop_hint(call, device)

    # -- views ---------------------------------------------------------------------------------------
    def view(self, call: Call) -> CallView:
        def leg_view(lg: Leg) -> LegView:
            chans = [ch for ch in call.channels.values() if ch.leg is lg]
            rx = ",".join(f"{ch.rx[0]}:{ch.rx[1]}" for ch in chans if ch.rx)
            tx = ",".join(f"{ch.tx[0]}:{ch.tx[1]}" for ch in chans if ch.tx)
            p = lg.station.profile
            return LegView(p.name, p.model, p.kind.value, p.security_mode.value, lg.line, lg.dn,
                           lg.reference, lg.state.value, lg.role, lg.shown_status, rx, tx, p.user,
                           leg_codec(lg, chans))

        def leg_codec(lg: Leg, chans: list[Channel]) -> int:
            """CALL-9 per leg: on a bridge (conference, cBarge) each leg runs its own G.711 law,
            so the call's one codec does not say what a leg's media is."""
            if chans:
                return chans[0].codec   # a leg's channels share one codec (call's, or its law)
            if call.bridge and lg.state in (LegState.CONNECTED, LegState.HOLD):
                return self._g711_for(lg.station) or 0
            return call.codec

        sec = call.security
        barge = call.barge
        return CallView(
            id=call.id, phase=call.phase.value, calling=call.calling_dn, called=call.called_dn,
            original_called=call.original_called, legs=tuple(leg_view(lg) for lg in call.legs),
            codec=call.codec, codec_rule=call.codec_rule, status=int(sec.level) if sec else 0,
            rule=sec.rule_id if sec else "", reasons=sec.reasons if sec else (),
            resources=tuple(k.value for k in call.resources()),
            barge=("cbarge" if barge.cbarge else "barge") if barge else "",
            barge_rule=f"{barge.result.rule_id}: {barge.result.reason}" if barge else "",
            created=call.created, connected_at=call.connected_at)

    def views(self) -> list[CallView]:
        return [self.view(call) for call in self.calls.values()]

    def _emit(self, kind: str, call: Call, now: float, detail: str = "") -> None:
        events = self._events
        if kind == "updated" and events and events[-1][0] == "updated" and events[-1][1] is call:
            events[-1] = (kind, call, now, events[-1][3] or detail)   # one update per change
            return
        events.append((kind, call, now, detail))


__all__ = ["CallAgent", "AgentSettings", "DeviceProfile", "ProfileError", "KeySource"]
