"""The call-processing core (`ccmsec.calls`) with simulated phone displays, in memory.

Basic calls, the dial plan, media channels, hold, transfer, conference, forwarding, shared lines,
and bad input. The security rules (CALL-*, DEV-2) have their own file (test_calls_security.py);
the same behaviour is proved over real sockets in tests/e2e/test_calls.py.
"""

from __future__ import annotations

import pytest

from ccmsec.calls.agent import CallAgent
from ccmsec.calls.config import AgentSettings, DeviceProfile, LineConfig, ProfileError, SpeedDial
from ccmsec.calls.dialplan import DialPlan, MatchKind
from ccmsec.policy.calls import EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire import sccp_setup as u
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import SoftKey, Tone
from ccmsec.wire.sccp_phone import PhoneActionError, SccpPhone
from tests.unit.calls_harness import Harness, complete, conference_in, consult

A, B, C, D = (f"SEP00000000000{i}" for i in range(1, 5))


def connected_pair(h: Harness, a=A, b=B, na="1001", nb="1002"):
    pa, pb = h.add(a, na), h.add(b, nb)
    h.call(a, nb)
    pb.answer()
    h.pump()
    return pa, pb


# -- set-up exchange ------------------------------------------------------------------------------

def test_setup_exchange_answers_everything_before_the_phone_shows_lines():
    h = Harness()
    phone = h.add(A, "1001", "1005", speed_dials=(SpeedDial(1, "1002", "Bob"),))
    assert phone.ready
    assert [(i, ln.number) for i, ln in sorted(phone.lines.items())] == [(1, "1001"), (2, "1005")]
    assert phone.speed_dials == {1: ("1002", "Bob")}
    assert phone.config.device_name == A and phone.config.number_of_lines == 2
    assert phone.time is not None and phone.servers == ()
    labels = set(phone.softkey_labels.values())
    assert {"Barge", "cBarge", "Hold", "Transfer", "Confrn", "Answer"} <= labels
    assert "Park" not in labels  # only what the core implements is offered
    assert phone.offered_names(None) == ["Redial", "NewCall", "CFwdALL"]
    asked = {type(m) for d, dev, m in h.log if d == "up" and dev == A}
    assert {u.ButtonTemplateReq, u.SoftKeyTemplateReq, u.SoftKeySetReq, u.LineStatReq,
            u.SpeedDialStatReq, u.ForwardStatReq, u.ConfigStatReq, u.TimeDateReq, u.ServerReq,
            u.RegisterAvailableLines} <= asked


def test_phone_is_not_ready_until_every_line_is_known():
    phone = SccpPhone(A)
    phone.start_setup()
    for m in (u.ButtonTemplate((u.Button(1, 9), u.Button(2, 9))), u.SoftKeyTemplateRes(
            (u.SoftKeyDefinition("NewCall", 2),)), u.SoftKeySetRes((u.SoftKeySet((1,)),)),
              u.ConfigStat(A), s.DefineTimeDate(), u.LineStat(1, "1001"), u.ForwardStat(line_number=1),
              u.ForwardStat(line_number=2)):
        phone.handle(m)
    assert not phone.ready
    with pytest.raises(PhoneActionError, match="not finished its set-up"):
        phone.dial("1002")
    phone.handle(u.LineStat(2, "1002"))
    assert phone.ready and phone.lines[2].number == "1002"


def test_profile_values_are_checked():
    with pytest.raises(ProfileError, match="directory number"):
        LineConfig("12a")
    with pytest.raises(ProfileError, match="lines exceed"):
        DeviceProfile(A, lines=tuple(LineConfig(str(1000 + i)) for i in range(35)))
    with pytest.raises(ProfileError, match="route pattern"):
        DeviceProfile(A, route_pattern="8X?X")


# -- dial plan --------------------------------------------------------------------------------------

def test_dial_plan_matches_numbers_and_patterns():
    plan = DialPlan()
    for dn in ("1001", "10011", "2000"):
        plan.add_dn(dn)
    plan.add_pattern("8XXX", "TRUNK")
    assert plan.match("1").kind is MatchKind.PARTIAL
    assert plan.match("1001").kind is MatchKind.AMBIGUOUS
    assert plan.match("10011").kind is MatchKind.COMPLETE
    assert plan.match("2000").kind is MatchKind.COMPLETE
    assert plan.match("3").kind is MatchKind.NONE
    assert plan.match("8123").device == "TRUNK"
    assert plan.match("81").kind is MatchKind.PARTIAL
    assert plan.final("1001#").dn == "1001"
    plan.remove_dn("10011")
    assert plan.match("1001").kind is MatchKind.COMPLETE


# -- basic calls --------------------------------------------------------------------------------------

def test_keypad_call_dial_tone_ringback_ringing_answer_media_and_hang_up():
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, "1002")
    pa.off_hook()
    h.pump()
    (call,) = pa.calls.values()
    assert call.state is CS.OFF_HOOK and call.tone == Tone.DIAL
    pa.keypad("100")
    h.pump()
    assert call.tone == 0 and call.state is CS.OFF_HOOK and not pb.calls
    pa.keypad("2")
    h.pump()
    assert call.state is CS.RING_OUT and call.tone == Tone.ALERTING and call.dialed == "1002"
    (ringing,) = pb.calls.values()
    assert ringing.state is CS.RING_IN and ringing.ringing and ringing.calling == "1001"
    pb.answer()
    h.pump()
    assert call.state is CS.CONNECTED and ringing.state is CS.CONNECTED and not ringing.ringing
    (cha,), (chb,) = pa.channels.values(), pb.channels.values()
    assert cha.tx == chb.rx and chb.tx == cha.rx          # each sends to the other's RTP address
    view = h.only_call()
    assert view.phase == "connected" and [lg.state for lg in view.legs] == ["connected"] * 2
    pb.hang_up()
    h.pump()
    assert not pa.calls and not pb.calls and not pa.channels and not pb.channels
    assert h.agent.calls == {} and h.agent.legs == {}
    assert h.sent_to(A, s.StopMediaTransmission) and h.sent_to(A, s.CloseReceiveChannel)


def test_inter_digit_timeout_routes_an_ambiguous_number():
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, "1002")
    h.add(C, "10021")
    pa.off_hook()
    pa.keypad("1002")
    h.pump()
    assert not pb.calls  # 1002 might become 10021: wait
    h.advance(2.5)
    assert next(iter(pb.calls.values())).state is CS.RING_IN


def test_unknown_number_gets_reorder_and_busy_gets_busy_tone():
    h = Harness()
    pa, pb, pc = h.add(A, "1001"), h.add(B, "1002"), h.add(C, "1003")
    h.call(A, "1999")
    (call,) = pa.calls.values()
    assert call.tone == Tone.REORDER and call.state is CS.INVALID_NUMBER
    pa.hang_up()
    h.pump()
    h.call(B, "1003")
    h.call(A, "1003")   # C is ringing for B: busy
    (call,) = pa.calls.values()
    assert call.tone == Tone.BUSY and call.state is CS.BUSY
    h.advance(31)       # a failed call is cleared after a while
    assert not pa.calls


def test_configured_but_unregistered_number_is_temporarily_unavailable():
    h = Harness()
    pa = h.add(A, "1001")
    h.agent.set_configured_numbers({"1001", "1009"})
    h.call(A, "1009")
    (call,) = pa.calls.values()
    assert call.tone == Tone.REORDER and call.prompt == "Temp Fail"


def test_caller_hangs_up_while_ringing_clears_the_callee():
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, "1002")
    h.call(A, "1002")
    pa.hang_up()
    h.pump()
    assert not pb.calls and not h.agent.calls
    assert pb.ended[-1].state is CS.ON_HOOK


def test_callee_declines_and_caller_hears_busy():
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, "1002")
    h.call(A, "1002")
    pb.hang_up()
    h.pump()
    assert next(iter(pa.calls.values())).tone == Tone.BUSY


def test_speed_dial_and_redial():
    h = Harness()
    pa = h.add(A, "1001", speed_dials=(SpeedDial(1, "1002"),))
    pb = h.add(B, "1002")
    pa._send(c.Stimulus(c.StimulusType.SPEED_DIAL, 1))
    h.pump()
    assert next(iter(pb.calls.values())).state is CS.RING_IN
    pa.hang_up()
    h.pump()
    pa.press(c.SoftKey.REDIAL)
    h.pump()
    assert next(iter(pb.calls.values())).state is CS.RING_IN


# -- hold, transfer, conference ---------------------------------------------------------------------

def test_hold_plays_music_to_the_held_party_and_resume_reconnects():
    h = Harness()
    pa, pb = connected_pair(h)
    pa.hold()
    h.pump()
    (ca,), (cb,) = pa.calls.values(), pb.calls.values()
    assert ca.state is CS.HOLD and cb.state is CS.CONNECTED
    assert not pa.channels                         # the holder's media is stopped
    (moh,) = pb.channels.values()                  # the held party listens to music on hold
    assert moh.tx is None and moh.rx is not None
    assert list(h.resources.sending.values()) == [moh.rx]
    assert h.only_call().resources == ("music on hold",)
    pa.resume()
    h.pump()
    assert ca.state is CS.CONNECTED and h.resources.sending == {} and h.resources.open_streams == {}
    (cha,), (chb,) = pa.channels.values(), pb.channels.values()
    assert cha.tx == chb.rx and chb.tx == cha.rx


def test_consultative_transfer():
    h = Harness()
    pa, pb = connected_pair(h)
    pc = h.add(C, "1003")
    pa.transfer()
    h.pump()
    held = next(cl for cl in pa.calls.values() if cl.state is CS.HOLD)
    consult = next(cl for cl in pa.calls.values() if cl.state is CS.OFF_HOOK)
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    assert consult.state is CS.CONNECTED and held.state is CS.HOLD
    pa.transfer(consult.reference)
    h.pump()
    assert not pa.calls and not pa.channels
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [B, C] and view.phase == "connected"
    (chb,), (chc,) = pb.channels.values(), pc.channels.values()
    assert chb.tx == chc.rx and chc.tx == chb.rx
    assert next(iter(pb.calls.values())).state is CS.CONNECTED


def shows(phone: SccpPhone) -> tuple:
    """Who the phone's one call shows: (direction, calling number, calling name, called number)."""
    (call,) = phone.calls.values()
    return c.CallType(call.call_type).name.lower(), call.calling, call.calling_name, call.called


def consult_transfer(h: Harness, by, target, number: str, *, on_hook: bool = False) -> int:
    """`by` consults `number` (answered by `target`) and completes the transfer; returns where
    the log was when it completed."""
    by.transfer()
    h.pump()
    by.keypad(number)
    h.pump()
    target.answer()
    h.pump()
    mark = len(h.log)
    if on_hook:
        by.on_hook()
    else:
        by.transfer(by.active_call().reference)
    h.pump()
    return mark


@pytest.mark.parametrize("on_hook", [False, True], ids=["transfer-key", "hang-up"])
def test_after_a_consultative_transfer_each_party_is_shown_the_one_it_now_talks_to(on_hook):
    # Alice (1001) transfers Bob to Carol: both were still shown Alice (the CallInfo of the
    # consultation call: calling 1001). Each gets a CallInfo at the transfer naming the other,
    # in its own call's direction — Bob, who was called, reads "from Carol"; Bob, who called,
    # reads "to Carol" — and Carol reads "from Bob". Not Alice, by number or by name.
    for bob_called in (True, False):
        h = Harness()
        pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "1002", user="Bob")
        pc = h.add(C, "1003", user="Carol")
        h.call(*((A, "1002") if bob_called else (B, "1001")))
        (pb if bob_called else pa).answer()
        h.pump()
        mark = consult_transfer(h, pa, pc, "1003", on_hook=on_hook)
        assert not pa.calls and sorted(lg.device for lg in h.only_call().legs) == [B, C]
        assert shows(pb) == (("inbound", "1003", "Carol", "1002") if bob_called
                             else ("outbound", "1002", "Bob", "1003"))
        assert shows(pc) == ("inbound", "1002", "Bob", "1003")
        for dev in (B, C):
            infos = [m for d, dv, m in h.log[mark:]
                     if d == "down" and dv == dev and isinstance(m, s.CallInfo)]
            assert infos and not [i for i in infos if "1001" in (i.calling_party, i.called_party)
                                  or "Alice" in (i.calling_party_name, i.called_party_name)]
        assert h.only_call().calling == "1002"
        # what each shows is kept through the call's next changes (hold, resume: CallInfo again)
        pb.hold()
        h.pump()
        pb.resume()
        h.pump()
        assert shows(pc) == ("inbound", "1002", "Bob", "1003")
        assert shows(pb)[1:] == (("1003", "Carol", "1002") if bob_called else ("1002", "Bob", "1003"))


def test_a_second_transfer_a_conference_and_a_transfer_after_it_show_the_call_as_it_now_is():
    # Bob, moved to Carol, transfers Carol on to Dave: Carol is shown Dave, Dave Carol (not Bob,
    # nor Alice). A conference every member shows as "Conference", whatever its direction — not
    # the party a transfer named, nor itself. Back to two (a member leaving), the two read each
    # other again, and a transfer names its parties.
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "1002", user="Bob")
    pc, pd = h.add(C, "1003", user="Carol"), h.add(D, "1004", user="Dave")
    h.call(A, "1002")
    pb.answer()
    h.pump()
    consult_transfer(h, pa, pc, "1003")
    consult_transfer(h, pb, pd, "1004")
    assert sorted(lg.device for lg in h.only_call().legs) == [C, D]
    assert shows(pc) == ("inbound", "1004", "Dave", "1003")
    assert shows(pd) == ("inbound", "1003", "Carol", "1004")
    # Carol conferences Alice into the call with Dave
    pc.conference()
    h.pump()
    pc.keypad("1001")
    h.pump()
    pa.answer()
    h.pump()
    pc.conference(pc.active_call().reference)
    h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [A, C, D]
    assert shows(pc) == ("inbound", "Conference", "Conference", "1003")
    assert shows(pd) == ("inbound", "Conference", "Conference", "1004")
    assert shows(pa) == ("inbound", "Conference", "Conference", "1001")
    # Dave leaves: Carol and Alice read each other; Carol transfers Alice to Bob: Alice and Bob
    # are named
    pd.hang_up()
    h.pump()
    assert "conference bridge" not in h.only_call().resources
    # down to two, each reads the other again, not "Conference" (both joined it as called)
    assert shows(pc) == ("inbound", "1001", "Alice", "1003")
    assert shows(pa) == ("inbound", "1003", "Carol", "1001")
    consult_transfer(h, pc, pb, "1002")
    assert sorted(lg.device for lg in h.only_call().legs) == [A, B]
    assert shows(pa) == ("inbound", "1002", "Bob", "1001")
    assert shows(pb) == ("inbound", "1001", "Alice", "1002")


def test_a_blind_transfer_shows_the_ringing_target_the_moved_party_by_name_too():
    # Completed while Carol rings: Carol read Bob's number under Alice's name (the call's calling
    # name was left as the transferring phone's). Both then show each other once she answers.
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "1002", user="Bob")
    pc = h.add(C, "1003", user="Carol")
    h.call(A, "1002")
    pb.answer()
    h.pump()
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pa.transfer(pa.active_call().reference)
    h.pump()
    assert shows(pc) == ("inbound", "1002", "Bob", "1003")
    assert shows(pb)[::3] == ("outbound", "1003")
    pc.answer()
    h.pump()
    assert shows(pc) == ("inbound", "1002", "Bob", "1003")
    assert shows(pb) == ("outbound", "1002", "Bob", "1003")


def test_call8_a_cbarge_initiator_left_with_one_party_reads_it_and_a_transfer_names_it():
    # Bob (5000) calls Alice; Xena, sharing 5000, cBarges; Bob leaves, Xena talks on with Alice
    # and transfers her to Carol. Carol read "from 5000" — Bob's and Xena's own line — because
    # the initiator was taken for the called side of the call. She reads Alice, who reads Carol.
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "5000", user="Bob")
    px = h.add("SEP0000000000E1", "5000", user="Xena")
    pc = h.add(C, "1003", user="Carol")
    h.call(B, "1001")
    pa.answer()
    h.pump()
    (hint,) = [ref for ref, cl in px.calls.items() if cl.state is CS.REMOTE_MULTILINE]
    px.barge(cbarge=True, reference=hint)
    h.pump()
    pb.hang_up()
    h.pump()
    assert sorted(lg.role for lg in h.only_call().legs) == ["called", "cbarge"]
    # down to two, Xena read "from 5000 Bob" — her own line, Bob gone — and Alice read Bob too:
    # the two read each other
    assert shows(px) == ("inbound", "1001", "Alice", "5000")
    assert shows(pa) == ("inbound", "5000", "Xena", "1001")
    mark = consult_transfer(h, px, pc, "1003")
    assert not px.calls and sorted(lg.device for lg in h.only_call().legs) == [A, C]
    assert shows(pc) == ("inbound", "1001", "Alice", "1003")
    assert shows(pa) == ("inbound", "1003", "Carol", "1001")
    infos = [m for d, dv, m in h.log[mark:] if d == "down" and dv == C and isinstance(m, s.CallInfo)]
    assert infos and not [i for i in infos if i.calling_party == "5000"]


def test_call7_a_barge_whose_other_party_leaves_leaves_the_target_and_initiator_reading_each_other():
    # Bob (5000) calls Alice; Xena, sharing 5000, barges (the built-in bridge); Alice hangs up.
    # Bob and Xena talk on: Bob kept reading "to 1001" (Alice, gone). Each reads the other.
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "5000", user="Bob")
    px = h.add("SEP0000000000E1", "5000", user="Xena")
    h.call(B, "1001")
    pa.answer()
    h.pump()
    (hint,) = [ref for ref, cl in px.calls.items() if cl.state is CS.REMOTE_MULTILINE]
    px.barge(reference=hint)
    h.pump()
    pa.hang_up()
    h.pump()
    legs = {lg.device: lg for lg in h.only_call().legs}
    assert sorted(lg.role for lg in legs.values()) == ["barge", "caller"]
    assert shows(pb) == ("outbound", "5000", "Bob", "5000")
    b_info = h.sent_to(B, s.CallInfo)[-1]
    assert (b_info.called_party, b_info.called_party_name) == ("5000", "Xena")
    (x_info,) = [m for m in h.sent_to("SEP0000000000E1", s.CallInfo)
                 if m.call_reference == legs["SEP0000000000E1"].call_reference][-1:]
    assert (x_info.call_type, x_info.calling_party, x_info.calling_party_name) == (
        c.CallType.INBOUND, "5000", "Bob")


def test_call1_a_barges_initiator_whose_target_leaves_is_named_before_it_can_transfer():
    # The review's question: can a barge's initiator be left with one party it does not name
    # (`_far_party` had a branch for it)? Barges where the target leaves:
    # - a Barge into a two-party call, built-in bridge: the target hanging up ends the call.
    # - a Barge into a conference (the bridge mixes it): Bob (5000), who called Alice and
    #   conferenced Carol in, is the target and leaves; Xena talks on in the conference, then
    #   Carol leaves. Down to two, Xena and Alice read each other, and Xena's transfer of Alice
    #   to Dave names Alice to Dave — never 5000, the call's calling number and Xena's own line.
    #   (A cBarge whose target leaves: test_call8_… above.)
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "5000", user="Bob")
    px = h.add("SEP0000000000E1", "5000", user="Xena")
    pc, pd = h.add(C, "1003", user="Carol"), h.add(D, "1004", user="Dave")

    def barge() -> None:
        (hint,) = [ref for ref, cl in px.calls.items() if cl.state is CS.REMOTE_MULTILINE]
        px.barge(reference=hint)
        h.pump()
        assert h.only_call().barge == "barge" and h.only_call().barge_rule.startswith("CALL-1:")

    h.call(B, "1001")
    pa.answer()
    h.pump()
    barge()
    pb.hang_up()
    h.pump()
    assert h.agent.views() == [] and not px.calls and not pa.calls
    h.call(B, "1001")
    pa.answer()
    h.pump()
    conference_in(h, pb, pc)
    barge()
    pb.hang_up()
    h.pump()
    assert sorted(lg.role for lg in h.only_call().legs) == ["barge", "called", "called"]
    pc.hang_up()
    h.pump()
    assert sorted(lg.role for lg in h.only_call().legs) == ["barge", "called"]
    assert shows(px) == ("inbound", "1001", "Alice", "5000")
    assert shows(pa) == ("inbound", "5000", "Xena", "1001")
    # what `_far_party` relies on: an initiator left with one party has been named it (`far`)
    assert all(lg.far is not None for lg in h.agent.calls[h.only_call().id].legs)
    mark = consult_transfer(h, px, pd, "1004")
    assert not px.calls and sorted(lg.device for lg in h.only_call().legs) == [A, D]
    assert shows(pd) == ("inbound", "1001", "Alice", "1004")
    assert shows(pa) == ("inbound", "1004", "Dave", "1001")
    # bad case: nothing after the transfer names Xena's own line to Dave
    infos = [m for d, dv, m in h.log[mark:] if d == "down" and dv == D and isinstance(m, s.CallInfo)]
    assert infos and not [i for i in infos if "5000" in (i.calling_party, i.called_party)]


# -- a barge and the target's transfer or conference -----------------------------------------------
# CallManager: a Barge is mixed by the target's built-in bridge; when the target transfers or
# conferences the call the initiator is released and the others go on; when another party
# transfers it, the initiator and the target stay in. Before, a target transferring its
# consultation call left A, C and the initiator "connected" around a barge anchored on the
# departed leg, with no channel at all (nobody heard anyone).

XENA, YVES = "SEP0000000000E1", "SEP0000000000E2"


def hears(h: Harness, call_id: int) -> set[tuple[str, str]]:
    """(device, peer device, "bridge" or the hold resource) for every channel of the call,
    checked sound on both sides: every channel transmitting (a held side's music or tone on hold
    receive-only, its source sending to it), and each phone holding exactly the call's channels."""
    call = h.agent.calls[call_id]
    names = {lg.reference: lg.station.name for lg in call.legs}
    out = set()
    for ch in call.channels.values():
        if ch.sends:
            assert ch.tx is not None, f"{ch.leg.station.name}: a channel not started"
        else:   # a hold stream: the resource sends to the phone
            assert ch.peer[0] in (EndpointKind.MUSIC_ON_HOLD, EndpointKind.TONE_ON_HOLD)
            assert ch.rx is not None and h.resources.sending.get(ch.peer) == ch.rx
        peer = names[ch.peer[1]] if ch.peer[0] == "leg" else \
            "bridge" if ch.peer[0] is EndpointKind.CONFERENCE else ch.peer[0].value
        out.add((ch.leg.station.name, peer))
    for lg in call.legs:
        sends = {ch.party_id: ch.sends for ch in call.channels.values() if ch.leg is lg}
        on_phone = {pid for pid, pc in h.phones[lg.station.name].channels.items()
                    if pc.call_reference == lg.reference
                    and (pc.tx is not None if sends.get(pid, True) else pc.rx is not None)}
        assert on_phone == set(sends)
    return out


def assert_no_silent_call(h: Harness) -> None:
    """The bad case: a call whose connected parties have no media plan, or a barge anchored on
    a leg that is not in its call."""
    for call in h.agent.calls.values():
        talking = [lg for lg in call.legs if lg.state.value == "connected"]
        assert len(talking) < 2 or call.channels, \
            f"call {call.id}: {len(talking)} connected, no media"
        if call.barge is not None:
            assert call.barge.target in call.legs and call.barge.initiator in call.legs


def call_with(h: Harness, device: str):
    (call,) = [cl for cl in h.agent.calls.values() if any(lg.station.name == device
                                                           for lg in cl.legs)]
    return call


def press_barge(h: Harness, phone: SccpPhone, call, *, cbarge: bool = False) -> None:
    """`phone` presses Barge (or cBarge) on its "in use remote" appearance of `call`."""
    (ref,) = [r for r, cid in h.agent.stations[phone.device_name].hints.items() if cid == call.id]
    phone.barge(cbarge=cbarge, reference=ref)
    h.pump()


def barge_into(h: Harness, phone: SccpPhone, call) -> None:
    press_barge(h, phone, call)
    assert call.barge is not None and call.barge.initiator.station.name == phone.device_name


def barge_then_complete(h: Harness, pb: SccpPhone, pc: SccpPhone, barger: SccpPhone, *,
                        conference: bool = False):
    """Bob consults Carol, `barger` barges into the consultation (Bob–Carol), Bob completes the
    transfer (or conference). Returns the call barged into."""
    consult(h, pb, pc, conference=conference)
    call2 = call_with(h, C)
    barge_into(h, barger, call2)
    complete(h, pb, conference=conference)
    return call2


def display(phone: SccpPhone) -> list[tuple]:
    """What the phone shows for its calls (not their references)."""
    return sorted((CS(cl.state).name, cl.call_type, cl.calling, cl.calling_name, cl.called,
                   cl.security, tuple(phone.offered_names(cl))) for cl in phone.calls.values())


def plain_transfer_displays() -> tuple[list[tuple], list[tuple]]:
    """Alice's and Carol's displays after Bob transfers Alice to Carol, nobody barging."""
    h = Harness()
    pa, pb, _, pc, _ = barge_transfer_setup(h)
    consult(h, pb, pc)
    complete(h, pb)
    return display(pa), display(pc)


def barge_transfer_setup(h: Harness, *, codecs_a=(4, 2), codecs_c=(4, 2)):
    """Alice calls 5000 (Bob; Xena shares 5000), Bob answers and consults Carol (1003, shared
    with Yves), Carol answers. Returns the phones; call1 is Alice–Bob (held), call2 Bob–Carol."""
    pa = h.add(A, "1001", user="Alice", codecs=codecs_a)
    pb, px = h.add(B, "5000", user="Bob"), h.add(XENA, "5000", user="Xena")
    pc, py = h.add(C, "1003", user="Carol", codecs=codecs_c), h.add(YVES, "1003", user="Yves")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    return pa, pb, px, pc, py


@pytest.mark.parametrize("on_hook", [False, True])
def test_call1_a_barge_target_transferring_its_consultation_releases_the_initiator(on_hook):
    h = Harness()
    pa, pb, px, pc, _ = barge_transfer_setup(h)
    consult(h, pb, pc)
    call2 = call_with(h, C)
    barge_into(h, px, call2)
    assert call2.barge.result.rule_id == "CALL-1" and hears(h, call2.id) == {
        (C, B), (B, C), (XENA, B), (B, XENA)}   # the built-in bridge: Bob mixes
    complete(h, pb, on_hook=on_hook)
    assert_no_silent_call(h)
    call = call_with(h, A)
    assert call is call2 and call.barge is None
    assert sorted(lg.station.name for lg in call.legs) == [A, C]
    assert hears(h, call.id) == {(A, C), (C, A)}
    # every display agrees: Alice and Carol show what a transfer without a barge shows them
    # (connected, each other, the connected softkeys); Bob and Xena are idle, Xena shows no
    # "in use remote" (nobody on 5000 is in the call) and holds no channel
    assert (display(pa), display(pc)) == plain_transfer_displays()
    assert shows(pa) == ("outbound", "1001", "Alice", "1003")
    assert shows(pc)[:2] == ("inbound", "1001")
    assert not pb.calls and not pb.channels and not px.calls and not px.channels
    view = h.only_call()
    assert view.barge == "" and {lg.state for lg in view.legs} == {"connected"}


def test_call9_a_refused_transfer_leaves_the_barge_into_the_consultation_as_it_was():
    # bad case: the transfer is refused (Alice offers only µ-law, Carol only A-law: no common
    # codec) — the barge, its initiator and every channel stay as they were
    h = Harness()
    pa, pb, px, pc, _ = barge_transfer_setup(h, codecs_a=(4,), codecs_c=(2,))
    consult(h, pb, pc)
    call2 = call_with(h, C)
    barge_into(h, px, call2)
    before = hears(h, call2.id)
    complete(h, pb)
    assert pb.notifications[-1] == "No common codec"
    assert call2.barge is not None and call2.barge.target.station.name == B
    assert hears(h, call2.id) == before == {(C, B), (B, C), (XENA, B), (B, XENA)}
    assert [cl.state for cl in px.calls.values() if cl.state is not CS.REMOTE_MULTILINE] == [
        CS.CONNECTED]
    assert_no_silent_call(h)


def test_call1_the_old_transfer_left_a_barge_on_the_departed_leg_and_no_media(monkeypatch):
    # the defect, kept provable: without the release the transferred call is silent
    monkeypatch.setattr(CallAgent, "_barged_by", staticmethod(lambda call, leg: None))
    h = Harness()
    _, pb, px, pc, _ = barge_transfer_setup(h)
    barge_then_complete(h, pb, pc, px)
    with pytest.raises(AssertionError, match="no media"):
        assert_no_silent_call(h)


def test_call1_a_barge_into_a_call_its_target_holds_is_refused():
    # Bob holds Alice–Bob (consulting Carol); Xena presses Barge on it. Bob's phone, the
    # built-in bridge that would mix her in, is holding the call: as a hold releases a barge
    # (below), none is made — Xena hears busy ("Barge failed"), Alice keeps her music on hold,
    # and Bob's transfer is a plain one. Bad case: Xena and Alice talked directly around the
    # holding target, the topology a hold by the target ends.
    h = Harness()
    pa, pb, px, pc, _ = barge_transfer_setup(h)
    consult(h, pb, pc)
    call1 = call_with(h, A)
    before = {(lg.station.name, lg.state.value) for lg in call1.legs}
    press_barge(h, px, call1)
    assert call1.barge is None and {(lg.station.name, lg.state.value) for lg in call1.legs} == before
    failed = px.active_call()
    assert failed.tone == Tone.BUSY and failed.prompt == "Barge failed"
    refused = [e for e in h.events() if e.kind == "refused"]
    assert refused[-1].detail.startswith("CALL-1") and h.agent.barges_refused == 1
    (moh,) = pa.channels.values()
    assert moh.tx is None and moh.rx is not None   # Alice still hears music on hold
    complete(h, pb)
    assert_no_silent_call(h)
    call = call_with(h, A)
    assert hears(h, call.id) == {(A, C), (C, A)}
    assert (display(pa), display(pc)) == plain_transfer_displays()


def test_call1_a_cbarge_into_a_call_its_target_holds_goes_through_the_bridge():
    # a cBarge is mixed by the conference bridge, not the target's phone: the target's hold
    # takes nothing away, and Alice and Xena talk on the bridge
    h = Harness()
    pa, pb, px, pc, _ = barge_transfer_setup(h)
    consult(h, pb, pc)
    call1 = call_with(h, A)
    press_barge(h, px, call1, cbarge=True)
    assert call1.barge is not None and call1.barge.cbarge and call1.bridge
    assert hears(h, call1.id) == {(A, "bridge"), (XENA, "bridge")}


def test_call1_a_barge_ends_when_its_target_conferences_the_call():
    # Bob conferences Carol in while Xena barges into the consultation (Bob–Carol) (one into
    # the held call Alice–Bob is refused: above): Xena is released, Alice, Bob and Carol talk on the bridge, and Xena
    # — Bob is on 5000 — shows the conference "in use remote" (she may barge into it again).
    h = Harness()
    pa, pb, px, pc, _ = barge_transfer_setup(h)
    barge_then_complete(h, pb, pc, px, conference=True)
    assert_no_silent_call(h)
    call = call_with(h, A)
    assert call.barge is None and call.bridge
    assert sorted(lg.station.name for lg in call.legs) == [A, B, C]
    assert hears(h, call.id) == {(A, "bridge"), (B, "bridge"), (C, "bridge")}
    for phone in (pa, pb, pc):
        (shown,) = phone.calls.values()
        assert shown.state is CS.CONNECTED and "Conference" in (shown.calling, shown.called)
    assert [cl.state for cl in px.calls.values()] == [CS.REMOTE_MULTILINE] and not px.channels
    assert h.only_call().barge == ""


@pytest.mark.parametrize("conference", [False, True])
def test_call1_a_cbarge_into_the_consultation_ends_when_its_target_transfers_or_conferences(conference):
    # Xena cBarges into Bob–Carol (Bob the target); Bob completes the transfer (on hook: a
    # cBarge shows the conference keys) or the conference. The bridge mixes a cBarge, so Xena
    # talks on as a member — but its target left, which ends the barge as a target hanging up
    # does. Bad case: the call kept the record anchored on Bob's departed consultation leg (still
    # lowering what it shows, refusing every later barge with CALL-1, never ended by a target).
    h = Harness()
    pa, pb, px, pc, py = barge_transfer_setup(h)
    consult(h, pb, pc, conference=conference)
    call2 = call_with(h, C)
    press_barge(h, px, call2, cbarge=True)
    assert call2.barge.cbarge and call2.barge.target.station.name == B
    complete(h, pb, conference=conference, on_hook=not conference)
    assert_no_silent_call(h)
    call = call_with(h, A)
    assert call.barge is None and h.only_call().barge == "" and call.bridge
    members = [A, B, C, XENA] if conference else [A, C, XENA]
    assert sorted(lg.station.name for lg in call.legs) == members
    assert hears(h, call.id) == {(m, "bridge") for m in members}
    # a barge into it is judged as into any conference, not refused as "another barge"
    barge_into(h, py, call)
    assert call.barge.initiator.station.name == YVES


def test_call1_a_barge_whose_target_stays_survives_another_partys_transfer():
    # Yves (sharing Carol's 1003) barges into Bob–Carol: Carol is the target, Bob only a party.
    # Bob's transfer puts Alice in his place: Carol still mixes, Alice and Yves hear her.
    h = Harness()
    pa, pb, _, pc, py = barge_transfer_setup(h)
    call2 = barge_then_complete(h, pb, pc, py)
    assert_no_silent_call(h)
    assert call2.barge is not None and call2.barge.target.station.name == C
    assert sorted(lg.station.name for lg in call2.legs) == [A, C, YVES]
    assert hears(h, call2.id) == {(A, C), (C, A), (YVES, C), (C, YVES)}
    assert h.only_call().barge == "barge" and not pb.calls
    assert (display(pa), display(pc)) == plain_transfer_displays()
    (barged,) = [cl for cl in py.calls.values() if cl.state is not CS.REMOTE_MULTILINE]
    assert barged.state is CS.CONNECTED and (barged.calling, barged.called) == ("1001", "1003")


def test_call1_a_barge_whose_target_stays_survives_another_partys_conference_on_the_bridge():
    # Yves barges into Bob–Carol (Carol the target); Bob conferences it with Alice: all four talk
    # on the bridge and the barge is now one into a conference (its target leaving ends only it)
    h = Harness()
    pa, pb, _, pc, py = barge_transfer_setup(h)
    barge_then_complete(h, pb, pc, py, conference=True)
    assert_no_silent_call(h)
    call = call_with(h, A)
    assert call.bridge and call.barge is not None and call.barge.target.station.name == C
    assert hears(h, call.id) == {(A, "bridge"), (B, "bridge"), (C, "bridge"), (YVES, "bridge")}
    assert h.only_call().barge == "barge"
    pc.hang_up()
    h.pump()
    assert_no_silent_call(h)
    assert call.barge is None
    assert hears(h, call.id) == {(A, "bridge"), (B, "bridge"), (YVES, "bridge")}


# CallManager: the target holding the call takes its built-in bridge away — the initiator is
# released there and then. Before, Alice and Xena went on talking directly while Bob held.

def barge_into_alice_bob(h: Harness):
    """Xena (sharing Bob's 5000) barges into Alice–Bob: Bob, the target, mixes."""
    pa, pb, px, pc, py = barge_transfer_setup(h)
    call = call_with(h, A)
    barge_into(h, px, call)
    assert hears(h, call.id) == {(A, B), (B, A), (XENA, B), (B, XENA)}
    return pa, pb, px, pc, call


def test_call1_a_barge_target_holding_the_call_releases_the_initiator():
    h = Harness()
    pa, pb, px, _, call = barge_into_alice_bob(h)
    alice_before = display(pa)
    pb.hold()
    h.pump()
    assert_no_silent_call(h)
    assert call.barge is None and sorted(lg.station.name for lg in call.legs) == [A, B]
    # Xena is cleared as if she had hung up: no channel, her 5000 appearance "in use remote"
    # again (Barge offered), nothing else on her phone
    (hint,) = px.calls.values()
    assert hint.state is CS.REMOTE_MULTILINE and "Barge" in px.offered_names(hint)
    assert not px.channels
    # Alice, held, hears music on hold (the existing hold logic); Bob, holding, has no channel
    (moh,) = pa.channels.values()
    assert moh.tx is None and moh.rx is not None and not pb.channels
    assert h.only_call().resources == ("music on hold",) and h.only_call().barge == ""
    (held,) = pb.calls.values()
    assert held.state is CS.HOLD and "Resume" in pb.offered_names(held)
    # Bob resumes: Alice and Bob talk directly, Alice's display as before the barge
    pb.resume()
    h.pump()
    assert hears(h, call.id) == {(A, B), (B, A)} and display(pa) == alice_before
    assert h.resources.open_streams == {}


def test_call1_a_barge_target_starting_a_transfer_releases_the_initiator_at_once():
    # pressing Transfer holds the call: Xena goes then, and the transfer is a plain one
    h = Harness()
    pa, pb, px, pc, call = barge_into_alice_bob(h)
    consult(h, pb, pc)
    assert call.barge is None and sorted(lg.station.name for lg in call.legs) == [A, B]
    # Xena shows both of Bob's calls "in use remote" (the held one and the consultation)
    assert not px.channels and [cl.state for cl in px.calls.values()] == [CS.REMOTE_MULTILINE] * 2
    complete(h, pb)
    assert_no_silent_call(h)
    assert (display(pa), display(pc)) == plain_transfer_displays()
    assert not px.calls and not px.channels


def test_call1_before_the_release_the_initiator_talked_on_with_the_held_party(monkeypatch):
    # the defect, kept provable: without the release Alice and Xena talk directly around the
    # holding target, whose phone no longer mixes anything
    monkeypatch.setattr(CallAgent, "_barged_by", staticmethod(lambda call, leg: None))
    h = Harness()
    _, pb, px, _, call = barge_into_alice_bob(h)
    pb.hold()
    h.pump()
    assert call.barge is not None and hears(h, call.id) == {(A, XENA), (XENA, A)}


# The other party transfers a barged call: Alice transfers Alice–Bob (Xena barging, Bob the
# target) to Carol. CallManager moves Bob, and Xena through Bob's built-in bridge, to Carol.
# Before, the transfer was silently ignored (a pressed key that did nothing).

def other_party_setup(h: Harness, *, codecs_x=(4, 2), codecs_c=(4, 2)):
    pa = h.add(A, "1001", user="Alice")
    pb, px = h.add(B, "5000", user="Bob"), h.add(XENA, "5000", user="Xena", codecs=codecs_x)
    pc, py = h.add(C, "1003", user="Carol", codecs=codecs_c), h.add(YVES, "1003", user="Yves")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    return pa, pb, px, pc, py


def plain_other_party_transfer_displays() -> tuple[list[tuple], list[tuple]]:
    """Bob's and Carol's displays after Alice transfers Bob to Carol, nobody barging."""
    h = Harness()
    pa, pb, _, pc, _ = other_party_setup(h)
    consult(h, pa, pc)
    complete(h, pa)
    return display(pb), display(pc)


@pytest.mark.parametrize("on_hook", [False, True])
def test_call1_the_other_party_transferring_a_barged_call_moves_target_and_initiator(on_hook):
    h = Harness()
    pa, pb, px, pc, _ = other_party_setup(h)
    barge_into(h, px, call_with(h, A))
    consult(h, pa, pc)
    call2 = call_with(h, C)
    complete(h, pa, on_hook=on_hook)
    assert_no_silent_call(h)
    assert call_with(h, B) is call2 and call_with(h, XENA) is call2 and not pa.calls
    assert sorted(lg.station.name for lg in call2.legs) == [B, C, XENA]
    assert call2.barge.target.station.name == B and call2.barge.initiator.station.name == XENA
    # Bob's phone mixes Carol and Xena, as it mixed Alice and Xena
    assert hears(h, call2.id) == {(C, B), (B, C), (XENA, B), (B, XENA)}
    assert (display(pb), display(pc)) == plain_other_party_transfer_displays()
    (shown,) = px.calls.values()
    assert shown.state is CS.CONNECTED and (shown.calling, shown.called) == ("5000", "1003")
    assert h.only_call().barge == "barge"
    # the barge goes on as any: Bob hanging up ends it (his bridge is gone), Xena's is hers
    pb.hang_up()
    h.pump()
    assert not h.agent.calls and not px.channels and not pc.channels


def test_call1_the_other_partys_blind_transfer_of_a_barged_call_rings_then_connects_all_three():
    h = Harness()
    pa, pb, px, pc, py = other_party_setup(h)
    barge_into(h, px, call_with(h, A))
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    complete(h, pa)   # Carol (and Yves) still ringing: blind
    assert_no_silent_call(h)
    call2 = call_with(h, B)
    assert not pa.calls and call2.barge.initiator.station.name == XENA
    assert [cl.state for cl in pb.calls.values()] == [CS.RING_OUT]
    pc.answer()
    h.pump()
    assert_no_silent_call(h)
    assert hears(h, call2.id) == {(C, B), (B, C), (XENA, B), (B, XENA)}


@pytest.mark.parametrize("blind", [False, True])
def test_call1_an_initiator_holding_its_barge_stays_on_hold_when_carried_along(blind):
    # Xena holds her barge; Alice transfers Alice–Bob to Carol, Xena carried along on hold. Her
    # phone must go on showing the hold (Resume offered) — the model's state — and Bob and
    # Carol talk. Bad case: she was sent "Connected" (Hold offered, no Resume) while her leg
    # stayed held with no channel, a key that did nothing and no way back into the call.
    h = Harness()
    pa, pb, px, pc, _ = other_party_setup(h)
    barge_into(h, px, call_with(h, A))
    px.hold()
    h.pump()
    if blind:
        pa.transfer()
        h.pump()
        pa.keypad("1003")
        h.pump()
        complete(h, pa)
        pc.answer()
        h.pump()
    else:
        consult(h, pa, pc)
        complete(h, pa)
    call2 = call_with(h, C)
    assert call2.barge.initiator.station.name == XENA and call2.barge.initiator.state.value == "hold"
    (shown,) = px.calls.values()
    assert shown.state is CS.HOLD and "Resume" in px.offered_names(shown)
    assert not px.channels and hears(h, call2.id) == {(B, C), (C, B)}
    # she resumes: Bob's bridge mixes her in again
    px.resume()
    h.pump()
    assert px.calls[shown.reference].state is CS.CONNECTED
    assert hears(h, call2.id) == {(C, B), (B, C), (XENA, B), (B, XENA)}


def test_call1_an_initiator_leaving_while_a_blind_transfer_rings_ends_the_barge():
    h = Harness()
    pa, pb, px, pc, _ = other_party_setup(h)
    barge_into(h, px, call_with(h, A))
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    complete(h, pa)
    px.hang_up()
    h.pump()
    call2 = call_with(h, B)
    assert call2.barge is None and not px.calls
    pc.answer()
    h.pump()
    assert_no_silent_call(h)
    assert hears(h, call2.id) == {(B, C), (C, B)}


def test_call1_a_transfer_that_would_put_two_barges_in_one_call_is_refused_with_a_prompt():
    # Yves (sharing Carol's 1003) barges into the consultation Alice–Carol too: one call carries
    # one barge, so Alice's transfer is refused — and says so; both calls stay as they were
    h = Harness()
    pa, pb, px, pc, py = other_party_setup(h)
    call1 = call_with(h, B)
    barge_into(h, px, call1)
    consult(h, pa, pc)
    call2 = call_with(h, C)
    barge_into(h, py, call2)
    before = hears(h, call1.id), hears(h, call2.id)
    complete(h, pa)
    assert pa.notifications[-1] == "Barge in both calls"
    assert (hears(h, call1.id), hears(h, call2.id)) == before
    assert call1.barge.initiator.station.name == XENA and call2.barge.initiator.station.name == YVES
    assert_no_silent_call(h)


def test_call9_the_initiator_carried_along_counts_for_the_transfers_codec():
    # Xena offers only µ-law, Carol only A-law: Bob could talk to Carol, but his bridge could
    # not carry Xena to her — the transfer is refused as any without a common codec
    h = Harness()
    pa, pb, px, pc, _ = other_party_setup(h, codecs_x=(4,), codecs_c=(2,))
    call1 = call_with(h, B)
    barge_into(h, px, call1)
    consult(h, pa, pc)
    complete(h, pa)
    assert pa.notifications[-1] == "No common codec"
    assert call1.barge is not None and sorted(lg.station.name for lg in call1.legs) == [A, B, XENA]
    assert_no_silent_call(h)


def test_call1_before_a_barged_call_transferred_by_its_other_party_was_ignored(monkeypatch):
    # the defect, kept provable: the key did nothing and said nothing
    monkeypatch.setattr(CallAgent, "_riding_barge", staticmethod(lambda call, others: None))
    h = Harness()
    pa, pb, px, pc, _ = other_party_setup(h)
    barge_into(h, px, call_with(h, A))
    consult(h, pa, pc)
    complete(h, pa)
    assert len(h.agent.calls) == 2 and not pa.notifications
    assert sorted(lg.station.name for lg in call_with(h, B).legs) == [A, B, XENA]


# Two barges conferenced: Wanda (sharing Alice's 1001) barges into Alice–Bob, Yves (sharing
# Carol's 1003) into the consultation Bob–Carol; neither target is Bob, so neither is released.
# One call carries one barge record (CALL-1 refuses a second barge into a call): Bob's conference
# is refused, and says so. Before, it went ahead and the record kept Wanda only — Yves on the
# bridge with no record (the security shown him, a third barge's refusal, left to chance).

WANDA = "SEP0000000000E3"


def two_barges_setup(h: Harness):
    pa, pw = h.add(A, "1001", user="Alice"), h.add(WANDA, "1001", user="Wanda")
    pb = h.add(B, "5000", user="Bob")
    pc, py = h.add(C, "1003", user="Carol"), h.add(YVES, "1003", user="Yves")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    call1 = call_with(h, A)
    barge_into(h, pw, call1)
    consult(h, pb, pc, conference=True)
    call2 = call_with(h, C)
    barge_into(h, py, call2)
    return pb, call1, call2


def test_call1_conferencing_two_calls_each_keeping_a_barge_is_refused_with_a_prompt():
    h = Harness()
    pb, call1, call2 = two_barges_setup(h)
    before = hears(h, call1.id), hears(h, call2.id)
    # Bob holds call1 for his consultation: Alice, Wanda's target, is its held side — music on
    # hold, which her built-in bridge mixes for Wanda
    assert before == ({(A, WANDA), (WANDA, A), (A, "music on hold")},
                      {(C, B), (B, C), (YVES, C), (C, YVES)})
    complete(h, pb, conference=True)
    assert pb.notifications[-1] == "Barge in both calls"
    assert (hears(h, call1.id), hears(h, call2.id)) == before
    assert call1.barge.initiator.station.name == WANDA and call2.barge.initiator.station.name == YVES
    assert not call1.bridge and not call2.bridge
    assert_no_silent_call(h)
    # each barge ends as any: Yves hangs up, and Bob's conference goes ahead with Wanda's barge
    # — now a barge into the conference, the one record it has
    h.phones[YVES].hang_up()
    h.pump()
    complete(h, pb, conference=True)
    assert_no_silent_call(h)
    call = call_with(h, A)
    assert call.bridge and call.barge.initiator.station.name == WANDA
    assert hears(h, call.id) == {(A, "bridge"), (B, "bridge"), (C, "bridge"), (WANDA, "bridge")}


def test_call1_before_the_conference_of_two_barged_calls_kept_one_barge_record(monkeypatch):
    # the defect, kept provable: Yves stays on the bridge, the call's record names Wanda only
    monkeypatch.setattr(CallAgent, "_two_barges", lambda self, *args: False)
    h = Harness()
    pb, call1, _ = two_barges_setup(h)
    complete(h, pb, conference=True)
    yves = next(lg for lg in call1.legs if lg.station.name == YVES)
    assert yves.role == "barge" and call1.barge.initiator is not yves
    assert (YVES, "bridge") in hears(h, call1.id)


# A barge's initiator is a party through its target's built-in bridge (Barge) or the conference
# bridge (cBarge): as in CallManager it cannot transfer or conference that call. Its connected set
# offers neither key (SelectSoftKeys' valid-key mask takes them away; Hold and EndCall stay), and
# one sent anyway is refused with a prompt, nothing changed. Before, both were offered: Transfer
# held the barge, consulted, and its completion was ignored without a word; Confrn made a
# conference that still carried the barge record.

def barge_by_xena(h: Harness, *, cbarge: bool):
    """Alice (1001) calls Bob (5000); Xena, sharing 5000, barges (or cBarges) into the call."""
    pa, pb, px, pc, _ = other_party_setup(h)
    call = call_with(h, A)
    (ref,) = [r for r, cid in h.agent.stations[XENA].hints.items() if cid == call.id]
    px.barge(cbarge=cbarge, reference=ref)
    h.pump()
    assert call.barge is not None and call.barge.cbarge is cbarge
    return pa, pb, px, call


def everything(h: Harness) -> tuple:
    """Every call (parties, barge record, bridge, who hears whom) and every phone (its display,
    softkeys included, and channels): what a refused key must leave as it was."""
    calls = sorted((cl.id, sorted((lg.station.name, lg.reference, lg.state.value, lg.role)
                                  for lg in cl.legs),
                    (cl.barge.initiator.reference, cl.barge.target.reference, cl.barge.cbarge)
                    if cl.barge else None, cl.bridge, sorted(hears(h, cl.id)))
                   for cl in h.agent.calls.values())
    return calls, {name: (display(p), sorted(p.channels)) for name, p in h.phones.items()}


@pytest.mark.parametrize("cbarge", [False, True])
def test_call1_a_barge_initiator_is_offered_no_transfer_or_conference(cbarge):
    h = Harness()
    pa, pb, px, call = barge_by_xena(h, cbarge=cbarge)
    leg = call.barge.initiator
    shown = px.calls[leg.reference]
    # a Barge shows the two-party set, a cBarge (three on the bridge) the conference's: either
    # way, only Hold and EndCall
    keys = c.SoftKeySetIndex.CONNECTED_CONFERENCE if cbarge else c.SoftKeySetIndex.CONNECTED
    assert shown.state is CS.CONNECTED and shown.softkey_set == keys
    assert px.offered_names(shown) == ["Hold", "EndCall"]
    # as sent, through the codec and back: the set's Transfer and Confrn bits are cleared
    (last,) = [m for m in h.sent_to(XENA, c.SelectSoftKeys)
               if m.call_reference == leg.reference][-1:]
    wire = s.decode_message(last.MESSAGE_ID, last.serialize()[12:])
    assert wire == last and wire.soft_key_set == keys and wire.valid_key_mask == 0b11
    for key in (SoftKey.TRANSFER, SoftKey.CONFERENCE):
        with pytest.raises(PhoneActionError, match="not offered"):
            px.press(key, shown)
    # the target and the other party keep theirs (the target's transfer releases her)
    for phone in (pa, pb):
        assert phone.offered_names(phone.active_call()) == (
            ["Hold", "EndCall", "Confrn"] if cbarge else ["Hold", "EndCall", "Transfer", "Confrn"])


@pytest.mark.parametrize("cbarge", [False, True])
@pytest.mark.parametrize("key", [SoftKey.TRANSFER, SoftKey.CONFERENCE])
def test_call1_a_transfer_or_conference_sent_from_a_barge_leg_is_refused_with_a_prompt(cbarge, key):
    # bad case: the key sent anyway — as a softkey on the barge leg, as one with no call
    # reference (the active call: the barge), as the phone's own Transfer/Conference button —
    # is refused at once: no hold, no consultation, every call and display as it was
    h = Harness()
    _, _, px, call = barge_by_xena(h, cbarge=cbarge)
    leg = call.barge.initiator
    h.events()
    before, ignored = everything(h), h.agent.ignored
    button = c.StimulusType.TRANSFER if key is SoftKey.TRANSFER else c.StimulusType.CONFERENCE
    text = "No transfer from a barge" if key is SoftKey.TRANSFER else "No conference from a barge"
    presses = (c.SoftKeyEvent(key, leg.line, leg.reference), c.SoftKeyEvent(key, 0, 0),
               c.Stimulus(button, leg.line, leg.reference))
    for n, press in enumerate(presses, 1):
        h.agent.receive(XENA, press, h.now)
        h.pump()
        assert list(px.notifications)[-n:] == [text] * n
        assert everything(h) == before
        assert_no_silent_call(h)
    assert h.agent.ignored == ignored + len(presses)
    refused = [e for e in h.events() if e.kind == "refused"]
    assert len(refused) == len(presses) and all(
        e.detail.startswith("CALL-1: a barge initiator cannot") for e in refused)
    assert h.only_call().barge == ("cbarge" if cbarge else "barge") and len(call.legs) == 3


@pytest.mark.parametrize("cbarge", [False, True])
def test_call1_a_barge_initiators_hold_keeps_its_barge_and_its_keys_and_a_party_gets_them_back(cbarge):
    # Hold stays offered and is consistent: the initiator's hold leaves the barge (the others talk
    # on), its resume mixes it in again with the same keys; held, a Transfer sent is refused too.
    # When the barge ends with her still in the call (Alice hangs up) she is a party: Transfer
    # and Confrn are offered again, without a hold and resume.
    h = Harness()
    pa, pb, px, call = barge_by_xena(h, cbarge=cbarge)
    leg = call.barge.initiator
    px.hold(leg.reference)
    h.pump()
    held = px.calls[leg.reference]
    assert held.state is CS.HOLD and px.offered_names(held) == ["Resume", "NewCall", "EndCall"]
    assert call.barge is not None and call.barge.initiator is leg
    h.agent.receive(XENA, c.SoftKeyEvent(SoftKey.TRANSFER, leg.line, leg.reference), h.now)
    h.pump()
    assert px.notifications[-1] == "No transfer from a barge" and held.state is CS.HOLD
    px.resume(leg.reference)
    h.pump()
    assert px.offered_names(px.calls[leg.reference]) == ["Hold", "EndCall"]
    assert_no_silent_call(h)
    pa.hang_up()
    h.pump()
    assert call.barge is None and sorted(lg.station.name for lg in call.legs) == [B, XENA]
    shown = px.calls[leg.reference]
    assert shown.softkey_set == c.SoftKeySetIndex.CONNECTED
    assert px.offered_names(shown) == ["Hold", "EndCall", "Transfer", "Confrn"]
    assert_no_silent_call(h)


def held_everything(h: Harness) -> tuple:
    """`everything` for calls with held parties (music on hold: one-way channels): each call's
    legs and channels (device, peer), each phone's display and channels."""
    calls = sorted((cl.id, sorted((lg.station.name, lg.reference, lg.state.value, lg.role)
                                  for lg in cl.legs),
                    sorted((ch.leg.station.name, str(ch.peer)) for ch in cl.channels.values()))
                   for cl in h.agent.calls.values())
    return calls, {name: (display(p), sorted(p.channels)) for name, p in h.phones.items()}


@pytest.mark.parametrize("kind", ["transfer", "conference"])
def test_a_transfer_or_conference_sent_from_a_held_leg_is_refused_with_a_prompt(kind):
    # Alice consults Carol for Bob (Bob held) and then holds the consultation too. A held call
    # offers Resume, NewCall, EndCall only; nothing is transferred or conferenced from hold (a
    # held call's Transfer was already ignored). Bad case: the key sent anyway on the held
    # consultation, on the held call it was made for, or as the phone's button, did nothing at
    # all, not a word on the display. Now refused with a prompt, every call and display as it
    # was; resumed, the same key completes as usual.
    h = Harness()
    pa, pb = connected_pair(h)
    pc = h.add(C, "1003")
    consult(h, pa, pc, conference=kind == "conference")
    station = h.agent.stations[A]
    (held,) = [lg for lg in station.legs.values() if lg.consult_for is None]
    (consulting,) = [lg for lg in station.legs.values() if lg.consult_for is held]
    pa.hold(consulting.reference)
    h.pump()
    assert pa.active_call() is None and all(cl.state is CS.HOLD for cl in pa.calls.values())
    h.events()
    before, ignored = held_everything(h), h.agent.ignored
    key = SoftKey.TRANSFER if kind == "transfer" else SoftKey.CONFERENCE
    button = c.StimulusType.TRANSFER if kind == "transfer" else c.StimulusType.CONFERENCE
    text = "Resume to transfer" if kind == "transfer" else "Resume to conference"
    presses = (c.SoftKeyEvent(key, consulting.line, consulting.reference),
               c.SoftKeyEvent(key, held.line, held.reference),
               c.Stimulus(button, consulting.line, consulting.reference))
    for n, press in enumerate(presses, 1):
        h.agent.receive(A, press, h.now)
        h.pump()
        assert list(pa.notifications)[-n:] == [text] * n
        assert held_everything(h) == before
        assert_no_silent_call(h)
    assert h.agent.ignored == ignored + len(presses)
    refused = [e for e in h.events() if e.kind == "refused"]
    assert len(refused) == len(presses) and all("resume it first" in e.detail for e in refused)
    # resumed, the key does what it always did
    pa.resume(consulting.reference)
    h.pump()
    complete(h, pa, conference=kind == "conference")
    if kind == "transfer":
        assert not pa.calls and pb.active_call() is not None and pc.active_call() is not None
    else:
        assert len(h.only_call().legs) == 3
    assert_no_silent_call(h)


def test_a_join_sent_anyway_is_refused_with_a_prompt():
    # Join is in no softkey set (not implemented, never offered). Bad case: one sent anyway was
    # dropped by the softkey-set check without a word. Now the phone reads "Key is not active";
    # nothing else changes.
    h = Harness()
    pa, _ = connected_pair(h)
    ref = pa.active_call().reference
    before, ignored = everything(h), h.agent.ignored
    for press in (c.SoftKeyEvent(SoftKey.JOIN, 1, ref), c.SoftKeyEvent(SoftKey.JOIN, 0, 0)):
        h.agent.receive(A, press, h.now)
        h.pump()
        assert pa.notifications[-1] == "Key is not active"
        assert everything(h) == before
    assert h.agent.ignored == ignored + 2 and list(pa.notifications).count("Key is not active") == 2


@pytest.mark.parametrize("music", [True, False], ids=["music-on-hold", "tone-on-hold"])
def test_call1_the_other_party_holding_a_barged_call_plays_hold_media_to_the_target_and_resumes_the_barge(music):
    """A Barge (CALL-1): Bob (5000, the target) mixes Xena in; Alice, the other party, holds.
    Bob is the held side, as in a direct call: he gets music on hold (or the hold-tone stream when
    so configured), receive-only, which his built-in bridge mixes for Xena; Bob and Xena stay
    connected through it, the barge kept, their displays as they were (Xena: Hold, EndCall).
    Bad case: Bob and Xena got no hold media at all — only each other, Alice's side silent, as
    if nobody held. Alice's Resume brings back exactly the barge as it was: who hears whom, every
    display, the stream closed."""
    settings = AgentSettings(inter_digit_timeout=2.0, no_answer_timeout=10.0,
                             music_on_hold=music, tone_on_hold=not music)
    h = Harness(settings)
    pa, pb, px, call = barge_by_xena(h, cbarge=False)
    before = everything(h)
    pa.hold()
    h.pump()
    kind = EndpointKind.MUSIC_ON_HOLD if music else EndpointKind.TONE_ON_HOLD
    assert pa.active_call() is None and not pa.channels          # the holder's media stopped
    assert call.barge is not None and call.barge.target.station.name == B
    # Bob: the barge pair with Xena, both ways, and the hold stream from the resource
    peers = {ch.peer for ch in call.channels.values() if ch.leg.station.name == B}
    target = call.barge.target
    held = (kind, call.id, target.reference)
    assert peers == {("leg", call.barge.initiator.reference, "barge"), held}, peers
    stream = call.channels[(target.reference, held)]
    assert not stream.sends and stream.rx is not None
    assert h.resources.sending == {held: stream.rx}
    (pb_stream,) = [pc for pc in pb.channels.values() if pc.tx is None]
    assert pb_stream.rx == stream.rx
    # Xena: her one channel to Bob's bridge, transmitting both ways
    (xch,) = [ch for ch in call.channels.values() if ch.leg is call.barge.initiator]
    assert xch.peer == ("leg", target.reference, "barge") and xch.tx is not None
    assert (music and h.only_call().resources == ("music on hold",)) or \
        (not music and not h.only_call().resources)
    for phone in (pb, px):
        assert phone.active_call().state is CS.CONNECTED
    assert px.offered_names(px.active_call()) == ["Hold", "EndCall"]
    assert_no_silent_call(h)
    pa.resume()
    h.pump()
    (calls, shown), (calls_before, shown_before) = everything(h), before
    assert calls == calls_before and h.resources.open_streams == {}
    assert {n: d for n, (d, _) in shown.items()} == {n: d for n, (d, _) in shown_before.items()}
    assert {n: len(ch) for n, (_, ch) in shown.items()} == \
        {n: len(ch) for n, (_, ch) in shown_before.items()}   # channels anew, as many
    assert_no_silent_call(h)


def test_a_conference_with_a_gateway_party_down_to_two_shows_the_number_dialled_through_it():
    # Alice calls 5550102 through the gateway (its line is 5550000, its route pattern 555XXXX),
    # conferences Carol, and leaves. Carol read the gateway's own line, 5550000 — the party is
    # 5550102, as Alice dialled it; so does whoever Carol then transfers it to.
    h = Harness()
    pa, pc = h.add(A, "1001", user="Alice"), h.add(C, "1003", user="Carol")
    pg = h.add("GW1", "5550000", kind=EndpointKind.GATEWAY, route_pattern="555XXXX")
    h.call(A, "5550102")
    pg.answer()
    h.pump()
    pa.conference()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.conference(pa.active_call().reference)
    h.pump()
    pa.hang_up()
    h.pump()
    assert shows(pc) == ("inbound", "5550102", "5550102", "1003")
    mark = consult_transfer(h, pc, pa, "1001")
    assert shows(pa) == ("inbound", "5550102", "5550102", "1001")
    assert not [m for d, dv, m in h.log[mark:] if d == "down" and isinstance(m, s.CallInfo)
                and dv != "GW1" and "5550000" in (m.calling_party, m.called_party)]


def test_a_refused_transfer_changes_what_no_phone_shows():
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "1002", user="Bob", codecs=(4,))
    pc = h.add(C, "1003", user="Carol", codecs=(2,))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    before = shows(pb)
    consult_transfer(h, pa, pc, "1003")
    assert pa.notifications[-1] == "No common codec"
    assert shows(pb) == before == ("inbound", "1001", "Alice", "1002")
    (consult,) = [cl for cl in pa.calls.values() if cl.state is CS.CONNECTED]
    assert shows(pc) == ("inbound", "1001", "Alice", "1003")


def test_blind_transfer_completes_while_the_target_rings():
    h = Harness()
    pa, pb = connected_pair(h)
    pc = h.add(C, "1003")
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    consult = pa.active_call()
    assert consult.state is CS.RING_OUT
    pa.transfer(consult.reference)
    h.pump()
    assert not pa.calls
    b_call = next(iter(pb.calls.values()))
    assert b_call.state is CS.RING_OUT and b_call.tone == Tone.ALERTING
    pc.answer()
    h.pump()
    assert b_call.state is CS.CONNECTED
    assert sorted(lg.device for lg in h.only_call().legs) == [B, C]


def test_hanging_up_during_consultation_completes_the_transfer():
    h = Harness()
    pa, pb = connected_pair(h)
    pc = h.add(C, "1003")
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.on_hook()
    h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [B, C]


def test_ad_hoc_conference_through_the_bridge_and_back_to_two():
    h = Harness()
    pa, pb = connected_pair(h)
    pc = h.add(C, "1003")
    pa.conference()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.conference(pa.active_call().reference)
    h.pump()
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [A, B, C] and "conference bridge" in view.resources
    for phone in (pa, pb, pc):
        (ch,) = phone.channels.values()
        assert ch.tx == h.resources.open_streams[next(k for k, v in h.resources.sending.items()
                                                      if v == ch.rx)]
    assert len(h.resources.sending) == 3
    pc.hang_up()
    h.pump()
    view = h.only_call()
    assert view.resources == () and sorted(lg.device for lg in view.legs) == [A, B]
    assert h.resources.open_streams == {}
    (cha,), (chb,) = pa.channels.values(), pb.channels.values()
    assert cha.tx == chb.rx


def test_a_conference_down_to_two_offers_transfer_again_without_hold_and_resume():
    # After a conference dropped to two the phones kept the conference softkey set (no Transfer)
    # until a hold and resume. The party talking gets the connected set (and prompt) as the call
    # becomes a two-party call; one holding keeps its hold set until it resumes. A conference of
    # four down to three is still a conference: nobody is sent the connected set.
    h = Harness()
    pa, pb = connected_pair(h)
    pc, pd = h.add(C, "1003"), h.add(D, "1004")
    for number, phone in (("1003", pc), ("1004", pd)):
        pa.conference()
        h.pump()
        pa.keypad(number)
        h.pump()
        phone.answer()
        h.pump()
        pa.conference(pa.active_call().reference)
        h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [A, B, C, D]
    pb.hold()
    h.pump()
    mark = len(h.log)
    pd.hang_up()
    h.pump()
    assert [m for d, _, m in h.log[mark:] if d == "down" and isinstance(m, c.SelectSoftKeys)
            and m.soft_key_set == c.SoftKeySetIndex.CONNECTED] == []
    assert pa.active_call().softkey_set == pc.active_call().softkey_set == \
        c.SoftKeySetIndex.CONNECTED_CONFERENCE
    pc.hang_up()
    h.pump()
    assert "conference bridge" not in h.only_call().resources
    (ca,), (cb,) = pa.calls.values(), pb.calls.values()
    assert ca.softkey_set == c.SoftKeySetIndex.CONNECTED and ca.prompt == "Connected"
    assert "Transfer" in pa.offered_names(ca)
    assert cb.state is CS.HOLD and cb.softkey_set == c.SoftKeySetIndex.ON_HOLD
    pb.resume()
    h.pump()
    assert cb.softkey_set == c.SoftKeySetIndex.CONNECTED
    # Transfer is pressed straight away (the phone refuses a key its display does not offer)
    consult_transfer(h, pa, pc, "1003")
    assert sorted(lg.device for lg in h.only_call().legs) == [B, C] and not pa.calls


def test_conference_needs_an_answered_consultation():
    h = Harness()
    pa, pb = connected_pair(h)
    h.add(C, "1003")
    pa.conference()
    h.pump()
    pa.keypad("1003")
    h.pump()
    consult = pa.active_call()
    assert consult.state is CS.RING_OUT
    pa.press(c.SoftKey.CONFERENCE, consult)   # offered while ringing, but cannot join yet
    h.pump()
    assert len(h.agent.calls) == 2
    assert not any("conference bridge" in v.resources for v in h.agent.views())


# -- forwarding ---------------------------------------------------------------------------------------

def test_call_forward_all_set_from_the_phone():
    h = Harness()
    pa, pb, pc = h.add(A, "1001"), h.add(B, "1002"), h.add(C, "1003")
    pb.forward_all("1003")
    h.pump()
    assert pb.forward[1].forward_all_active and pb.forward[1].forward_all_number == "1003"
    assert not pb.calls
    h.call(A, "1002")
    assert not pb.calls and next(iter(pc.calls.values())).original_called == "1002"
    pc.answer()
    h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [A, C]
    pb.forward_all("")   # pressing CFwdALL again turns it off
    h.pump()
    assert not pb.forward[1].forward_all_active


@pytest.mark.parametrize("forward", [True, False])
def test_a_forwarded_calls_parties_keep_its_original_called_number_through_a_conference(forward):
    # Alice dials 1002, forwarded all to Bob's 5000 (Xena shares 5000). Every CallInfo of the
    # call carries 1002 as its original called number (ui.original_called), the parties' as its
    # "in use remote" hint's: a conference and its end re-send each party a CallInfo, which
    # replaces all the phone shows. Bad case: Alice and Bob lost "1002" (the conference's
    # CallInfos went out without it) while Xena's hint kept it; a call not forwarded shows none.
    h = Harness()
    pa, _ = h.add(A, "1001", user="Alice"), h.add(D, "1002", user="Dora")
    pb, pc = h.add(B, "5000", user="Bob"), h.add(C, "1003", user="Carol")
    px = h.add(XENA, "1004", "5000")
    if forward:
        h.agent.forward_all["1002"] = "5000"
    h.call(A, "1002" if forward else "5000")
    pb.answer()
    h.pump()
    original = "1002" if forward else ""

    def originals() -> list[str]:
        return [cl.original_called for p in (pa, pb, px) for cl in p.calls.values()]

    assert originals() == [original] * 3
    conference_in(h, pb, pc)
    assert next(iter(pa.calls.values())).called == "Conference" and originals() == [original] * 3
    pc.hang_up()
    h.pump()
    assert originals() == [original] * 3


def test_call_forward_busy_and_no_answer_from_line_configuration():
    h = Harness()
    pa = h.add(A, "1001")
    pb = h.add(B, "1002", forward_busy="1004", forward_no_answer="1003")
    pc, pd = h.add(C, "1003"), h.add(D, "1004")
    h.call(A, "1002")
    assert next(iter(pb.calls.values())).state is CS.RING_IN
    h.advance(11)   # no answer within 10 s -> 1003
    assert not pb.calls and next(iter(pc.calls.values())).state is CS.RING_IN
    pc.answer()
    h.pump()
    pb2 = h.add("SEP000000000009", "1009")
    h.call("SEP000000000009", "1002")   # B is idle but A and C are talking; B rings
    pb.answer()
    h.pump()
    pf = h.add("SEP00000000000F", "1010")
    h.call("SEP00000000000F", "1002")   # B busy -> call forward busy to 1004
    ringing = next(iter(pd.calls.values()))
    assert ringing.state is CS.RING_IN and ringing.original_called == "1002"
    assert pb2.calls and pf.calls


def test_forward_loops_are_bounded():
    h = Harness()
    pa, pb, pc = h.add(A, "1001"), h.add(B, "1002"), h.add(C, "1003")
    pb.forward_all("1003")
    pc.forward_all("1002")
    h.pump()
    h.call(A, "1002")
    (call,) = pa.calls.values()
    assert call.state in (CS.RING_OUT, CS.CONGESTION, CS.BUSY)  # no endless redirect
    assert len(h.agent.calls) <= 1


# -- shared lines ---------------------------------------------------------------------------------------

def test_shared_line_rings_every_appearance_first_answer_wins():
    h = Harness()
    pa = h.add(A, "1001")
    pb, pc = h.add(B, "5000"), h.add(C, "5000")
    h.call(A, "5000")
    assert next(iter(pb.calls.values())).state is CS.RING_IN
    assert next(iter(pc.calls.values())).state is CS.RING_IN
    pc.answer()
    h.pump()
    (hint,) = pb.calls.values()
    assert hint.state is CS.REMOTE_MULTILINE and not hint.ringing
    assert "Barge" in pb.offered_names(hint)
    assert sorted(lg.device for lg in h.only_call().legs) == [A, C]
    pa.hang_up()
    h.pump()
    assert not pb.calls and not pc.calls


def test_two_phones_answering_a_shared_line_at_once():
    h = Harness()
    h.add(A, "1001")
    pb, pc = h.add(B, "5000"), h.add(C, "5000")
    h.call(A, "5000")
    rb, rc = next(iter(pb.calls.values())), next(iter(pc.calls.values()))
    pb.answer()
    pc.answer()   # both press Answer before either hears back
    h.pump()
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [A, B]
    assert rb.state is CS.CONNECTED and rc.state is CS.REMOTE_MULTILINE
    assert len(pc.channels) == 0 and h.agent.ignored >= 1


# -- bad input -------------------------------------------------------------------------------------------

def test_stale_references_and_out_of_order_messages_change_nothing():
    h = Harness()
    pa, pb = connected_pair(h)
    before = h.only_call()
    for m in (s.OpenReceiveChannelAck(0, "10.9.9.9", 4000, 999_999, 1), c.SoftKeyEvent(c.SoftKey.HOLD, 1, 999_999),
              c.SoftKeyEvent(c.SoftKey.RESUME, 1, 0), c.SoftKeyEvent(c.SoftKey.ANSWER, 1, 0),
              s.OnHook(1, 424242), c.SoftKeyEvent(c.SoftKey.TRANSFER, 1, 999_999),
              s.StartMediaTransmissionAck(), c.Stimulus(c.StimulusType.SPEED_DIAL, 7)):
        pa._send(m)
        h.pump()
    assert h.only_call() == before
    # a second ack for a channel already acked is out of order too
    (ch,) = pa.channels.values()
    pa._send(s.OpenReceiveChannelAck(0, "10.9.9.9", 4000, ch.party_id, ch.call_reference))
    h.pump()
    assert h.only_call() == before


def test_digits_during_ringing_and_a_keypad_flood_are_bounded():
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, "1002")
    h.call(A, "1002")
    ignored = h.agent.ignored
    for _ in range(50):
        pb._send(s.KeypadButton(5, 1, next(iter(pb.calls))))
        pa._send(s.KeypadButton(5))
    h.pump()
    assert h.agent.ignored == ignored + 100
    assert next(iter(pb.calls.values())).state is CS.RING_IN
    pa.hang_up()
    h.pump()
    pd = h.add(D, "1" * 24)
    pa.off_hook()
    ignored = h.agent.ignored
    for _ in range(200):
        pa._send(s.KeypadButton(1))
    h.pump()
    leg = next(lg for lg in h.agent.legs.values() if lg.station.name == A)
    assert leg.digits == "1" * 24 and h.agent.ignored == ignored + 176
    assert next(iter(pd.calls.values())).state is CS.RING_IN


def test_a_phone_that_disappears_mid_call_clears_the_other_side_and_frees_resources():
    h = Harness()
    pa, pb = connected_pair(h)
    pa.hold()
    h.pump()
    assert h.resources.open_streams
    h.gone(A)
    assert not pb.calls and not pb.channels
    assert h.agent.calls == {} and h.agent.legs == {} and h.resources.open_streams == {}
    assert B in h.agent.stations and A not in h.agent.stations


def test_messages_from_unregistered_devices_are_ignored():
    h = Harness()
    h.agent.receive("SEP0000000000FF", s.OffHook(), h.now)
    assert h.agent.messages_to_send() == [] and h.agent.ignored == 1


def test_events_describe_each_change():
    h = Harness()
    connected_pair(h)
    kinds = [e.kind for e in h.events()]
    assert kinds[0] == "created" and "updated" in kinds
    h.phones[A].hang_up()
    h.pump()
    assert [e.kind for e in h.events()][-1] == "ended"


def test_call9_hanging_up_during_a_consultation_whose_transfer_is_refused_ends_the_consultation():
    # B speaks G.729 only, C G.711 µ-law only: the transfer is refused (no transcoder). A hung
    # up — its phone is on hook — so the consultation must end, not stay connected to C.
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(4, 18)), h.add(B, "1002", codecs=(18,))
    pc = h.add(C, "1003", codecs=(4,))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.on_hook()
    h.pump()
    assert h.agent.codec_refusals == 1
    view = h.only_call()   # A–B stays, on hold; the A–C consultation is gone
    assert sorted(lg.device for lg in view.legs) == [A, B]
    assert not pc.calls and not pc.channels
    assert [cl.state for cl in pa.calls.values()] == [CS.HOLD]


def test_call9_a_phone_whose_capabilities_have_not_arrived_yet_is_not_refused_at_offer():
    # B registered but its CapabilitiesRes (asked with the RegisterAck) is not in yet: that is
    # "not known", not "G.711 µ-law only" — a G.729 caller rings it; the answer decides.
    h = Harness()
    h.add(A, "1001", codecs=(18,))
    pb = h.add(B, "1002", codecs=None)
    h.call(A, "1002")
    assert h.agent.codec_refusals == 0
    ringing = next(iter(pb.calls.values()))
    assert ringing.state is CS.RING_IN
    h.agent.capabilities(B, s.CapabilitiesRes((s.MediaCapability(4), s.MediaCapability(18))))
    pb.answer()
    h.pump()
    view = h.only_call()
    assert view.phase == "connected" and view.codec == 18


def test_call9_an_appearance_refused_at_answer_leaves_the_other_appearances_ringing():
    # A shared line rings B and C; B's capabilities change while it rings (no codec in common
    # with A any more). B's answer is refused, but C can still take the call.
    h = Harness()
    h.add(A, "1001", codecs=(18,))
    pb, pc = h.add(B, "1002", codecs=(18, 4)), h.add(C, "1002", codecs=(18, 4))
    h.call(A, "1002")
    h.agent.capabilities(B, s.CapabilitiesRes((s.MediaCapability(4),)))
    pb.answer()
    h.pump()
    assert h.agent.codec_refusals == 1
    view = h.only_call()
    assert view.phase == "setup" and sorted(lg.device for lg in view.legs) == [A, C]
    assert not pb.calls
    pc.answer()
    h.pump()
    view = h.only_call()
    assert view.phase == "connected" and view.codec == 18
    assert sorted(lg.device for lg in view.legs) == [A, C]


def test_call9_a_barge_into_a_conference_keeps_the_bridge_codec():
    # A, B (shared with D) and C are in an ad hoc conference: the bridge mixes G.711 µ-law. All
    # four also offer G.729, so re-choosing the codec for D's barge picked G.729 and moved every
    # channel to the bridge in a codec the bridge does not mix.
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(18, 4)), h.add(B, "1002", codecs=(18, 4))
    pc, pd = h.add(C, "1003", codecs=(18, 4)), h.add(D, "1002", codecs=(18, 4))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    pa.conference()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.conference(pa.active_call().reference)
    h.pump()
    assert h.only_call().codec == 4 and "conference bridge" in h.only_call().resources
    pd.barge()
    h.pump()
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [A, B, C, D]
    assert view.codec == 4
    for phone in (pa, pb, pc, pd):
        assert [ch.codec for ch in phone.channels.values()] == [4]


def test_call9_a_blind_transfer_to_a_shared_line_rings_the_appearances_that_share_a_codec():
    # B speaks G.729 only; A's consultation rings the shared line 1003 on C (µ-law only) and D
    # (G.729). Transferred blind, B must ring D — as a call from B would — not be refused
    # because C cannot speak to it.
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(18, 4)), h.add(B, "1002", codecs=(18,))
    pc, pd = h.add(C, "1003", codecs=(4,)), h.add(D, "1003", codecs=(18,))
    h.call(A, "1002")
    pb.answer()
    h.pump()
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    assert pc.calls and pd.calls   # A shares a codec with both
    pa.transfer(pa.active_call().reference)
    h.pump()
    assert h.agent.codec_refusals == 0 and not pa.calls
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [B, D] and not pc.calls
    pd.answer()
    h.pump()
    view = h.only_call()
    assert view.phase == "connected" and view.codec == 18


def test_an_enbloc_number_ending_in_hash_to_an_unregistered_number_is_temporarily_unavailable():
    # '#' only ends dialling: "1009#" is 1009, configured but not registered → "Temp Fail",
    # as "1009" is — not "Unknown Number".
    h = Harness()
    pa = h.add(A, "1001")
    h.agent.set_configured_numbers({"1001", "1009"})
    h.agent.receive(A, c.EnblocCall("1009#", 1), h.now)
    h.pump()
    (call,) = pa.calls.values()
    assert call.tone == Tone.REORDER and call.prompt == "Temp Fail"


def test_call9_the_caller_shows_the_status_of_the_appearances_still_ringing_after_one_is_refused():
    # While it rings, A shows the status of A with every ringing appearance: with the
    # non-secure B it is non-secure; once B's answer is refused (no common codec) only the
    # authenticated C rings and A shows authenticated.
    from tests.unit.calls_harness import AUTH
    h = Harness()
    pa = h.add(A, "1001", mode=AUTH, codecs=(18,))
    pb, pc = h.add(B, "1002", codecs=(18, 4)), h.add(C, "1002", mode=AUTH, codecs=(18, 4))
    h.call(A, "1002")
    (ca,) = pa.calls.values()
    assert ca.icon == "none"
    h.agent.capabilities(B, s.CapabilitiesRes((s.MediaCapability(4),)))
    pb.answer()
    h.pump()
    assert h.agent.codec_refusals == 1 and ca.icon == "shield"


def over_the_wire(phone: SccpPhone) -> list[s.Message]:
    """What the phone sent, through the basic-layout codec (a 24-byte number field) and back."""
    out = []
    for m in phone.messages_to_send():
        frame = m.serialize()
        out.append(s.decode_message(m.MESSAGE_ID, frame[12:]))
    return out


def test_a_24_digit_enbloc_number_with_or_without_the_ending_hash_calls_it():
    # '#' only ends dialling: 24 digits + '#' is the 24-digit number, not 25 characters over the
    # bound (it was dropped silently: no call, no tone). Through the agent as sent, and from the
    # phone's dial path over the wire codec (the field holds 24 characters).
    number = "1" * 23 + "2"
    for dialled in (number + "#", number):
        h = Harness()
        pa, pb = h.add(A, "1001"), h.add(B, number)
        h.agent.receive(A, c.EnblocCall(dialled, 1), h.now)
        h.pump()
        (call,) = pa.calls.values()
        assert call.state is CS.RING_OUT and call.dialed == number, dialled
        assert [cl.state for cl in pb.calls.values()] == [CS.RING_IN]
        assert h.only_call().called == number
        pa.hang_up()
        h.pump()
        h.advance(1)
        pa.dial(dialled)
        (sent,) = over_the_wire(pa)
        assert sent == c.EnblocCall(number, 1)
        h.agent.receive(A, sent, h.now)
        h.pump()
        (call,) = pa.calls.values()
        assert call.state is CS.RING_OUT and call.dialed == number
        assert h.agent.stations[A].last_dialed == number
    # keypad: 24 digits and the '#' ending them are one number's presses
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, number)
    pa.off_hook()
    h.pump()
    pa.keypad(number + "#")
    h.pump()
    assert [cl.state for cl in pb.calls.values()] == [CS.RING_IN]


def test_caller_id_of_a_24_digit_number_goes_out_whole_over_the_wire():
    # CallInfo's party number fields are 24 bytes: the agent cut numbers to 23 characters, so a
    # 24-digit caller showed one digit short. Every CallInfo sent, through the wire codec and
    # back, names both 24-digit parties whole (a forwarded call's original called number too).
    caller, callee, target = "1" * 23 + "2", "2" * 23 + "3", "3" * 23 + "4"
    h = Harness()
    pa, pb = h.add(A, caller), h.add(B, callee, forward_busy=target)
    pc = h.add(C, target)
    h.call(A, callee)
    pb.answer()
    h.pump()
    infos = h.sent_to(A, s.CallInfo) + h.sent_to(B, s.CallInfo)
    assert infos
    for info in infos:
        back = s.decode_message(info.MESSAGE_ID, info.serialize()[12:])
        assert (back.calling_party, back.called_party) == (caller, callee)
    (ca,), (cb,) = pa.calls.values(), pb.calls.values()
    assert (ca.calling, ca.called) == (cb.calling, cb.called) == (caller, callee)
    # B busy: forwarded to C, which shows who called and the number first called
    pd = h.add(D, "1004")
    h.call(D, callee)
    pc.answer()
    h.pump()
    (cc,) = pc.calls.values()
    assert (cc.calling, cc.called, cc.original_called) == ("1004", target, callee)
    back = s.decode_message(0x008F, h.sent_to(C, s.CallInfo)[-1].serialize()[12:])
    assert (back.called_party, back.original_called_party) == (target, callee)
    assert pd.active_call().called == target


def test_a_40_character_display_name_goes_out_whole_in_callinfo():
    # CallInfo's party name fields are 40 bytes and a display name has at most 40 characters
    # (refused at input beyond), but call control cut names to 39 (room for a NUL the field does not need):
    # a 40-character name lost its last character. Through the wire codec and back, the caller's
    # name reads whole, and so do the names a transfer puts in each party's CallInfo.
    alice, bob, carol = "A" * 39 + "e", "B" * 39 + "b", "C" * 39 + "l"
    h = Harness()
    pa, pb = h.add(A, "1001", user=alice), h.add(B, "1002", user=bob)
    pc = h.add(C, "1003", user=carol)
    h.call(A, "1002")
    pb.answer()
    h.pump()

    def wire(info: s.CallInfo) -> s.CallInfo:
        payload = info.payload()
        assert len(payload) == len(s.CallInfo().payload())   # the fields, not a longer frame
        return s.decode_message(info.MESSAGE_ID, payload)

    infos = [wire(m) for m in h.sent_to(B, s.CallInfo)]
    assert infos and {i.calling_party_name for i in infos} == {alice}
    assert pb.active_call().calling_name == alice
    mark = consult_transfer(h, pa, pc, "1003")
    # Bob (called by Alice) now reads "from Carol" (his own name as the called one), Carol "from
    # Bob": each name whole
    to_b = [m for d, dv, m in h.log[mark:] if d == "down" and dv == B and isinstance(m, s.CallInfo)][-1]
    to_c = [m for d, dv, m in h.log[mark:] if d == "down" and dv == C and isinstance(m, s.CallInfo)][-1]
    assert (wire(to_b).calling_party_name, wire(to_b).called_party_name) == (carol, bob)
    assert wire(to_c).calling_party_name == bob


def test_a_display_name_over_40_characters_is_refused_at_input_and_cut_to_the_field_if_stored():
    # Bad cases: a 41-character display name is refused where it is entered, naming the field; the
    # codec refuses one in a CallInfo naming the field (never overflows it); and a longer name that
    # reached the core anyway (a device's user) is cut to the field's 40, not refused mid-call.
    from ccmsec.db.calls import InvalidCallConfig, validate_label
    assert validate_label("N" * 40, field="display_name") == "N" * 40
    with pytest.raises(InvalidCallConfig, match="display_name.*41 characters, at most 40"):
        validate_label("N" * 41, field="display_name")
    with pytest.raises(s.SccpProtocolError, match="calling_party_name: 41 bytes do not fit a 40-byte"):
        s.CallInfo(calling_party_name="N" * 41).payload()
    h = Harness()
    h.add(A, "1001", user="U" * 39 + "VW")
    pb = h.add(B, "1002")
    h.call(A, "1002")
    h.pump()
    (ringing,) = pb.calls.values()
    assert ringing.state is CS.RING_IN and ringing.calling_name == "U" * 39 + "V"


def test_a_stored_name_that_is_not_printable_ascii_is_shown_with_question_marks_in_callinfo():
    # Bad input that got past the input check (a row stored before it): a display name or user
    # with non-ASCII or control characters made every CallInfo naming it unencodable — the
    # service's pump raised SccpProtocolError and lost what was queued for the other phones. It
    # is shown as LineStat shows it (printable ASCII, '?' for the rest, at most 40), on the
    # called phone, after a transfer on both sides, and on a shared line's "in use remote" hint.
    zoe, tab = "Zo\u00eb M\u00fcller", "Bad\tName" + "\u00e9" * 40
    h = Harness()
    pa, pb = h.add(A, "1001", user=zoe), h.add(B, "1002", user=tab)
    pc, px = h.add(C, "1003"), h.add(D, "1002")
    h.call(A, "1002")
    pb.answer()
    h.pump()
    assert shows(pb)[2] == "Zo? M?ller"
    consult_transfer(h, pa, pc, "1003")
    infos = [m for d, _, m in h.log if d == "down" and isinstance(m, s.CallInfo)]
    names = set()
    for info in infos:
        back = s.decode_message(info.MESSAGE_ID, info.payload())   # encodes: no exception
        names |= {back.calling_party_name, back.called_party_name}
    assert {"Zo? M?ller", "Bad?Name" + "?" * 32} <= names
    assert shows(pc)[2] == "Bad?Name" + "?" * 32   # Carol reads "from Bob" after the transfer
    hint = [m for m in h.sent_to(D, s.CallInfo) if m.calling_party_name]
    assert hint and {m.calling_party_name for m in hint} <= {"Zo? M?ller", "Bad?Name" + "?" * 32}


def test_an_enbloc_number_over_24_digits_is_refused_as_unknown_not_ignored():
    # 25 digits (with or without the ending '#') names no line: reorder and 'Unknown Number'
    # on the caller, like any number the dial plan does not know; nothing rings, and the failed
    # call clears by itself (the phone is not left off-hook).
    for dialled in ("1" * 25, "1" * 25 + "#", "1" * 24 + "##"):
        h = Harness()
        pa, pb = h.add(A, "1001"), h.add(B, "1" * 24)
        h.agent.receive(A, c.EnblocCall(dialled, 1), h.now)
        h.pump()
        (call,) = pa.calls.values()
        assert call.tone == Tone.REORDER and call.prompt == "Unknown Number", dialled
        assert call.state is CS.INVALID_NUMBER
        assert not pb.calls and h.agent.views() == []
        h.advance(h.agent.settings.failed_call_timeout + 1)
        assert not pa.calls and not h.agent.legs
        # the phone's own dial path says why before sending anything
        with pytest.raises(PhoneActionError, match="at most 24"):
            pa.dial(dialled)
        assert pa.messages_to_send() == []
    with pytest.raises(PhoneActionError, match="at most 24"):
        h.phones[A].keypad("1" * 25)


def test_forward_all_to_a_number_over_24_digits_is_refused_by_the_phone_not_cut_to_24():
    # The phone keyed every digit; call control keeps a number's first 24 and sets the forward
    # as soon as they name a line: CFwdALL to 25 digits silently forwarded to another number.
    number = "1" * 24
    h = Harness()
    pa = h.add(A, "1001")
    h.add(B, number)
    with pytest.raises(PhoneActionError, match="is not a number to forward to"):
        pa.forward_all(number + "5")
    assert pa.messages_to_send() == [] and h.agent.forward_all == {}
    for bad in ("12a4", "10#2"):
        with pytest.raises(PhoneActionError, match="is not a number to forward to"):
            pa.forward_all(bad)
    assert pa.messages_to_send() == []
    pa.forward_all(number)   # 24 digits are a number
    h.pump()
    assert h.agent.forward_all == {"1001": number}


def test_a_25th_keypad_digit_is_refused_as_unknown_not_ignored():
    # Overlap dialling keeps the en-bloc bound: a dialling leg holding 24 digits takes no 25th.
    # It is refused as en-bloc refuses 25 digits (reorder, 'Unknown Number', the failed call
    # cleared by its timer) — it was dropped, the phone left dialling in silence. Profiles keep
    # numbers and patterns to 24, so only a dial plan holding a longer destination (planted
    # here, as a defect elsewhere could) keeps 24 digits dialling; '#' in place of the 25th
    # digit still dials the 24-digit number.
    number = "1" * 23 + "2"
    for last in ("3", "#"):
        h = Harness()
        pa, pb = h.add(A, "1001"), h.add(B, number)
        h.agent.plan.add_dn(number + "3")   # 25 characters: no profile may configure it
        pa.off_hook()
        h.pump()
        pa.keypad(number)
        h.pump()
        (leg,) = h.agent.legs.values()
        assert leg.digits == number and not pb.calls   # ambiguous: waiting for more
        ignored = h.agent.ignored
        pa.keypad(last)
        h.pump()
        (call,) = pa.calls.values()
        if last == "#":
            assert call.state is CS.RING_OUT and call.dialed == number
            assert [cl.state for cl in pb.calls.values()] == [CS.RING_IN]
            assert h.only_call().called == number
            continue
        assert call.tone == Tone.REORDER and call.prompt == "Unknown Number"
        assert call.state is CS.INVALID_NUMBER and h.agent.ignored == ignored
        assert not pb.calls and h.agent.views() == []
        h.advance(h.agent.settings.failed_call_timeout + 1)
        assert not pa.calls and not h.agent.legs


def test_keypad_digits_past_24_reach_a_refused_or_a_routed_call():
    # With the configured bound on numbers, 24 keypad digits are never still dialling: those of
    # an unknown number were refused at the first digit no number starts with (reorder,
    # 'Unknown Number', the presses after it change nothing); those of a 24-digit number ring
    # it at the 24th (a complete number routes at once), and a 25th press reaches that call.
    h = Harness()
    pa, pb = h.add(A, "1001"), h.add(B, "1" * 24)
    pa.off_hook()
    h.pump()
    pa.keypad("2" * 24)
    pa.keypad("2")
    h.pump()
    (call,) = pa.calls.values()
    assert call.tone == Tone.REORDER and call.prompt == "Unknown Number"
    assert h.agent.views() == [] and not pb.calls
    h.advance(h.agent.settings.failed_call_timeout + 1)
    pa.off_hook()
    h.pump()
    pa.keypad("1" * 24)
    pa.keypad("1")
    h.pump()
    (call,) = pa.calls.values()
    assert call.state is CS.RING_OUT and h.only_call().called == "1" * 24
    assert [cl.state for cl in pb.calls.values()] == [CS.RING_IN]


def test_a_label_stored_before_the_input_check_still_makes_an_encodable_line_stat():
    """Free text checked at input (ccmsec.textsafe.checked_text: printable ASCII for what a phone is
    sent over Skinny) does not clean rows stored before the check: a line label like '本線' or
    'main\\x1b[2J' still comes out of the database. LineStat and SpeedDialStat must still encode —
    an unencodable one raised SccpProtocolError in callmanager's pump, losing what was queued for
    the other phones too. Printable ASCII is kept, anything else shown as '?'."""
    from ccmsec.calls.setup import answer

    profile = DeviceProfile(A, lines=(LineConfig("1000", label="本線"), LineConfig("1001", label="main\x1b[2J"),
                                      LineConfig("1002", label="Main line #1")),
                            speed_dials=(SpeedDial(1, "2000", "café"),))
    stats = [answer(u.LineStatReq(n), profile, AgentSettings(), 0.0, {})[0] for n in (1, 2, 3)]
    assert [m.label for m in stats] == ["??", "main?[2J", "Main line #1"]
    speed = answer(u.SpeedDialStatReq(1), profile, AgentSettings(), 0.0, {})[0]
    assert speed.display_name == "caf?"
    for message in (*stats, speed):
        assert type(message).parse(message.payload()) == message  # encodable: no SccpProtocolError


@pytest.mark.parametrize("answered", [False, True], ids=["ringing", "connected"])
@pytest.mark.parametrize("how", ["softkey", "button"])
def test_a_transfer_naming_the_held_call_completes_the_consultation_made_for_it(answered, how):
    # Alice consults Carol for Bob (Bob held); the consultation rings or is connected. The
    # Transfer reaches call control naming Bob's held call (the softkey with its reference, the
    # phone's Transfer button with it selected). Bad case: refused "Resume to transfer" — and a
    # resume hangs up a ringing consultation or holds a connected one, so the prompt's advice
    # undid the transfer. The consultation made for that held call completes, as from it: blind
    # while Carol rings, Bob and Carol talking once she answers.
    h = Harness()
    pa, pb = connected_pair(h)
    pc = h.add(C, "1003")
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    if answered:
        pc.answer()
        h.pump()
    station = h.agent.stations[A]
    (held,) = [lg for lg in station.legs.values() if lg.consult_for is None]
    assert held.state.value == "hold"
    press = c.SoftKeyEvent(SoftKey.TRANSFER, held.line, held.reference) if how == "softkey" \
        else c.Stimulus(c.StimulusType.TRANSFER, held.line, held.reference)
    h.agent.receive(A, press, h.now)
    h.pump()
    assert "Resume to transfer" not in pa.notifications
    assert not pa.calls and not h.agent.stations[A].legs
    if not answered:
        pc.answer()
        h.pump()
    assert pb.active_call() is not None and pc.active_call() is not None
    assert_no_silent_call(h)
