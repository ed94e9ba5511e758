"""Shared lines: what every appearance shows as the call on the line changes, in memory.

A shared line's other appearances show its connected call "in use remote" (the hint the barge
rules CALL-4…8 are pressed from). That display follows who is in the call: when the last party on
the line leaves it — a consultative or blind transfer (by the key or by going on hook during the
consultation), leaving an ad hoc conference (hung up, held then hung up, or the phone gone) —
every appearance is cleared, on the line it was shown on; when a transfer or conference brings a
party on another shared line into a call, that line's appearances show it; an appearance that
keeps showing the call reads who is in it now (a transfer's parties, a conference). The core has no Park
(ccmsec/calls/setup.py), and a redirect (forwarding) only happens while the call is still
ringing, before any appearance shows it.
"""

from __future__ import annotations

import pytest

from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire.sccp_calls import CallStateCode as CS
from tests.unit.calls_harness import AUTH, ENC, Harness, conference_in, consult

A, B, C, X, Y, D = (f"SEP00000000000{i}" for i in "ABCDEF")


def remote(phone) -> list[int]:
    return [ref for ref, cl in phone.calls.items() if cl.state is CS.REMOTE_MULTILINE]


def on_shared_line(h: Harness):
    """A (1001) talks to B on 5000; X has 5000 as its second line and shows the call on it."""
    pa = h.add(A, "1001")
    pb = h.add(B, "5000")
    px = h.add(X, "1004", "5000")
    pc = h.add(C, "1003")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    (hint,) = remote(px)
    assert px.calls[hint].line == 2
    return pa, pb, px, pc


def cleared_on(h: Harness, device: str, ref: int) -> list[int]:
    """The line instances the agent cleared hint `ref` on (CallState on-hook to that reference)."""
    return [m.line_instance for m in h.sent_to(device, s.CallState)
            if m.call_reference == ref and m.call_state == CS.ON_HOOK]


def refused_barge(h: Harness, px, ref: int) -> None:
    """Barge pressed on the cleared reference: refused with a reason, nothing changes."""
    calls = h.agent.views()
    px._send(c.SoftKeyEvent(c.SoftKey.BARGE, 2, ref))
    h.pump()
    assert px.notifications[-1] == "No call to barge"
    assert h.agent.views() == calls


def test_call4_consultative_transfer_by_the_last_party_on_the_line_clears_every_appearance():
    """B on 5000 consults C (X now shows that call too: B is on 5000 in it) and transfers A to C:
    nobody is on 5000 any more, so X shows nothing — no Barge into A–C (CALL-4…8 are pressed
    from the hint) — and the hint is cleared on X's line 2, where it was shown."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    consult(h, pb, pc, "1003")
    hints = remote(px)
    assert len(hints) == 2   # A–B on hold and B–C, both with B on 5000
    pb.transfer(pb.active_call().reference)
    h.pump()
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, C]
    assert remote(px) == [] and px.calls == {}
    assert h.agent.stations[X].hints == {}
    for ref in hints:
        assert cleared_on(h, X, ref) == [2]
    refused_barge(h, px, hints[-1])


def test_call4_hanging_up_during_the_consultation_transfers_and_clears_every_appearance():
    """B completes the transfer by going on hook during its consultation with C: as with the
    Transfer key, nobody is left on 5000 and X shows nothing."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    consult(h, pb, pc, "1003")
    hints = remote(px)
    pb.on_hook()
    h.pump()
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, C]
    assert px.calls == {} and h.agent.stations[X].hints == {}
    assert [cleared_on(h, X, ref) for ref in hints] == [[2], [2]]


def test_call4_blind_transfer_clears_the_appearance_on_the_line_it_was_shown_on():
    """B transfers A to C while C still rings: the A–B call ends and X's hint goes, on its line 2
    (not line 1, X's own 1004)."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    (hint,) = remote(px)
    pb.transfer()
    h.pump()
    pb.keypad("1003")
    h.pump()
    pb.transfer(pb.active_call().reference)
    h.pump()
    pc.answer()
    h.pump()
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, C] and view.phase == "connected"
    assert px.calls == {} and h.agent.stations[X].hints == {}
    assert cleared_on(h, X, hint) == [2]
    refused_barge(h, px, hint)


def _leave_by_hang_up(h, pb):
    pb.hang_up()
    h.pump()


def _leave_held(h, pb):
    ref = pb.hold().reference
    h.pump()
    assert pb.calls[ref].state is CS.HOLD
    pb.hang_up(ref)
    h.pump()


def _leave_by_going(h, pb):
    h.gone(B)


@pytest.mark.parametrize("leave", [_leave_by_hang_up, _leave_held, _leave_by_going],
                         ids=["hang-up", "hold-then-hang-up", "device-gone"])
def test_call4_the_last_party_on_the_line_leaving_a_conference_clears_every_appearance(leave):
    """B conferences C into its call with A, then leaves (hangs up; holds and hangs up the held
    call; or its phone goes): A and C talk on, nobody is on 5000, X shows nothing."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    (hint,) = remote(px)
    conference_in(h, pb, pc, "1003")
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, B, C]
    assert remote(px) == [hint]   # B is still on 5000 in the conference
    leave(h, pb)
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, C]
    assert px.calls == {} and h.agent.stations[X].hints == {}
    assert cleared_on(h, X, hint) == [2]
    refused_barge(h, px, hint)


def test_call4_a_conference_member_leaving_keeps_the_appearance_while_the_line_is_in_the_call():
    """C leaves the conference: B is still on 5000, so X still shows the call and may barge."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    (hint,) = remote(px)
    conference_in(h, pb, pc, "1003")
    pc.hang_up()
    h.pump()
    assert remote(px) == [hint] and cleared_on(h, X, hint) == []
    px.barge(reference=hint)
    h.pump()
    (view,) = h.agent.views()
    assert view.barge == "barge" and sorted(lg.device for lg in view.legs) == [A, B, X]


def test_call4_a_transfer_puts_the_call_on_the_moved_partys_shared_line_appearances():
    """A's line 1001 is shared with Y. B transfers A to C: Y's hint for the A–B call goes with
    that call, and Y shows A–C instead (A is on 1001 in it) — and may barge into it."""
    h = Harness()
    pa = h.add(A, "1001")
    py = h.add(Y, "1001")
    pb, pc = h.add(B, "5000"), h.add(C, "1003")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    (old,) = remote(py)
    consult(h, pb, pc, "1003")
    pb.transfer(pb.active_call().reference)
    h.pump()
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, C]
    (new,) = remote(py)
    assert new != old and py.calls[new].line == 1 and cleared_on(h, Y, old) == [1]
    py.barge(reference=new)
    h.pump()
    (view,) = h.agent.views()
    assert view.barge == "barge" and sorted(lg.device for lg in view.legs) == [A, C, Y]


def test_call4_a_conference_puts_the_call_on_the_joining_partys_shared_line_appearances():
    """C's line 1003 is shared with Y: Y shows B's consultation to C; when B joins it into the
    conference that call ends, and Y shows the conference instead (C is on 1003 in it)."""
    h = Harness()
    pa = h.add(A, "1001")
    pb = h.add(B, "5000")
    pc, py = h.add(C, "1003"), h.add(Y, "1003")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    consult(h, pb, pc, "1003", conference=True)
    (old,) = remote(py)
    pb.conference(pb.active_call().reference)
    h.pump()
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, B, C]
    (new,) = remote(py)
    assert new != old and cleared_on(h, Y, old) == [1]


def test_call4_a_barging_phone_going_leaves_the_call_and_is_sent_no_hint():
    """X barges into A–B from its hint, then its phone goes (connection lost): A and B talk on,
    and the gone phone is neither sent a new "in use remote" nor left owing one — its legs are
    dropped while its appearances of 5000 are still listed, and an appearance of a phone that is
    gone must not count (it raised KeyError in the agent, half way through the unregister)."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    (hint,) = remote(px)
    px.barge(reference=hint)
    h.pump()
    assert h.agent.views()[0].barge == "barge"
    sent = len(h.log)
    h.gone(X)
    (view,) = h.agent.views()
    assert sorted(lg.device for lg in view.legs) == [A, B] and not view.barge
    assert not [m for d, dev, m in h.log[sent:] if dev == X]
    assert X not in h.agent.stations
    assert [st.name for st, _ in h.agent.appearances["5000"]] == [B]
    # X comes back: it is a phone like any other again (registers, may be called), and shows
    # A–B, which B is still in on 5000, "in use remote" from its registration on
    px2 = h.add(X, "1004", "5000")
    (back,) = remote(px2)
    assert px2.ready and h.agent.stations[X].hints == {back: view.id}


def test_call4_a_phone_with_two_appearances_of_the_line_shows_one_hint_and_loses_it_at_the_end():
    """X has 5000 on both of its lines: both ring, B answers. X shows the call "in use remote"
    once (on its first appearance), and when the call ends nothing is left on X — no appearance
    keeps offering Barge into a call that is over."""
    h = Harness()
    pa = h.add(A, "1001")
    pb = h.add(B, "5000")
    px = h.add(X, "5000", "5000")
    h.call(A, "5000")
    assert sorted(cl.line for cl in px.calls.values()) == [1, 2]   # both appearances ring
    pb.answer()
    h.pump()
    (hint,) = remote(px)
    assert px.calls[hint].line == 1 and list(h.agent.stations[X].hints) == [hint]
    pa.hang_up()
    h.pump()
    assert h.agent.views() == []
    assert px.calls == {} and h.agent.stations[X].hints == {}
    assert cleared_on(h, X, hint) == [1]


def test_call4_a_phone_registering_mid_call_shows_the_shared_line_in_use_from_registration():
    """X re-registers (a reset, a new connection) while A talks to B on 5000: it shows the call
    "in use remote" on its line 2 as part of its registration, not only at the call's next
    change — and may barge from it. It got nothing until the call changed (here: a hold)."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    (view,) = h.agent.views()
    for again in (lambda: None, lambda: h.gone(X)):   # re-registering over itself, or after going
        again()
        px = h.add(X, "1004", "5000")
        (hint,) = remote(px)
        shown = px.calls[hint]
        assert shown.line == 2 and (shown.calling, shown.called) == ("1001", "5000")
        assert h.agent.stations[X].hints == {hint: view.id}
        assert h.agent.calls[view.id].hint_refs[X] == (hint, 2)
    px.barge(reference=hint)
    h.pump()
    (view,) = h.agent.views()
    assert view.barge == "barge" and sorted(lg.device for lg in view.legs) == [A, B, X]


def test_call4_a_phone_registering_mid_call_gets_no_hint_for_calls_not_on_its_lines():
    """Registration shows only connected calls with a party on one of the phone's lines: none
    for a call that is still ringing (it was offered before the phone was there), none for a
    call on other numbers, one (on the first appearance) with the line twice. A party that
    re-registers loses its call (its leg is dropped): that call ends, and no appearance shows it."""
    h = Harness()
    pa, pb, pc = h.add(A, "1001"), h.add(B, "5000"), h.add(C, "1003")
    h.call(A, "5000")                       # ringing only
    py = h.add(Y, "1004", "5000")
    assert remote(py) == [] and py.calls == {}
    pb.answer()
    h.pump()
    (hint,) = remote(py)                    # answered: the hint follows the change, as before
    h.call(C, "1004")                       # Y's other number rings; Y is on no 5000 call
    px = h.add(X, "1003")                   # X shares C's line: C is only ringing out
    assert remote(px) == [] and px.calls == {}
    px = h.add(X, "5000", "5000")           # the line twice: one hint, on the first appearance
    (twice,) = remote(px)
    assert px.calls[twice].line == 1
    pb = h.add(B, "5000")                   # B itself re-registers: its leg is dropped, the call ends
    (view,) = h.agent.views()
    assert view.called == "1004" and remote(pb) == remote(px) == remote(py) == []
    assert cleared_on(h, Y, hint) == [2]


def hint_infos(h: Harness, device: str, ref: int, since: int = 0) -> list[s.CallInfo]:
    return [m for d, dv, m in h.log[since:]
            if d == "down" and dv == device and isinstance(m, s.CallInfo) and m.call_reference == ref]


def test_call4_a_transfer_shows_the_target_lines_appearances_the_party_now_in_the_call():
    """Bob (5000) transfers Alice (1001) to Carol (1003). Carol's line is shared with Y (it rang,
    then showed the consultation "in use remote") and with Z (registered mid-consultation: a hint
    from its registration). Both kept showing Bob, the transferring phone, as the caller after the
    transfer: their hint is now sent the call's CallInfo again, reading Alice calling 1003. Alice's
    line's appearance W shows the new call from Alice too. A change that leaves who is in the call
    as it was (a hold, a resume) sends the hints nothing."""
    h = Harness()
    pa, pb = h.add(A, "1001", user="Alice"), h.add(B, "5000", user="Bob")
    pw = h.add("SEP000000000010", "1001")
    pc, py = h.add(C, "1003", user="Carol"), h.add(Y, "1003")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    consult(h, pb, pc, "1003")
    pz = h.add(X, "1003")
    (y_ref,), (z_ref,) = remote(py), remote(pz)
    for phone, ref in ((py, y_ref), (pz, z_ref)):
        shown = phone.calls[ref]
        assert (shown.calling, shown.calling_name, shown.called) == ("5000", "Bob", "1003")
    mark = len(h.log)
    pb.transfer(pb.active_call().reference)
    h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [A, C]
    for phone, ref in ((py, y_ref), (pz, z_ref)):
        assert remote(phone) == [ref]          # the same hint, not cleared and shown anew
        shown = phone.calls[ref]
        assert (shown.calling, shown.calling_name, shown.called) == ("1001", "Alice", "1003")
        (info,) = hint_infos(h, phone.device_name, ref, mark)
        assert info.call_type == c.CallType.INBOUND and info.line_instance == 1
    (w_ref,) = remote(pw)
    shown = pw.calls[w_ref]
    assert (shown.calling, shown.calling_name, shown.called) == ("1001", "Alice", "1003")
    # bad case: nothing changed who is in the call — no CallInfo to any hint
    mark = len(h.log)
    pc.hold()
    h.pump()
    pc.resume()
    h.pump()
    assert [hint_infos(h, dev, ref, mark) for dev, ref in ((Y, y_ref), (X, z_ref))] == [[], []]


def test_call4_a_conference_shows_the_appearances_already_showing_the_call_the_conference():
    """X shows A's call to B on 5000 "in use remote". B conferences C in: X kept reading 1001 to
    5000; it is sent the call's CallInfo again and reads the conference, on the same hint. Down
    to two again (C leaves), the call reads its two parties again, and so does X: A calling B.
    A conference of four down to three still reads "Conference": X is sent nothing."""
    h = Harness()
    pa, pb, px, pc = on_shared_line(h)
    (ref,) = remote(px)
    assert (px.calls[ref].calling, px.calls[ref].called) == ("1001", "5000")
    conference_in(h, pb, pc, "1003")
    assert sorted(lg.device for lg in h.only_call().legs) == [A, B, C]
    assert remote(px) == [ref] and (px.calls[ref].calling, px.calls[ref].called) == ("1001",
                                                                                     "Conference")
    pd = h.add(D, "1005")
    conference_in(h, pb, pd, "1005")
    assert sorted(lg.device for lg in h.only_call().legs) == [A, B, C, D]
    mark = len(h.log)
    pd.hang_up()
    h.pump()
    assert remote(px) == [ref] and hint_infos(h, X, ref, mark) == []
    assert px.calls[ref].called == "Conference"
    pc.hang_up()
    h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [A, B]
    assert remote(px) == [ref] and (px.calls[ref].calling, px.calls[ref].called) == ("1001",
                                                                                     "5000")
    assert len(hint_infos(h, X, ref, mark)) == 1
    # and A, who called, reads "to B" again; B "from A"
    assert (pa.active_call().call_type, pa.active_call().called) == (c.CallType.OUTBOUND, "5000")
    assert (pb.active_call().call_type, pb.active_call().calling) == (c.CallType.INBOUND, "1001")


def hint_status(h: Harness, phone, ref: int) -> int:
    """The callSecurityStatus the "in use remote" appearance `ref` last received, as sent: its
    CallInfo encoded and decoded again — and the phone shows it."""
    info = hint_infos(h, phone.device_name, ref)[-1]
    wire = s.decode_message(info.MESSAGE_ID, info.serialize()[12:])
    assert wire == info and phone.calls[ref].security == wire.call_security_status
    return wire.call_security_status


def all_authenticated_call(h: Harness):
    """A, B and X (sharing 5000) and C (1003), all authenticated; A calls 5000 and B answers.
    Returns B's, X's and C's phones."""
    h.add(A, "1001", mode=AUTH)
    pb, px = h.add(B, "5000", mode=AUTH), h.add(X, "5000", mode=AUTH)
    pc = h.add(C, "1003", mode=AUTH)
    h.call(A, "5000")
    pb.answer()
    h.pump()
    return pb, px, pc


def test_call2_an_in_use_remote_appearance_shows_the_calls_security_status():
    """CALL-2: the lock icon follows the call's security status, on every appearance showing it
    "in use remote" too. Bad case: a hint made by `_sync_hints` (an appearance registering during
    the call) or sent again by it (a conference) carried status 0, unknown; one that rang kept the
    status it rang with (the caller's and its own devices'), not the call's once answered. A
    (authenticated) calls 5000: B (non-secure) answers; X (authenticated) rang and shows it "in
    use remote", Y (authenticated) registers during the call."""
    h = Harness()
    h.add(A, "1001", mode=AUTH)
    pb = h.add(B, "5000")
    px = h.add(X, "5000", mode=AUTH)
    pc = h.add(C, "1003", mode=AUTH)
    h.call(A, "5000")
    (ringing,) = px.calls.values()
    assert ringing.security == 2                                  # A's and X's: authenticated
    pb.answer()
    h.pump()
    assert h.only_call().status == 1                              # with B: non-secure
    py = h.add(Y, "5000", mode=AUTH)
    (x_ref,), (y_ref,) = remote(px), remote(py)
    assert hint_status(h, px, x_ref) == hint_status(h, py, y_ref) == 1
    # all authenticated: the call shows the shield, and so do its appearances
    h = Harness()
    pb, px, pc = all_authenticated_call(h)
    py = h.add(Y, "5000", mode=AUTH)
    (x_ref,), (y_ref,) = remote(px), remote(py)
    assert h.only_call().status == 2
    assert hint_status(h, px, x_ref) == hint_status(h, py, y_ref) == 2
    # a conference (the bridge: non-secure, CALL-3) re-sends the hints "Conference", status 1
    conference_in(h, pb, pc, "1003")
    assert h.only_call().status == 1 and px.calls[x_ref].called == "Conference"
    assert hint_status(h, px, x_ref) == hint_status(h, py, y_ref) == 1


def test_call2_a_hint_whose_parties_and_status_change_together_gets_one_callinfo_with_the_new_status():
    """CALL-2: a conference down to two leaves the bridge — the "in use remote" appearance reads
    the two parties again and the call's status goes back up (authenticated) at the same change.
    Bad case: `_sync_hints` re-sent the hint (the new parties) with the status from before the
    change (non-secure, the bridge), and `_update_security` then sent it again with the call's:
    two CallInfos, the first showing a stale icon. Now one, with the call's status."""
    h = Harness()
    pb, px, pc = all_authenticated_call(h)
    (x_ref,) = remote(px)
    conference_in(h, pb, pc, "1003")
    assert h.only_call().status == 1 and hint_status(h, px, x_ref) == 1   # the bridge
    since = len(h.log)
    pc.hang_up()
    h.pump()
    assert h.only_call().status == 2
    sent = hint_infos(h, X, x_ref, since)
    assert [(i.calling_party, i.called_party, i.call_security_status) for i in sent] == \
        [("1001", "5000", 2)], sent
    assert hint_status(h, px, x_ref) == 2


def test_call2_a_hint_of_a_call_an_encrypted_phone_barged_into_shows_it_non_secure_as_its_parties_do():
    """CALL-2 with CALL-5: an encrypted phone (X) barging into an authenticated call makes it
    non-secure — A, B and X all show non-secure. Y, another appearance of 5000, shows the call
    "in use remote": its CallInfo carries the status the call's parties show, non-secure. Bad
    case: it kept the shield (the status of the call's devices, without the barge's result)."""
    h = Harness()
    pa = h.add(A, "1001", mode=AUTH)
    pb, px, py = h.add(B, "5000", mode=AUTH), h.add(X, "5000", mode=ENC), h.add(Y, "5000", mode=AUTH)
    h.call(A, "5000")
    pb.answer()
    h.pump()
    (y_ref,), (x_ref,) = remote(py), remote(px)
    assert hint_status(h, py, y_ref) == 2
    px.barge(reference=x_ref)
    h.pump()
    assert h.only_call().barge_rule.startswith("CALL-5")
    assert [p.active_call().security for p in (pa, pb, px)] == [1, 1, 1]
    assert hint_status(h, py, y_ref) == 1
    # the barge over (X hangs up): A and B authenticated again, and so is Y's appearance
    px.hang_up()
    h.pump()
    assert [p.active_call().security for p in (pa, pb)] == [2, 2]
    assert hint_status(h, py, y_ref) == 2
