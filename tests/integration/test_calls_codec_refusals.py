"""CALL-9 without a transcoder: when the parties of a call have no codec in common, call control
refuses rather than tell a phone to use a codec it never offered in CapabilitiesRes.

Phones registered over real sockets (encrypted on TLS 2443 with an LSC) with call control
(`CallControl`, in process, SQLite) and the real key source as callmanager's media plane plugs it in
(counting every key pair it takes). Each refusal is checked for what it leaves: the caller hears
reorder and reads "No common codec", the call record (the `ended`/`refused` event) says why, no
key pair was taken, no leg stays on the far side, and a call in progress elsewhere goes on
untouched. A call to the SRTP gateway with no codec in common goes through the deployed
srtp-gateway service (MGCP over gRPC/mTLS): tests/integration/test_gateway_calls.py
`test_call9_no_common_codec_with_the_deployed_gateway_is_refused_and_leaves_no_connection`.
"""

from __future__ import annotations

import asyncio

import pytest

from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.config import AgentSettings
from ccmsec.db.devices import Device
from ccmsec.db.lines import Line
from ccmsec.media.callkeys import CallKeySource, DeviceTransport, PairKeys
from ccmsec.media.srtp import MasterKey
from ccmsec.pki.ca import Issued, load_pair, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.tls import sccp_phone_context
from ccmsec.runtime.database import open_database
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import Tone
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig
from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
KEY = new_key()
G711U, G729 = 4, 9
PHONES = {  # name: (directory numbers, codecs in CapabilitiesRes)
    "SEP0000000DC001": (["3201"], (G711U,)),            # U1: G.711 µ-law only
    "SEP0000000DC002": (["3202", "3290"], (G729,)),     # G9: G.729 only; shares 3290
    "SEP0000000DC003": (["3203", "3290"], (G729, G711U)),  # BOTH: shares 3290
    "SEP0000000DC004": (["3204"], (G711U,)),            # U4
    "SEP0000000DC005": (["3205"], (G711U,)),            # U5
    "SEP0000000DC006": (["3206"], ()),                  # NONE: a CapabilitiesRes with no codec
}
U1, G9, BOTH, U4, U5, NOCODEC = PHONES


class Lab:
    def __init__(self, cc: CallControl, data):
        self.cc = cc
        self.capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
        self.phones: dict[str, CallingPhone] = {}
        self.keys_taken = 0

    def transport(self, device: str) -> DeviceTransport | None:
        entry = self.cc.registry.entries.get(device)
        station = self.cc.calls.agent.stations.get(device)
        if entry is None or station is None:
            return None
        return DeviceTransport(entry.security_mode, entry.transport_port == self.cc.tls.port,
                               entry.cipher, srtp_capable=station.srtp_capable)

    def pair(self) -> PairKeys:
        self.keys_taken += 1
        return PairKeys(MasterKey.generate(), MasterKey.generate())

    async def phone(self, name: str) -> CallingPhone:
        lsc = Issued(issue_lsc(self.capf, name, KEY.public_key()), KEY)
        ctx = sccp_phone_context("encrypted", [self.cc.server_certificate], lsc=lsc)
        conn = await connect_phone(HOST, self.cc.tls.port, s.Register(name, HOST, device_type=30006),
                                   ssl_context=ctx, pinned_ccm_certificates=[self.cc.server_certificate])
        conn.session.capabilities = s.CapabilitiesRes(
            tuple(s.MediaCapability(c) for c in PHONES[name][1]), encryption_capable=True)
        phone = CallingPhone(conn, bind_host=HOST)
        await phone.wait_ready()
        await wait(lambda: self.cc.calls.agent.stations.get(name) is not None
                   and self.cc.calls.agent.stations[name].codecs == PHONES[name][1], "capabilities")
        self.phones[name] = phone
        return phone

    async def close(self):
        for phone in self.phones.values():
            await phone.close()


async def wait(cond, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def lab(tmp_path):
    engine, sm = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        for name in PHONES:
            session.add(Device(name=name, model="7970", security_mode="encrypted"))
        await session.flush()
        for name, (dns, _) in PHONES.items():
            for index, dn in enumerate(dns, 1):
                session.add(Line(dn=dn, device=name, line_index=index, label=""))
    config = CallControlConfig("callmanager", HOST, 0, 0, tmp_path, agent=AgentSettings(
        inter_digit_timeout=0.5, no_answer_timeout=5.0, server_name="callmanager"))
    cc = CallControl(config, sm, cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))
    await cc.start()
    lab = Lab(cc, tmp_path)
    keys = CallKeySource(lab.pair, lab.transport)
    cc.calls.agent.key_source = keys.key_source
    lab.events = cc.calls.watch()
    yield lab
    await lab.close()
    await cc.close()
    await engine.dispose()


def in_state(state: CS):
    return lambda d: any(c.state == state for c in d.calls.values())


def events(lab: Lab, kind: str):
    out = []
    while not lab.events.empty():
        event = lab.events.get_nowait()
        if event is not None and event.kind == kind:
            out.append(event)
    return out


async def connected_call(lab: Lab, caller: CallingPhone, callee: CallingPhone, dn: str):
    caller.act(caller.display.dial, dn)
    await callee.wait_for(in_state(CS.RING_IN), what="ringing")
    callee.act(callee.display.answer)
    for phone in (caller, callee):
        await phone.wait_for(lambda d: d.channels and all(ch.tx for ch in d.channels.values()),
                             what="media")


async def refused_with_reorder(phone: CallingPhone) -> None:
    await phone.wait_for(in_state(CS.CONGESTION), what="reorder: the set-up refused")
    (call,) = [c for c in phone.display.calls.values() if c.state == CS.CONGESTION]
    assert call.tone == Tone.REORDER and call.prompt == "No common codec"
    assert not phone.display.channels


async def test_call9_no_common_codec_between_two_phones_refuses_the_call(lab):
    u1, g9, u4, u5 = [await lab.phone(n) for n in (U1, G9, U4, U5)]
    await connected_call(lab, u4, u5, "3205")          # a call elsewhere, in progress
    (other,) = lab.cc.calls.calls()
    keys_before = lab.keys_taken
    events(lab, "ended")
    u1.act(u1.display.dial, "3202")
    await refused_with_reorder(u1)
    # the callee never rang, no leg of it anywhere; nothing keyed; the record says why
    assert not g9.display.calls
    assert lab.keys_taken == keys_before
    assert not lab.cc.calls.agent.stations[G9].legs
    (ended,) = events(lab, "ended")
    assert ended.call.called == "3202" and "No common codec" in ended.detail
    assert "no codec in common" in ended.call.codec_rule and "no transcoder" in ended.call.codec_rule
    assert lab.cc.calls.calls() == [lab.cc.calls.calls()[0]] and lab.cc.calls.calls()[0].id == other.id
    assert lab.cc.calls.agent.codec_refusals == 1
    # the caller hangs up and is clean; the other call still has its media
    u1.act(u1.display.hang_up)
    await u1.wait_for(lambda d: not d.calls, what="cleared")
    assert not lab.cc.calls.agent.stations[U1].legs
    assert all(ch.tx for ch in u4.display.channels.values()) and u4.display.channels
    # the G.729 phone can still be called by one that speaks G.729: it gets G.729
    both = await lab.phone(BOTH)
    await connected_call(lab, both, g9, "3202")
    assert {ch.codec for ch in g9.display.channels.values()} == {G729}


async def test_call9_shared_line_rings_only_the_appearances_that_share_a_codec(lab):
    u1, g9, both = [await lab.phone(n) for n in (U1, G9, BOTH)]
    u1.act(u1.display.dial, "3290")
    await both.wait_for(in_state(CS.RING_IN), what="the appearance that speaks G.711 rings")
    await asyncio.sleep(0.3)
    assert not in_state(CS.RING_IN)(g9.display)
    both.act(both.display.answer)
    await u1.wait_for(lambda d: d.channels and all(ch.tx for ch in d.channels.values()), what="media")
    assert {ch.codec for ch in both.display.channels.values()} == {G711U}


async def test_call9_barge_and_cbarge_without_a_common_codec_are_refused_the_call_keeps_its_codec(lab):
    u1, g9, both = [await lab.phone(n) for n in (U1, G9, BOTH)]
    await connected_call(lab, u1, both, "3290")      # G.711: U1 offers nothing else
    (before,) = lab.cc.calls.calls()
    assert before.codec == G711U
    keys_before = lab.keys_taken
    events(lab, "refused")
    for cbarge in (False, True):
        g9.act(g9.display.barge, cbarge=cbarge)
        await refused_with_reorder(g9)
        (refused,) = events(lab, "refused")
        assert refused.detail.startswith("CALL-9") and G9 in refused.detail
        g9.act(g9.display.hang_up)
        await g9.wait_for(lambda d: not any(c.state == CS.CONGESTION for c in d.calls.values()),
                          what="the refused barge cleared")
    (after,) = lab.cc.calls.calls()
    assert after.codec == G711U and after.barge == "" and len(after.legs) == 2
    assert [lg.rx for lg in after.legs] == [lg.rx for lg in before.legs]   # the same channels
    assert lab.keys_taken == keys_before and not lab.cc.calls.agent.stations[G9].legs
    assert {ch.codec for ch in u1.display.channels.values()} == {G711U}


async def test_a_malformed_enbloc_number_from_an_idle_phone_leaves_it_on_hook_and_callable(lab):
    """Bad input at set-up: an en-bloc number that is empty or not 0-9 * # + (a real phone's
    display never sends one; a modified one may) changes nothing — before, it made an off-hook
    leg with dial tone, so the phone stayed busy for every call to it until it hung up."""
    from ccmsec.wire.sccp_calls import EnblocCall
    u1, u4 = [await lab.phone(n) for n in (U1, U4)]
    agent = lab.cc.calls.agent
    seen, ignored = agent.stations[U1].messages, agent.ignored
    for number in ("", "12ab", "32 04"):
        await u1.conn.send(EnblocCall(number, 1))
    await wait(lambda: agent.stations[U1].messages >= seen + 3, "the numbers at call control")
    await asyncio.sleep(0.1)
    assert not agent.stations[U1].legs and not u1.display.calls
    assert agent.ignored == ignored + 3
    assert lab.cc.calls.calls() == []
    await connected_call(lab, u4, u1, "3201")          # it rings, not busy


async def test_call9_a_phone_that_offers_no_codec_is_refused_both_ways(lab):
    """A CapabilitiesRes listing no codec offers nothing: before, it counted as 'not sent' and
    the phone was told G.711 µ-law."""
    u1, none = [await lab.phone(n) for n in (U1, NOCODEC)]
    for caller, dn in ((none, "3201"), (u1, "3206")):
        caller.act(caller.display.dial, dn)
        await refused_with_reorder(caller)
        caller.act(caller.display.hang_up)
        await caller.wait_for(lambda d: not d.calls, what="cleared")
    assert not u1.display.channels and not none.display.channels and lab.keys_taken == 0
    assert lab.cc.calls.calls() == [] and lab.cc.calls.agent.codec_refusals == 2


@pytest.mark.parametrize("feature", ["transfer", "conference"])
async def test_call9_a_transfer_or_conference_without_a_common_codec_is_refused_both_calls_stay(lab, feature):
    """G9 (G.729 only) talks to BOTH in G.729; BOTH consults U1 (G.711 only) and completes a
    transfer (G9 to U1: nothing in common) or a conference (the bridge mixes G.711 µ-law, which G9
    does not offer). Refused as a whole: BOTH reads why, both calls keep their parties, codecs and
    channels — before, G9 was told to use G.711 µ-law."""
    g9, both, u1 = [await lab.phone(n) for n in (G9, BOTH, U1)]
    await connected_call(lab, g9, both, "3203")
    both.act(getattr(both.display, feature))
    await both.wait_for(in_state(CS.OFF_HOOK), what="the consultation's dial tone")
    await connected_call(lab, both, u1, "3201")
    before = {v.id: (v.codec, sorted(lg.device for lg in v.legs)) for v in lab.cc.calls.calls()}
    assert sorted(before.values()) == [(G711U, sorted([BOTH, U1])), (G729, sorted([BOTH, G9]))]
    events(lab, "refused")
    both.act(getattr(both.display, feature))
    await both.wait_for(lambda d: "No common codec" in d.notifications, what="the refusal shown")
    (refused,) = events(lab, "refused")
    assert refused.detail.startswith("CALL-9") and G9 in refused.detail
    after = {v.id: (v.codec, sorted(lg.device for lg in v.legs)) for v in lab.cc.calls.calls()}
    assert after == before and lab.cc.calls.agent.codec_refusals == 1
    # G9 is the held party: the MoH source encodes G.711 only, which G9 never offered, so it has
    # no channel at all and plays tone on hold (before: a MoH channel in G.729 fed µ-law).
    assert g9.display.channels == {}
    assert [c.tone for c in g9.display.calls.values()] == [Tone.HOLD]
    assert {ch.codec for ch in u1.display.channels.values()} == {G711U}


async def test_an_enbloc_number_ending_in_hash_calls_that_number(lab):
    """'#' ends dialling; en bloc ("3204#") it reached the dial plan, which matched 3204, but the
    call was offered to "3204#" — no appearance, so the caller got reorder ("Temp Fail")."""
    u1, u4 = [await lab.phone(n) for n in (U1, U4)]
    await connected_call(lab, u1, u4, "3204#")
    (view,) = lab.cc.calls.calls()
    assert view.called == "3204" and lab.cc.calls.agent.stations[U1].last_dialed == "3204"


async def test_call9_capabilities_changed_while_ringing_are_checked_again_at_answer(lab):
    """The callee re-sends its capabilities while it rings, now G.729 only: answering is refused
    (caller reorder, the callee's call cleared, nothing keyed) rather than connecting in G.711."""
    u1, u4 = [await lab.phone(n) for n in (U1, U4)]
    u1.act(u1.display.dial, "3204")
    await u4.wait_for(in_state(CS.RING_IN), what="ringing")
    await u4.conn.send(s.CapabilitiesRes((s.MediaCapability(G729),), encryption_capable=True))
    await wait(lambda: lab.cc.calls.agent.stations[U4].codecs == (G729,), "the new capabilities")
    u4.act(u4.display.answer)
    await refused_with_reorder(u1)
    await u4.wait_for(lambda d: not d.calls, what="the callee's call cleared")
    assert not u4.display.channels and lab.keys_taken == 0 and lab.cc.calls.calls() == []
    assert not lab.cc.calls.agent.stations[U4].legs
