"""CALL-9 towards the media resources: music on hold and the conference bridge encode G.711 only
(µ-law 4, A-law 2), so each stream to a phone uses a law that phone offered, and a phone that
offered neither gets no stream at all (there is no transcoder).

* Music on hold: before, the held phone of a G.729 call was given a channel in the call's codec
  and the MoH source sent it µ-law. Now it gets music in a law it offered or, offering none, no
  channel and tone on hold (StartTone hold on the phone itself).
* Conference and cBarge: before, the bridge took µ-law from every member and an A-law-only phone
  was refused. Now each leg is in its own law (the bridge mixes linear PCM); a member with no
  G.711 law is still refused, and nothing is left half joined.
"""

from __future__ import annotations

from ccmsec.calls.config import AgentSettings
from ccmsec.policy.calls import EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import Tone
from tests.unit.calls_harness import Harness, conference_in

A, B, C, D, E = (f"SEP00000000000{i}" for i in range(1, 6))
ULAW, ALAW, G729 = 4, 2, 18
MOH, BRIDGE = EndpointKind.MUSIC_ON_HOLD, EndpointKind.CONFERENCE


def connect(h: Harness, caller, callee, number: str) -> None:
    h.call(caller, number)
    h.phones[callee].answer()
    h.pump()


def codecs_of(phone) -> list[int]:
    return sorted(ch.codec for ch in phone.channels.values())


def resource_codecs(h: Harness, kind: EndpointKind) -> dict[int, int]:
    """leg reference -> the codec the resource was started in, for `kind`'s streams."""
    return {key[2]: codec for key, codec in h.resources.codecs.items() if key[0] is kind}


def conference_of_three(h: Harness, a: str, b: str, c: str) -> None:
    """a calls b, consults c, joins the three (a presses Confrn twice)."""
    pa = h.phones[a]
    connect(h, a, b, h.agent.stations[b].profile.lines[0].dn)
    pa.conference()
    h.pump()
    pa.keypad(h.agent.stations[c].profile.lines[0].dn)
    h.pump()
    h.phones[c].answer()
    h.pump()
    pa.conference(pa.active_call().reference)
    h.pump()


# -- music on hold -------------------------------------------------------------------------------

def test_call9_moh_to_a_g729_only_held_phone_opens_no_channel_and_plays_tone_on_hold():
    """The bad case: A and B talk G.729, B offers nothing else. A holds: B gets no music-on-hold
    channel (before: one in the call's codec, fed µ-law by the MoH source) but tone on hold;
    resume stops the tone and reconnects them in G.729."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(G729, ULAW)), h.add(B, "1002", codecs=(G729,))
    connect(h, A, B, "1002")
    assert h.only_call().codec == G729
    opened_before = len(h.sent_to(B, s.OpenReceiveChannel))
    pa.hold()
    h.pump()
    (cb,) = pb.calls.values()
    assert cb.state is CS.CONNECTED and not pb.channels and not pa.channels
    assert len(h.sent_to(B, s.OpenReceiveChannel)) == opened_before   # nothing new opened
    assert h.resources.open_streams == {} and h.resources.sending == {}
    assert cb.tone == Tone.HOLD                                        # tone on hold instead
    assert "music on hold" not in h.only_call().resources
    assert {m.compression_type for m in h.sent_to(B, s.OpenReceiveChannel)} == {G729}
    pa.resume()
    h.pump()
    assert cb.tone == 0 and codecs_of(pa) == codecs_of(pb) == [G729]


def test_call9_moh_plays_in_the_g711_law_the_held_phone_offered():
    """The good case: a G.729 call whose held phone also offers A-law (B) or µ-law (C) hears
    music in that law — channel and MoH stream alike — and no tone on hold."""
    for held_codecs, law in (((G729, ALAW), ALAW), ((G729, ULAW, ALAW), ULAW),
                             ((G729, ALAW, ULAW), ALAW)):
        h = Harness()
        pa, pb = h.add(A, "1001", codecs=(G729, ULAW)), h.add(B, "1002", codecs=held_codecs)
        connect(h, A, B, "1002")
        assert h.only_call().codec == G729
        pa.hold()
        h.pump()
        (moh,) = pb.channels.values()
        assert moh.codec == law and moh.tx is None, held_codecs
        assert list(resource_codecs(h, MOH).values()) == [law]
        assert list(h.resources.sending.values()) == [moh.rx]
        assert next(iter(pb.calls.values())).tone == 0
        pa.resume()
        h.pump()
        assert codecs_of(pa) == codecs_of(pb) == [G729] and h.resources.open_streams == {}


def test_call9_a_g729_only_phone_transferred_from_hold_stops_tone_on_hold_and_hears_ringback():
    """The moved party's tone on hold ends with the transfer: a blind transfer gives it ring-back."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(G729, ULAW)), h.add(B, "1002", codecs=(G729,))
    h.add(C, "1003", codecs=(G729,))
    connect(h, A, B, "1002")
    pa.transfer()
    h.pump()
    (cb,) = pb.calls.values()
    assert cb.tone == Tone.HOLD
    pa.keypad("1003")
    h.pump()
    pa.transfer(pa.active_call().reference)
    h.pump()
    assert cb.state is CS.RING_OUT and cb.tone == Tone.ALERTING


# -- conference ----------------------------------------------------------------------------------

def test_call9_an_alaw_only_phone_joins_a_conference_each_leg_in_its_own_law():
    """C (both laws) calls A (µ-law only), consults B (A-law only) and joins the three: each
    leg's channel and bridge stream use a law that phone offered (before: B was refused, the
    bridge took µ-law from everyone)."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ALAW,))
    pc = h.add(C, "1003", codecs=(ALAW, ULAW))
    conference_of_three(h, C, A, B)
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [A, B, C], view
    assert "conference bridge" in view.resources and h.agent.codec_refusals == 0
    assert (codecs_of(pa), codecs_of(pb), codecs_of(pc)) == ([ULAW], [ALAW], [ALAW])
    refs = {lg.device: lg.call_reference for lg in view.legs}
    assert resource_codecs(h, BRIDGE) == {refs[A]: ULAW, refs[B]: ALAW, refs[C]: ALAW}
    assert "G.711 per leg" in view.codec_rule
    # A and B share no codec: C leaving keeps them on the bridge (never a direct channel in a
    # codec one did not offer).
    pc.hang_up()
    h.pump()
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [A, B] and "conference bridge" in view.resources
    assert (codecs_of(pa), codecs_of(pb)) == ([ULAW], [ALAW])


def test_call9_a_conference_down_to_two_with_a_common_codec_joins_them_directly_in_it():
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW, ALAW)), h.add(B, "1002", codecs=(ALAW,))
    pc = h.add(C, "1003", codecs=(ULAW,))
    conference_of_three(h, A, B, C)
    assert (codecs_of(pa), codecs_of(pb), codecs_of(pc)) == ([ULAW], [ALAW], [ULAW])
    pc.hang_up()
    h.pump()
    view = h.only_call()
    assert view.resources == () and view.codec == ALAW and h.resources.open_streams == {}
    (cha,), (chb,) = pa.channels.values(), pb.channels.values()
    assert cha.codec == chb.codec == ALAW and cha.tx == chb.rx and chb.tx == cha.rx


def test_call9_two_left_on_the_bridge_or_after_a_cbarge_are_shown_a_two_party_call():
    """A conference down to two whose parties share no codec stays on the bridge, but it is a
    two-party call: both get the connected softkeys (Transfer) at once and keep them through hold
    and resume (they got the conference set back at every resume). A cBarge ended by its target
    leaving leaves a two-party call too: the connected set, not the conference one."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ALAW,))
    pc = h.add(C, "1003", codecs=(ALAW, ULAW))
    conference_of_three(h, C, A, B)
    pc.hang_up()
    h.pump()
    assert "conference bridge" in h.only_call().resources
    (ca,), (cb,) = pa.calls.values(), pb.calls.values()
    assert ca.softkey_set == cb.softkey_set == c.SoftKeySetIndex.CONNECTED
    assert ca.prompt == cb.prompt == "Connected"
    pa.hold()
    h.pump()
    pa.resume()
    h.pump()
    assert "conference bridge" in h.only_call().resources
    assert ca.softkey_set == cb.softkey_set == c.SoftKeySetIndex.CONNECTED
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW, ALAW)), h.add(B, "1002", codecs=(ULAW,))
    pd = h.add(D, "1002", codecs=(ALAW,))
    connect(h, A, B, "1002")
    pd.barge(cbarge=True)
    h.pump()
    assert pa.active_call().softkey_set == c.SoftKeySetIndex.CONNECTED_CONFERENCE
    pb.hang_up()
    h.pump()
    assert sorted(lg.device for lg in h.only_call().legs) == [A, D]
    assert pa.active_call().softkey_set == pd.active_call().softkey_set == \
        c.SoftKeySetIndex.CONNECTED


def test_call9_a_conference_with_a_member_offering_no_g711_law_is_refused_nothing_half_joined():
    """B (A-law only) may join; D (G.729 only) offers no law the bridge mixes: the conference is
    refused as a whole, both calls keep their parties, codecs and channels, no bridge stream."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(G729, ALAW)), h.add(B, "1002", codecs=(ALAW,))
    pd = h.add(D, "1004", codecs=(G729,))
    connect(h, A, B, "1002")
    pa.conference()
    h.pump()
    pa.keypad("1004")
    h.pump()
    pd.answer()
    h.pump()
    before = sorted((v.codec, tuple(sorted(lg.device for lg in v.legs))) for v in h.agent.views())
    assert before == [(ALAW, (A, B)), (G729, (A, D))]
    h.events()
    pa.conference(pa.active_call().reference)
    h.pump()
    assert "No common codec" in pa.notifications and h.agent.codec_refusals == 1
    (refused,) = [e for e in h.events() if e.kind == "refused"]
    assert refused.detail.startswith("CALL-9") and f"{D} offers {G729}" in refused.detail
    assert "no transcoder" in refused.detail and B not in refused.detail
    after = sorted((v.codec, tuple(sorted(lg.device for lg in v.legs))) for v in h.agent.views())
    assert after == before and not any("conference bridge" in v.resources for v in h.agent.views())
    assert resource_codecs(h, BRIDGE) == {} and codecs_of(pb) == [ALAW] and codecs_of(pd) == [G729]


# -- cBarge --------------------------------------------------------------------------------------

def test_call9_an_alaw_only_phone_cbarges_into_a_ulaw_call_and_the_call_goes_back_afterwards():
    """A (µ-law only) talks to B on 1002; D shares 1002 and offers A-law only. D's cBarge goes
    through the bridge, D's leg in A-law, A's in µ-law (before: refused). D hanging up puts A
    and B back on a direct µ-law channel."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ULAW, ALAW))
    pd = h.add(D, "1002", codecs=(ALAW,))
    connect(h, A, B, "1002")
    pd.barge(cbarge=True)
    h.pump()
    view = h.only_call()
    assert view.barge == "cbarge" and sorted(lg.device for lg in view.legs) == [A, B, D], view
    assert "conference bridge" in view.resources and h.agent.codec_refusals == 0
    assert (codecs_of(pa), codecs_of(pb), codecs_of(pd)) == ([ULAW], [ULAW], [ALAW])
    refs = {lg.device: lg.call_reference for lg in view.legs}
    assert resource_codecs(h, BRIDGE) == {refs[A]: ULAW, refs[B]: ULAW, refs[D]: ALAW}
    pd.hang_up()
    h.pump()
    view = h.only_call()
    assert view.barge == "" and view.resources == () and view.codec == ULAW
    assert codecs_of(pa) == codecs_of(pb) == [ULAW] and h.resources.open_streams == {}


def test_call9_a_cbarge_by_a_phone_offering_no_g711_law_is_refused_the_call_untouched():
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ULAW, G729))
    pe = h.add(E, "1002", codecs=(G729,))
    connect(h, A, B, "1002")
    channels = {ph: dict(ph.channels) for ph in (pa, pb)}
    h.events()
    pe.barge(cbarge=True)
    h.pump()
    (call,) = [cl for cl in pe.calls.values() if cl.state is not CS.REMOTE_MULTILINE]
    assert call.state is CS.CONGESTION and call.tone == Tone.REORDER
    assert call.prompt == "No common codec" and not pe.channels
    (refused,) = [e for e in h.events() if e.kind == "refused"]
    assert refused.detail.startswith("CALL-9") and f"{E} offers {G729}" in refused.detail
    view = h.only_call()
    assert view.barge == "" and sorted(lg.device for lg in view.legs) == [A, B]
    assert view.resources == () and h.resources.open_streams == {}
    assert {ph: dict(ph.channels) for ph in (pa, pb)} == channels


def test_call9_hold_on_a_conference_down_to_two_that_stays_on_the_bridge_plays_music_on_hold():
    """A (µ-law only) and B (A-law only) are left on the bridge when C hangs up (they share no
    codec). A holds: B must hear music on hold in its own law, as the held party of any two-party
    call does — not an empty bridge (silence, the call seemingly gone). Resume puts both back on
    the bridge, each in its law."""
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ALAW,))
    pc = h.add(C, "1003", codecs=(ALAW, ULAW))
    conference_of_three(h, C, A, B)
    pc.hang_up()
    h.pump()
    assert "conference bridge" in h.only_call().resources
    pa.hold()
    h.pump()
    view = h.only_call()
    refs = {lg.device: lg.call_reference for lg in view.legs}
    assert "music on hold" in view.resources, view.resources
    (moh,) = pb.channels.values()
    assert moh.codec == ALAW and moh.tx is None and not pa.channels
    assert resource_codecs(h, MOH) == {refs[B]: ALAW} and resource_codecs(h, BRIDGE) == {}
    pa.resume()
    h.pump()
    view = h.only_call()
    assert "music on hold" not in view.resources and "conference bridge" in view.resources
    assert (codecs_of(pa), codecs_of(pb)) == ([ULAW], [ALAW])
    assert resource_codecs(h, BRIDGE) == {refs[A]: ULAW, refs[B]: ALAW}
    assert resource_codecs(h, MOH) == {}


def test_call9_the_target_leaving_a_barge_into_a_conference_or_a_cbarge_leaves_the_others_talking():
    """A barge into a conference joins the conference bridge, as a cBarge does: the bridge, not
    the target's phone, mixes it. The target (B, the shared line's party) hanging up must end the
    barge only — before, it ended the whole call and dropped every other member. A plain barge
    through the target's built-in bridge still ends with its target."""
    for cbarge in (False, True):
        h = Harness()
        pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ALAW, ULAW))
        pc, pd = h.add(C, "1003", codecs=(ALAW,)), h.add(D, "1002", codecs=(ALAW,))
        connect(h, A, B, "1002")
        conference_in(h, pb, pc)
        pd.barge(cbarge=cbarge)
        h.pump()
        assert sorted(lg.device for lg in h.only_call().legs) == [A, B, C, D], cbarge
        pb.hang_up()
        h.pump()
        view = h.only_call()
        assert sorted(lg.device for lg in view.legs) == [A, C, D], cbarge
        assert view.barge == "" and "conference bridge" in view.resources
        assert (codecs_of(pa), codecs_of(pc), codecs_of(pd)) == ([ULAW], [ALAW], [ALAW])
        assert [cl.state for p in (pa, pc, pd) for cl in p.calls.values()
                if cl.state is not CS.REMOTE_MULTILINE] == [CS.CONNECTED] * 3
    # cBarge into a two-party call: the target leaving leaves the other two, direct in a codec
    # both offered (A-law)
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW, ALAW)), h.add(B, "1002", codecs=(ULAW,))
    pd = h.add(D, "1002", codecs=(ALAW,))
    connect(h, A, B, "1002")
    pd.barge(cbarge=True)
    h.pump()
    pb.hang_up()
    h.pump()
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [A, D] and view.resources == ()
    assert view.codec == ALAW and codecs_of(pa) == codecs_of(pd) == [ALAW]
    # a plain barge (the target's built-in bridge) ends with its target
    h = Harness()
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ULAW,))
    pd = h.add(D, "1002", codecs=(ULAW,))
    connect(h, A, B, "1002")
    pd.barge()
    h.pump()
    pb.hang_up()
    h.pump()
    assert h.agent.views() == [] and not pa.calls


# -- tone on hold streamed instead of music (SRST's limited service) -------------------------------

def test_call9_without_music_the_tone_on_hold_stream_plays_in_the_held_phones_law_SRST_1():
    """`tone_on_hold` (SRST): with music on hold off, a held phone offering a G.711 law gets a
    receive-only tone-on-hold stream in that law — not counted as a call party, so it does not
    lower the call (CALL-3 is music's) — and a G.729-only phone gets no stream but StartTone hold.
    Resume closes the stream / stops the tone. Before, without music the held party got nothing."""
    h = Harness(AgentSettings(music_on_hold=False, tone_on_hold=True))
    pa = h.add(A, "1001", codecs=(G729, ULAW))
    pb, pc = h.add(B, "1002", codecs=(G729, ALAW)), h.add(C, "1003", codecs=(G729,))
    connect(h, A, B, "1002")
    pa.hold()
    h.pump()
    (tone,) = pb.channels.values()
    assert tone.codec == ALAW and tone.tx is None
    assert list(resource_codecs(h, EndpointKind.TONE_ON_HOLD).values()) == [ALAW]
    assert resource_codecs(h, MOH) == {} and not h.only_call().resources
    assert next(iter(pb.calls.values())).tone == 0       # streamed: no local tone as well
    pa.resume()
    h.pump()
    assert h.resources.open_streams == {} and codecs_of(pa) == codecs_of(pb) == [G729]
    pa.hang_up()
    h.pump()
    connect(h, A, C, "1003")
    pa.hold()
    h.pump()
    assert not pc.channels and h.resources.open_streams == {}   # never a law C did not offer
    assert next(iter(pc.calls.values())).tone == Tone.HOLD
    pa.resume()
    h.pump()
    assert next(iter(pc.calls.values())).tone == 0


def test_without_music_or_tone_on_hold_setting_a_held_party_gets_neither():
    """The settings are what decide: both off, nothing is streamed and no tone is played."""
    h = Harness(AgentSettings(music_on_hold=False))
    pa, pb = h.add(A, "1001", codecs=(ULAW,)), h.add(B, "1002", codecs=(ULAW,))
    connect(h, A, B, "1002")
    pa.hold()
    h.pump()
    assert not pb.channels and h.resources.open_streams == {}
    assert next(iter(pb.calls.values())).tone == 0


def test_call9_call_views_show_each_legs_codec_on_a_conference_and_a_cbarge():
    """The call views (agent's CallView, the admin API's JSON validated by its schema, gRPC
    ActiveCall, the CLI's legs column) show each leg's own G.711 law on a bridge — before, only
    the call's one codec (µ-law) was shown and an A-law leg's law was only in `codec_rule`. The
    call's `codec` keeps saying what it did (the bridge's); a direct call's legs show its codec;
    the held party's leg shows the law its music on hold plays in."""
    from ccmsec.cli.calls import _legs
    from ccmsec_callmanager.admin.schemas import Call
    from ccmsec_callmanager.calls_api import call_dict, call_message
    h = Harness()
    h.add(A, "1001", codecs=(ULAW,))
    h.add(B, "1002", codecs=(ALAW,))
    pc = h.add(C, "1003", codecs=(ALAW, ULAW))
    conference_of_three(h, C, A, B)
    view = h.only_call()
    assert {lg.device: lg.codec for lg in view.legs} == {A: ULAW, B: ALAW, C: ALAW}
    assert view.codec == ULAW and "G.711 per leg" in view.codec_rule
    data = call_dict(view)
    assert {lg["device"]: lg["codec"] for lg in data["legs"]} == {A: "g711u", B: "g711a", C: "g711a"}
    assert data["codec"] == "g711u"
    assert {lg.device: lg.codec for lg in Call.model_validate(data).legs} == {
        A: "g711u", B: "g711a", C: "g711a"}
    message = call_message(view)
    assert {lg.device: lg.codec for lg in message.legs} == {A: "g711u", B: "g711a", C: "g711a"}
    shown = _legs(message)
    assert f"{B}(1002 connected none g711a)" in shown and f"{A}(1001 connected none)" in shown
    pc.hang_up()
    h.pump()
    # cBarge: D (A-law only) into A (µ-law only) and E on 1005
    h2 = Harness()
    h2.add(A, "1001", codecs=(ULAW,))
    h2.add(E, "1005", codecs=(ULAW, ALAW))
    pd = h2.add(D, "1005", codecs=(ALAW,))
    connect(h2, A, E, "1005")
    view = h2.only_call()
    assert {lg.device: lg.codec for lg in view.legs} == {A: ULAW, E: ULAW}   # direct: the call's
    pd.barge(cbarge=True)
    h2.pump()
    view = h2.only_call()
    assert view.barge == "cbarge"
    assert {lg.device: lg.codec for lg in view.legs} == {A: ULAW, E: ULAW, D: ALAW}
    # hold in a G.729 call: A hears music on hold in A-law (its law), E (holding, no channel)
    # shows the call's codec
    h3 = Harness()
    h3.add(A, "1001", codecs=(G729, ALAW))
    h3.add(E, "1005", codecs=(G729, ULAW, ALAW))
    connect(h3, A, E, "1005")
    h3.phones[E].hold()
    h3.pump()
    view = h3.only_call()
    assert view.codec == G729 and {lg.device: lg.codec for lg in view.legs} == {A: ALAW, E: G729}
    assert {lg["device"]: lg["codec"] for lg in call_dict(view)["legs"]}[A] == "g711a"


def test_call9_moh_and_tone_on_hold_play_in_the_calls_law_when_the_held_phone_offered_it():
    """Music on hold (call control) and tone on hold (SRST) use the law the call negotiated when
    the held phone offered it, even where that phone lists the other law first — not its first
    law, as docs/callmanager.md and docs/srst.md said; its first law only when the call's codec
    is not one it offered (G.729 above)."""
    for settings, kind in ((AgentSettings(), MOH),
                           (AgentSettings(music_on_hold=False, tone_on_hold=True),
                            EndpointKind.TONE_ON_HOLD)):
        h = Harness(settings)
        pa = h.add(A, "1001", codecs=(ALAW, ULAW))
        pb = h.add(B, "1002", codecs=(ULAW, ALAW))       # B's first law is µ-law
        connect(h, A, B, "1002")
        assert h.only_call().codec == ALAW                # the caller's first: A-law
        pa.hold()
        h.pump()
        (held,) = pb.channels.values()
        assert held.codec == ALAW and held.tx is None, kind
        assert list(resource_codecs(h, kind).values()) == [ALAW]
        pa.resume()
        h.pump()
        assert codecs_of(pa) == codecs_of(pb) == [ALAW] and h.resources.open_streams == {}
