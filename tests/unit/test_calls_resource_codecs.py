"""CALL-9 towards the media resources: music on hold and the conference bridge encode G.711 only
(µ-law 4, A-law 2), so each stream to a phone uses a law that phone offered, and a phone that
offered neither gets no stream at all (there is no transcoder).

* Music on hold: before, the held phone of a G.729 call was given a channel in the call's codec
  and the MoH source sent it µ-law. Now it gets music in a law it offered or, offering none, no
  channel and tone on hold (StartTone hold on the phone itself).
"""

from __future__ import annotations

from ccmsec.policy.calls import EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import Tone
from tests.unit.calls_harness import Harness

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
