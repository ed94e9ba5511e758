"""Every call's security status in the core: CALL-1…9 and DEV-2, as the phones display it.

The status a phone shows comes from CallInfo (`call_security_status`: 1 not authenticated,
2 authenticated, 3 encrypted) and is rendered lock / shield / none. Without a key source no media
leg is keyed, so a call between encrypted phones shows authenticated; a key source plugged into the
agent's seam (as callmanager's media plane does) makes the same call encrypted — the core's rule is
proved both ways here. End to end over real sockets, with callmanager's key source:
tests/integration/test_calls_security_live.py; through phone-sim on the running cluster:
tests/e2e/test_calls.py and the demo.
"""

from __future__ import annotations

import os

from ccmsec.calls.config import AgentSettings
from ccmsec.policy.calls import CallSecurityLevel, EndpointKind
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import Tone
from tests.unit.calls_harness import AUTH, ENC, NS, Harness

A, B, C, X = "SEP00000000000A", "SEP00000000000B", "SEP00000000000C", "SEP00000000000E"
NOT_AUTH, SHIELD, LOCK = 1, 2, 3


def keyed_source(call, channel, direction):
    """What the media work plugs in: per-channel SRTP master values (test values, in memory)."""
    return s.EncryptionInfo(s.SrtpAlgorithm.AES_CM_128_HMAC_SHA1_80, os.urandom(16), os.urandom(14))


def talk(h: Harness, a, b, mode_a, mode_b, na="1001", nb="1002", **kw):
    pa = h.add(a, na, mode=mode_a, **kw.get("ka", {}))
    pb = h.add(b, nb, mode=mode_b, **kw.get("kb", {}))
    h.call(a, nb)
    pb.answer()
    h.pump()
    return pa, pb


def shown(phone) -> list[int]:
    return [call.security for call in phone.calls.values()]


def test_call1_status_is_the_weakest_device_and_encrypted_needs_keyed_media():
    for ma, mb, expect in [(ENC, ENC, SHIELD), (ENC, AUTH, SHIELD), (AUTH, AUTH, SHIELD),
                           (ENC, NS, NOT_AUTH), (AUTH, NS, NOT_AUTH), (NS, NS, NOT_AUTH)]:
        h = Harness()
        pa, pb = talk(h, A, B, ma, mb)
        assert shown(pa) == shown(pb) == [expect], (ma, mb)
        view = h.only_call()
        assert view.status == expect and view.rule == "CALL-1"
    # Both encrypted: shield while the media is RTP (no keys); lock once every leg is keyed.
    h = Harness()
    pa, pb = talk(h, A, B, ENC, ENC)
    assert h.only_call().reasons[0].startswith("media not SRTP")
    assert next(iter(pa.calls.values())).icon == "shield"
    h = Harness(key_source=keyed_source)
    pa, pb = talk(h, A, B, ENC, ENC)
    assert shown(pa) == shown(pb) == [LOCK] and next(iter(pb.calls.values())).icon == "lock"
    assert all(ch.rx_encryption.is_encrypted and ch.tx_encryption.is_encrypted
               for ch in [*pa.channels.values(), *pb.channels.values()])


def test_call1_keys_alone_do_not_make_a_call_with_a_weaker_device_encrypted():
    h = Harness(key_source=keyed_source)
    pa, pb = talk(h, A, B, ENC, AUTH)
    assert shown(pa) == shown(pb) == [SHIELD]


def test_call2_hold_with_music_makes_the_call_non_secure_and_resume_restores_the_lock():
    h = Harness(key_source=keyed_source)
    pa, pb = talk(h, A, B, ENC, ENC)
    assert shown(pb) == [LOCK]
    pa.hold()
    h.pump()
    assert shown(pb) == [NOT_AUTH] and h.only_call().rule == "CALL-3"
    pa.resume()
    h.pump()
    assert shown(pa) == shown(pb) == [LOCK]


def test_call2_transfer_to_a_non_secure_phone_changes_the_status():
    h = Harness(key_source=keyed_source)
    pa, pb = talk(h, A, B, ENC, ENC)
    pc = h.add(C, "1003", mode=NS)
    pa.transfer()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.transfer(pa.active_call().reference)
    h.pump()
    assert shown(pb) == shown(pc) == [NOT_AUTH]
    view = h.only_call()
    assert sorted(lg.device for lg in view.legs) == [B, C] and view.status == NOT_AUTH


def test_call2_call3_conference_is_non_secure_and_back_to_two_restores():
    h = Harness(key_source=keyed_source)
    pa, pb = talk(h, A, B, ENC, ENC)
    pc = h.add(C, "1003", mode=ENC)
    pa.conference()
    h.pump()
    pa.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    pa.conference(pa.active_call().reference)
    h.pump()
    assert shown(pa) == shown(pb) == shown(pc) == [NOT_AUTH]
    view = h.only_call()
    assert view.rule == "CALL-3" and any("conference bridge" in r for r in view.reasons)
    pc.hang_up()
    h.pump()
    assert shown(pa) == shown(pb) == [LOCK]


def test_call3_cti_port_trunk_and_models_without_security_are_never_secure():
    h = Harness()
    pa = h.add(A, "1001", mode=ENC)
    cti = h.add("CTI0000000001", "7000", kind=EndpointKind.CTI, mode=NS)
    trunk = h.add("ICT0000000001", "8000", kind=EndpointKind.INTER_CLUSTER_TRUNK,
                  route_pattern="8XXX", auto_answer=True)
    small = h.add(C, "1003", model="7912", mode=NS)
    for number, peer in (("7000", cti), ("8123", trunk), ("1003", small)):
        h.call(A, number)
        peer.answer()
        h.pump()
        view = h.only_call()
        assert view.status == NOT_AUTH and view.rule == "CALL-3", number
        assert shown(pa) == [NOT_AUTH]
        pa.hang_up()
        h.pump()
    assert not h.agent.calls


def test_call3_a_gateway_without_srtp_makes_the_call_non_secure_not_authenticated():
    """CALL-3 names gateways without SRTP among the parties that always make a call non-secure:
    an encrypted phone calling through one shows no icon (not the shield), and says why."""
    for srtp, keyed, expect, rule in ((False, True, NOT_AUTH, "CALL-3"), (True, True, LOCK, "CALL-1"),
                                      (True, False, SHIELD, "CALL-1")):
        h = Harness(key_source=keyed_source if keyed and srtp else None)
        pa = h.add(A, "1001", mode=ENC, model="7970")
        gw = h.add("GW1", "5550000", mode=ENC, kind=EndpointKind.GATEWAY, model="MGCP gateway",
                   route_pattern="555XXXX", srtp_capable=srtp)
        h.call(A, "5550100")
        gw.answer()
        h.pump()
        view = h.only_call()
        assert (view.status, view.rule) == (expect, rule) and shown(pa) == [expect], (srtp, keyed)
        if not srtp:
            assert any("gateway without SRTP support" in r for r in view.reasons)


def barge_setup(h: Harness, mode_a, mode_b, mode_x, *, keyed=False):
    """A (line 1001) talks to B on shared line 5000; X also has 5000 and sees it in use."""
    pa = h.add(A, "1001", mode=mode_a)
    pb = h.add(B, "5000", mode=mode_b)
    px = h.add(X, "5000", mode=mode_x)
    h.call(A, "5000")
    pb.answer()
    h.pump()
    hint = next(iter(px.calls.values()))
    assert hint.state is CS.REMOTE_MULTILINE
    return pa, pb, px


def test_call4_non_encrypted_initiator_cannot_barge_into_an_encrypted_call_and_hears_busy():
    for mode_x in (AUTH, NS):
        h = Harness(key_source=keyed_source)
        pa, pb, px = barge_setup(h, ENC, ENC, mode_x)
        before = h.only_call()
        px.barge()
        h.pump()
        failed = px.active_call()
        assert failed.tone == Tone.BUSY and failed.state is CS.BUSY and failed.prompt == "Barge failed"
        assert h.only_call().legs == before.legs and shown(pa) == shown(pb) == [LOCK]
        refused = [e for e in h.events() if e.kind == "refused"]
        assert refused and refused[-1].detail.startswith("CALL-4")
        assert h.agent.barges_refused == 1


def test_call4_holding_an_encrypted_call_does_not_open_it_to_a_non_encrypted_barge():
    """While A holds, B hears music on hold and the call shows non-secure (CALL-2/3) — but it is
    still the encrypted call of two encrypted phones: a non-encrypted phone on B's shared line
    must not barge in and be bridged into it when A resumes (CALL-4)."""
    for mode_x in (AUTH, NS):
        h = Harness(key_source=keyed_source)
        pa, pb, px = barge_setup(h, ENC, ENC, mode_x)
        pa.hold()
        h.pump()
        assert shown(pb) == [NOT_AUTH]
        px.barge()
        h.pump()
        failed = px.active_call()
        assert failed.tone == Tone.BUSY and failed.prompt == "Barge failed", mode_x
        refused = [e for e in h.events() if e.kind == "refused"]
        assert refused and refused[-1].detail.startswith("CALL-4")
        assert len(h.only_call().legs) == 2
        pa.resume()
        h.pump()
        assert shown(pa) == shown(pb) == [LOCK] and len(h.only_call().legs) == 2


def test_call6_a_barge_into_a_held_call_leaves_the_holding_phone_on_hold():
    h = Harness(key_source=keyed_source)
    pa, pb, px = barge_setup(h, ENC, ENC, ENC)
    pa.hold()
    h.pump()
    px.barge()
    h.pump()
    assert h.only_call().barge_rule.startswith("CALL-6")
    assert [c.state for c in pa.calls.values()] == [CS.HOLD]    # not told it is connected
    pa.resume()
    h.pump()
    assert [c.state for c in pa.calls.values()] == [CS.CONNECTED]
    assert shown(pa) == shown(pb) == [LOCK] and len(h.only_call().legs) == 3


def test_call5_encrypted_initiator_into_an_authenticated_or_non_secure_call_makes_it_non_secure():
    for mode_b in (AUTH, NS):
        h = Harness()
        pa, pb, px = barge_setup(h, AUTH, mode_b, ENC)
        px.barge()
        h.pump()
        view = h.only_call()
        assert len(view.legs) == 3 and view.barge == "barge" and view.barge_rule.startswith("CALL-5")
        assert shown(pa) == shown(pb) == [NOT_AUTH]
        assert [c.security for c in px.calls.values() if c.state is CS.CONNECTED] == [NOT_AUTH]


def test_call6_encrypted_initiator_into_an_encrypted_call_stays_encrypted():
    h = Harness(key_source=keyed_source)
    pa, pb, px = barge_setup(h, ENC, ENC, ENC)
    px.barge()
    h.pump()
    view = h.only_call()
    assert view.barge_rule.startswith("CALL-6")
    assert shown(pa) == shown(pb) == [LOCK]
    assert [c.security for c in px.calls.values() if c.state is CS.CONNECTED] == [LOCK]
    # Built-in bridge: the target phone has a second channel for the initiator.
    assert len(pb.channels) == 2 and len(px.channels) == 1
    (chx,) = px.channels.values()
    assert chx.tx in {ch.rx for ch in pb.channels.values()}
    # Before SRTP (no key source) the same barge is allowed and every phone shows the shield.
    h = Harness()
    pa, pb, px = barge_setup(h, ENC, ENC, ENC)
    px.barge()
    h.pump()
    assert h.only_call().barge_rule.startswith("CALL-6") and shown(pa) == shown(pb) == [SHIELD]


def test_call7_non_secure_initiator_into_an_authenticated_call_keeps_the_shield():
    h = Harness()
    pa, pb, px = barge_setup(h, AUTH, AUTH, NS)
    px.barge()
    h.pump()
    assert h.only_call().barge_rule.startswith("CALL-7")
    assert shown(pa) == shown(pb) == [SHIELD]
    assert [c.security for c in px.calls.values() if c.state is CS.CONNECTED] == [NOT_AUTH]
    px.hang_up()
    h.pump()
    assert shown(pa) == shown(pb) == [SHIELD] and len(h.only_call().legs) == 2


def test_call8_cbarge_is_allowed_and_non_secure_through_the_bridge():
    h = Harness(key_source=keyed_source)
    pa, pb, px = barge_setup(h, ENC, ENC, AUTH)
    px.barge(cbarge=True)
    h.pump()
    view = h.only_call()
    assert view.barge == "cbarge" and view.barge_rule.startswith("CALL-8")
    assert "conference bridge" in view.resources
    assert shown(pa) == shown(pb) == [NOT_AUTH]
    px.hang_up()
    h.pump()
    assert shown(pa) == shown(pb) == [LOCK] and h.only_call().resources == ()


def test_call9_no_wideband_codec_in_an_encrypted_call_with_a_7960():
    wide = (0x19, 4, 2)
    h = Harness()
    talk(h, A, B, ENC, ENC, ka={"codecs": wide, "wideband": True, "model": "7960"},
         kb={"codecs": wide, "wideband": True, "model": "7970"})
    view = h.only_call()
    assert view.codec == 4 and "wideband codec ignored" in view.codec_rule
    # The other device not encrypted: the wideband codec may be used.
    h = Harness()
    talk(h, A, B, ENC, AUTH, ka={"codecs": wide, "wideband": True, "model": "7940"},
         kb={"codecs": wide, "wideband": True, "model": "7970"})
    assert h.only_call().codec == 0x19
    # Both encrypted 7970s: no 7960/7940 involved, wideband allowed.
    h = Harness()
    talk(h, A, B, ENC, ENC, ka={"codecs": wide, "wideband": True, "model": "7970"},
         kb={"codecs": wide, "wideband": True, "model": "7970"})
    assert h.only_call().codec == 0x19
    # Outside a wideband region the codec is never chosen.
    h = Harness()
    talk(h, A, B, AUTH, AUTH, ka={"codecs": wide}, kb={"codecs": wide})
    assert h.only_call().codec == 4
    # The OpenReceiveChannel the phones got carries the chosen codec.
    assert {m.compression_type for m in h.sent_to(A, s.OpenReceiveChannel)} == {4}


def test_call9_a_7960_barging_into_an_encrypted_wideband_call_takes_the_wideband_codec_away():
    """CALL-6 keeps the call encrypted, and now a 7960 is in it: CALL-9 holds for the barged
    call too. Every channel — the two parties' and the barge's — is told the narrowband codec."""
    wide = (0x19, 4, 2)
    h = Harness(key_source=keyed_source)
    pa = h.add(A, "1001", mode=ENC, model="7970", codecs=wide, wideband=True)
    pb = h.add(B, "5000", mode=ENC, model="7970", codecs=wide, wideband=True)
    px = h.add(X, "5000", mode=ENC, model="7960", codecs=wide, wideband=True)
    h.call(A, "5000")
    pb.answer()
    h.pump()
    assert h.only_call().codec == 0x19          # two encrypted 7970s: wideband allowed
    px.barge()
    h.pump()
    view = h.only_call()
    assert view.barge_rule.startswith("CALL-6") and shown(pa) == shown(pb) == [LOCK]
    assert view.codec == 4 and "wideband codec ignored" in view.codec_rule
    for phone in (pa, pb, px):
        assert phone.channels and {ch.codec for ch in phone.channels.values()} == {4}
    assert len(pb.channels) == 2 and len(px.channels) == 1


def test_dev2_shared_line_keeps_each_devices_own_status():
    for answering, expect in ((B, SHIELD), (C, NOT_AUTH)):
        h = Harness()
        pa = h.add(A, "1001", mode=ENC)
        pb = h.add(B, "5000", mode=ENC, model="7970")
        pc = h.add(C, "5000", mode=NS, model="7960")
        h.call(A, "5000")
        # While ringing, each appearance shows its own device's status with the caller.
        assert shown(pb) == [SHIELD] and shown(pc) == [NOT_AUTH]
        h.phones[answering].answer()
        h.pump()
        assert shown(pa) == shown(h.phones[answering]) == [expect]
        legs = {lg.device: lg.device_mode for lg in h.only_call().legs}
        assert legs[answering] == ("encrypted" if answering == B else "non-secure")


def test_dev2_extension_mobility_user_line_follows_the_device_it_is_logged_into():
    for mode, expect in ((ENC, SHIELD), (NS, NOT_AUTH)):
        h = Harness()
        h.add(A, "1001", mode=ENC)
        pe = h.add(B, "7777", mode=mode, user="alice")
        h.call(A, "7777")
        pe.answer()
        h.pump()
        view = h.only_call()
        assert view.status == expect
        leg = next(lg for lg in view.legs if lg.device == B)
        assert leg.user == "alice" and leg.device_mode == mode.value


def test_status_levels_match_the_callinfo_codes():
    assert [int(v) for v in CallSecurityLevel] == [NOT_AUTH, SHIELD, LOCK]
    assert AgentSettings().music_on_hold


def barger_on_a_call(h: Harness, mode_a, mode_b, mode_x, *, codecs_ab=(4, 2), codecs_x=(4, 2),
                     also_sharing=()):
    """As `barge_setup`, and X (lines 5000 and 1004) is talking to C (1003) on its own line."""
    pa = h.add(A, "1001", mode=mode_a, codecs=codecs_ab)
    pb = h.add(B, "5000", mode=mode_b, codecs=codecs_ab)
    px = h.add(X, "5000", "1004", mode=mode_x, codecs=codecs_x)
    for name in also_sharing:
        h.add(name, "5000", mode=mode_b, codecs=codecs_ab)
    pc = h.add(C, "1003", codecs=(4,))
    h.call(A, "5000")
    pb.answer()
    h.pump()
    h.call(C, "1004")
    px.answer()
    h.pump()
    states = sorted(cl.state for cl in px.calls.values())
    assert states == sorted([CS.CONNECTED, CS.REMOTE_MULTILINE]), states
    return pa, pb, px, pc


def snapshot(h: Harness, *phones):
    """Everything a refused barge must leave as it was: call views, every phone's calls and
    media channels, the media resources held."""
    return (h.agent.views(), {p.device_name: ({r: cl.state for r, cl in p.calls.items()},
                                              dict(p.channels)) for p in phones},
            dict(h.resources.open_streams))


def test_call4_call9_a_refused_barge_leaves_the_bargers_own_call_connected():
    """A phone talking on another line presses Barge/cBarge on the shared line's call; the barge
    is refused (CALL-4 security, CALL-1 a barge already in, CALL-9 no common codec). Its own call
    must not be put on hold (nor its channels closed) for a barge that never happens: nothing
    changes but the refusal shown on its display."""
    cases = (
        # (modes A B X, codecs A/B, codecs X, cbarge, shown, rule)
        ((ENC, ENC, AUTH), (4, 2), (4, 2), False, "Barge failed", "CALL-4"),
        ((ENC, ENC, NS), (4, 2), (4, 2), False, "Barge failed", "CALL-4"),
        ((NS, NS, NS), (18,), (4, 18), True, "No common codec", "CALL-9"),
    )
    for modes, codecs_ab, codecs_x, cbarge, text, rule in cases:
        h = Harness(key_source=keyed_source)
        pa, pb, px, pc = barger_on_a_call(h, *modes, codecs_ab=codecs_ab, codecs_x=codecs_x)
        before = snapshot(h, pa, pb, px, pc)
        h.events()
        px.barge(cbarge=cbarge)
        h.pump()
        assert snapshot(h, pa, pb, px, pc) == before, rule
        assert not h.sent_to(X, s.CloseReceiveChannel) and not h.sent_to(C, s.CloseReceiveChannel)
        assert px.notifications[-1] == text, rule
        refused = [e for e in h.events() if e.kind == "refused"]
        assert refused and refused[-1].detail.startswith(rule), refused
        assert h.agent.barges_refused == 1
        # the call X kept is a working call: hold and resume still work, hanging up ends it
        own = px.active_call()
        assert own.state is CS.CONNECTED and own.calling == "1003"
        px.hang_up(own.reference)
        h.pump()
        assert not pc.calls and [cl.state for cl in px.calls.values()] == [CS.REMOTE_MULTILINE]


def test_call1_a_second_barge_refused_leaves_the_bargers_own_call_connected():
    h = Harness(key_source=keyed_source)
    pa, pb, px, pc = barger_on_a_call(h, ENC, ENC, ENC, also_sharing=("SEP00000000000D",))
    pd = h.phones["SEP00000000000D"]
    pd.barge()
    h.pump()
    assert len(h.agent.views()) == 2 and any(v.barge for v in h.agent.views())
    before = snapshot(h, pa, pb, px, pc, pd)
    px.barge()
    h.pump()
    assert snapshot(h, pa, pb, px, pc, pd) == before
    assert px.notifications[-1] == "Barge failed" and h.agent.barges_refused == 1


def test_call6_an_allowed_barge_still_holds_the_bargers_own_call():
    # the refusal is decided first; an allowed barge puts X's own call on hold as before
    h = Harness(key_source=keyed_source)
    pa, pb, px, pc = barger_on_a_call(h, ENC, ENC, ENC)
    px.barge()
    h.pump()
    barged = next(v for v in h.agent.views() if v.barge)
    assert barged.barge_rule.startswith("CALL-6")
    states = [cl.state for cl in px.calls.values()]
    assert CS.HOLD in states and CS.CONNECTED in states, states


def test_call4_a_barge_whose_target_left_is_refused_with_a_reason_and_changes_nothing():
    """B (5000) transfers A to C: the call X saw on its hint has no party on the shared line
    left, and the hint is cleared. X, talking to D on its own line, presses Barge on that
    reference all the same (a press racing the clear): refused ("No call to barge" on its
    display, never silently dropped), X's own call stays connected."""
    h = Harness()
    pa = h.add(A, "1001")
    pb = h.add(B, "5000")
    px = h.add(X, "5000", "1004")
    pc = h.add(C, "1003")
    pd = h.add("SEP00000000000D", "1005")
    h.call(A, "5000")
    pb.answer()
    h.pump()
    h.call("SEP00000000000D", "1004")
    px.answer()
    h.pump()
    pb.transfer()
    h.pump()
    pb.keypad("1003")
    h.pump()
    pc.answer()
    h.pump()
    hint = max(r for r, cl in px.calls.items() if cl.state is CS.REMOTE_MULTILINE)  # B–C's
    pb.transfer(pb.active_call().reference)
    h.pump()
    assert not any(cl.state is CS.REMOTE_MULTILINE for cl in px.calls.values())
    before = snapshot(h, pa, pb, px, pc, pd)
    px._send(c.SoftKeyEvent(c.SoftKey.BARGE, 1, hint))
    h.pump()
    assert snapshot(h, pa, pb, px, pc, pd) == before
    assert px.notifications[-1] == "No call to barge"
    assert px.active_call().state is CS.CONNECTED and px.active_call().calling == "1005"
