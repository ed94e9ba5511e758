"""CALL-4…9 and DEV-2 end to end (issue 10's check): phones registered in their own modes over real
sockets — encrypted and authenticated over TLS 2443 with an LSC, non-secure on 2000 — with call
control (`CallControl`, in process, SQLite) and the real key source plugged in as callmanager's
media plane does (`CallKeySource`: keys only for encrypted phones on encrypting TLS, ENC-3/ENC-5),
so *encrypted* (the lock) is what the phones really show. Each rule with its bad case.

Shared line 3900 is on E2, E3 (encrypted), AU (authenticated) and NS (non-secure): whoever answers
it makes the call; the others see it "in use remote" and may barge.
"""

from __future__ import annotations

import pytest

from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.config import AgentSettings
from ccmsec.db import calls as calls_db
from ccmsec.db.devices import Device
from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower
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

pytestmark = pytest.mark.timeout(120)

HOST = "127.0.0.1"
KEY = new_key()
WIDE = 0x19
PHONES = {  # name: (model, mode, directory numbers)
    "SEP0000000DB001": ("7970", "encrypted", ["3101"]),              # E1: the caller
    "SEP0000000DB002": ("7970", "encrypted", ["3102", "3900"]),      # E2
    "SEP0000000DB003": ("7970", "encrypted", ["3103", "3900"]),      # E3
    "SEP0000000DB004": ("7960", "authenticated", ["3104", "3900"]),  # AU
    "SEP0000000DB005": ("7960", "non-secure", ["3105", "3900"]),     # NS
    "SEP0000000DB006": ("7960", "encrypted", ["3106"]),              # W60: wideband region, a 7960
    "SEP0000000DB007": ("7970", "encrypted", ["3107"]),              # W70: wideband region
    "SEP0000000DB008": ("7970", "authenticated", ["3108"]),          # WAU: wideband region
}
E1, E2, E3, AU, NS, W60, W70, WAU = PHONES
LOCK, SHIELD, NONE = "lock", "shield", "none"


class Lab:
    def __init__(self, cc: CallControl, data):
        self.cc = cc
        self.capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
        self.phones: dict[str, CallingPhone] = {}

    def transport(self, device: str) -> DeviceTransport | None:
        """What callmanager's media plane answers: the device's registration decides (ENC-3)."""
        entry = self.cc.registry.entries.get(device)
        station = self.cc.calls.agent.stations.get(device)
        if entry is None or station is None:
            return None
        on_tls = entry.transport_port == self.cc.tls.port
        return DeviceTransport(entry.security_mode, on_tls, entry.cipher if on_tls else "",
                               srtp_capable=station.srtp_capable)

    async def phone(self, name: str) -> CallingPhone:
        model, mode, _ = PHONES[name]
        device_type = {"7970": 30006, "7960": 7}[model]
        if mode == "non-secure":
            conn = await connect_phone(HOST, self.cc.plain.port, s.Register(name, HOST, device_type=device_type))
        else:
            lsc = Issued(issue_lsc(self.capf, name, KEY.public_key()), KEY)
            ctx = sccp_phone_context(mode, [self.cc.server_certificate], lsc=lsc)
            conn = await connect_phone(HOST, self.cc.tls.port, s.Register(name, HOST, device_type=device_type),
                                       ssl_context=ctx, pinned_ccm_certificates=[self.cc.server_certificate])
        codecs = (WIDE, 4) if name in (W60, W70, WAU) else (4,)
        conn.session.capabilities = s.CapabilitiesRes(tuple(s.MediaCapability(c) for c in codecs),
                                                      encryption_capable=mode == "encrypted")
        phone = CallingPhone(conn, bind_host=HOST)
        await phone.wait_ready()
        self.phones[name] = phone
        return phone

    async def close(self):
        for phone in self.phones.values():
            await phone.close()


@pytest.fixture
async def lab(tmp_path):
    engine, sm = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        for name, (model, mode, _) in PHONES.items():
            session.add(Device(name=name, model=model, security_mode=mode))
        session.add(Device(name="SEP0000000DB009", model="7970", security_mode="encrypted"))
        session.add(Device(name="SEP0000000DB00A", model="7960", security_mode="non-secure"))
        await session.flush()
        for name, (_, _, dns) in PHONES.items():
            for index, dn in enumerate(dns, 1):
                session.add(Line(dn=dn, device=name, line_index=index, label=""))
        session.add(calls_db.Region(name="wide", wideband=True))
        await session.flush()
        for name in (W60, W70, WAU):
            session.add(calls_db.DeviceRegion(device=name, region="wide"))
        # extension mobility: alice is logged in to an encrypted 7970, bob to a non-secure 7960
        session.add(calls_db.MobilityUser(user_id="alice", display_name="Alice", dn="3950"))
        session.add(calls_db.MobilityUser(user_id="bob", display_name="Bob", dn="3951"))
        await session.flush()
        session.add(calls_db.MobilityLogin(device="SEP0000000DB009", user_id="alice"))
        session.add(calls_db.MobilityLogin(device="SEP0000000DB00A", user_id="bob"))
    config = CallControlConfig("callmanager", HOST, 0, 0, tmp_path, agent=AgentSettings(
        inter_digit_timeout=0.5, no_answer_timeout=5.0, server_name="callmanager"))
    # a mixed cluster with a CTL, as its owner (the CTL Provider) would tell call control
    cc = CallControl(config, sm, cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))
    await cc.start()
    lab = Lab(cc, tmp_path)
    keys = CallKeySource(lambda: PairKeys(MasterKey.generate(), MasterKey.generate()), lab.transport)
    cc.calls.agent.key_source = keys.key_source
    yield lab
    await lab.close()
    await cc.close()
    await engine.dispose()


def icons(phone: CallingPhone, state: CS = CS.CONNECTED) -> list[str]:
    return [c.icon for c in phone.display.calls.values() if c.state == state]


def in_state(state: CS):
    return lambda d: any(c.state == state for c in d.calls.values())


async def shows(phone: CallingPhone, icon: str, what: str = "") -> None:
    await phone.wait_for(lambda d: any(c.state == CS.CONNECTED and c.icon == icon for c in d.calls.values()),
                         what=what or f"'{icon}' on a connected call")


async def shared_call(lab: Lab, answering: str):
    """E1 calls 3900 and `answering` takes it; every other appearance sees it in use remote."""
    caller = lab.phones[E1]
    caller.act(caller.display.dial, "3900")
    target = lab.phones[answering]
    await target.wait_for(in_state(CS.RING_IN), what="ringing")
    target.act(target.display.answer)
    await target.wait_for(in_state(CS.CONNECTED), what="answered")
    for name in (E2, E3, AU, NS):
        if name != answering:
            await lab.phones[name].wait_for(in_state(CS.REMOTE_MULTILINE), what="in use remote")
    return caller, target


async def all_phones(lab: Lab, *names):
    return [await lab.phone(n) for n in names]


async def test_call4_call6_encrypted_may_barge_into_an_encrypted_call_others_hear_busy(lab):
    await all_phones(lab, E1, E2, E3, AU, NS)
    caller, target = await shared_call(lab, E2)
    await shows(caller, LOCK)
    await shows(target, LOCK)
    # CALL-4: the authenticated and the non-secure appearance are refused with busy tone
    for name in (AU, NS):
        refused = lab.phones[name]
        refused.act(refused.display.barge)
        await refused.wait_for(in_state(CS.BUSY), what="the refused barge")
        (busy,) = [c for c in refused.display.calls.values() if c.state == CS.BUSY]
        assert busy.tone == Tone.BUSY
        refused.act(refused.display.hang_up)
        await refused.wait_for(lambda d: not any(c.state == CS.BUSY for c in d.calls.values()))
    (view,) = lab.cc.calls.calls()
    assert sorted(lg.device for lg in view.legs) == [E1, E2] and view.barge == ""
    # CALL-6: the encrypted appearance barges in; everyone keeps the lock
    e3 = lab.phones[E3]
    e3.act(e3.display.barge)
    await shows(e3, LOCK, "the lock on the barging phone")
    (view,) = lab.cc.calls.calls()
    assert view.barge == "barge" and view.barge_rule.startswith("CALL-6") and len(view.legs) == 3
    assert icons(caller) == icons(target) == [LOCK]


async def test_call5_encrypted_initiator_into_an_authenticated_call_makes_it_non_secure(lab):
    await all_phones(lab, E1, E2, E3, AU, NS)
    caller, target = await shared_call(lab, AU)
    await shows(caller, SHIELD)
    await shows(target, SHIELD)
    e3 = lab.phones[E3]
    e3.act(e3.display.barge)
    await e3.wait_for(in_state(CS.CONNECTED), what="the barge connected")
    await shows(caller, NONE, "non-secure after the barge")
    await shows(target, NONE)
    (view,) = lab.cc.calls.calls()
    assert view.barge_rule.startswith("CALL-5") and icons(e3) == [NONE]


async def test_call7_non_secure_initiator_into_an_authenticated_call_keeps_the_shield(lab):
    await all_phones(lab, E1, E2, E3, AU, NS)
    caller, target = await shared_call(lab, AU)
    ns = lab.phones[NS]
    ns.act(ns.display.barge)
    await ns.wait_for(in_state(CS.CONNECTED), what="the barge connected")
    (view,) = lab.cc.calls.calls()
    assert view.barge_rule.startswith("CALL-7") and len(view.legs) == 3
    assert icons(caller) == icons(target) == [SHIELD] and icons(ns) == [NONE]
    ns.act(ns.display.hang_up)
    # out of the call: the shared line shows it in use remote again
    await ns.wait_for(lambda d: not in_state(CS.CONNECTED)(d) and in_state(CS.REMOTE_MULTILINE)(d),
                      what="the barge ended")
    assert icons(caller) == icons(target) == [SHIELD]


async def test_call8_cbarge_goes_through_the_bridge_non_secure_and_the_lock_comes_back(lab):
    await all_phones(lab, E1, E2, E3, AU, NS)
    caller, target = await shared_call(lab, E2)
    await shows(caller, LOCK)
    au = lab.phones[AU]
    au.act(au.display.barge, cbarge=True)
    await shows(caller, NONE, "non-secure through the bridge")
    await shows(target, NONE)
    (view,) = lab.cc.calls.calls()
    assert view.barge == "cbarge" and view.barge_rule.startswith("CALL-8")
    assert "conference bridge" in view.resources
    au.act(au.display.hang_up)
    await shows(caller, LOCK, "the lock back once the bridge left")
    await shows(target, LOCK)
    assert lab.cc.calls.calls()[0].resources == ()


async def test_dev2_a_shared_line_keeps_each_answering_devices_own_status(lab):
    await all_phones(lab, E1, E2, E3, AU, NS)
    for answering, expected in ((E2, LOCK), (AU, SHIELD), (NS, NONE)):
        caller, target = await shared_call(lab, answering)
        await shows(caller, expected, f"{expected} when {answering} answers")
        await shows(target, expected)
        (view,) = lab.cc.calls.calls()
        modes = {lg.device: lg.device_mode for lg in view.legs}
        assert modes[answering] == PHONES[answering][1]
        caller.act(caller.display.hang_up)
        await caller.wait_for(lambda d: not d.calls, what="cleared")
        await target.wait_for(lambda d: not d.calls, what="cleared")


async def test_dev2_extension_mobility_line_takes_the_mode_of_the_device_it_is_logged_into(lab):
    caller = await lab.phone(E1)
    for device, dn, model, mode, expected in (("SEP0000000DB009", "3950", "7970", "encrypted", LOCK),
                                              ("SEP0000000DB00A", "3951", "7960", "non-secure", NONE)):
        PHONES[device] = (model, mode, [])
        try:
            phone = await lab.phone(device)
        finally:
            del PHONES[device]
        assert [li.number for li in phone.display.lines.values()] == [dn]   # the user's line, here
        caller.act(caller.display.dial, dn)
        await phone.wait_for(in_state(CS.RING_IN), what="the user's line ringing")
        phone.act(phone.display.answer)
        await shows(caller, expected, f"{expected} for the user logged in to a {mode} device")
        (view,) = lab.cc.calls.calls()
        (leg,) = [lg for lg in view.legs if lg.device == device]
        assert leg.user and leg.device_mode == mode
        caller.act(caller.display.hang_up)
        await caller.wait_for(lambda d: not d.calls, what="cleared")


async def test_call9_no_wideband_codec_in_an_encrypted_call_with_a_7960(lab):
    w60, w70, wau = await all_phones(lab, W60, W70, WAU)
    for caller, callee, dn, codec, rule in ((w70, w60, "3106", 4, "wideband codec ignored"),
                                            (w70, wau, "3108", WIDE, "wideband codec allowed")):
        caller.act(caller.display.dial, dn)
        await callee.wait_for(in_state(CS.RING_IN), what="ringing")
        callee.act(callee.display.answer)
        await caller.wait_for(lambda d: d.channels and all(ch.tx for ch in d.channels.values()),
                              what="media")
        (view,) = lab.cc.calls.calls()
        assert view.codec == codec and rule in view.codec_rule, view.codec_rule
        assert {ch.codec for ch in caller.display.channels.values()} == {codec}
        caller.act(caller.display.hang_up)
        await callee.wait_for(lambda d: not d.calls, what="cleared")


async def test_enc4_a_phones_audio_refuses_and_counts_replayed_and_tampered_packets_in_a_locked_call(lab):
    """Issue 11 §2–3 on the phone's own audio (`PhoneAudio`, as phone-sim's phones run it): in an
    encrypted call, an attacker on the path re-sends a packet the far end really sent (refused as a
    replay) and a copy with one payload byte flipped (refused: authentication); both are counted,
    the audio goes on and the lock stays."""
    import asyncio
    import socket

    from ccmsec.aio.media import PhoneAudio

    audio = {}
    for name, pitch in ((E1, 440.0), (E2, 660.0)):
        phone = await lab.phone(name)
        audio[name] = PhoneAudio(pitch)
        phone.on_media = audio[name].hook
    caller, callee = lab.phones[E1], lab.phones[E2]
    caller.act(caller.display.dial, "3102")
    await callee.wait_for(in_state(CS.RING_IN), what="ringing")
    callee.act(callee.display.answer)
    await shows(caller, LOCK)
    await shows(callee, LOCK)
    (port,) = callee.ports.ports.values()
    heard: list[bytes] = []
    withheld: list[bytes] = []
    deliver = port.on_datagram

    def on_path(data, addr):
        """The attacker sits on the path: it copies four packets and withholds the fifth."""
        if len(heard) < 4:
            heard.append(bytes(data))
        elif not withheld:
            withheld.append(bytes(data))
            return
        deliver(data, addr)
    port.on_datagram = on_path

    async def until(predicate, what):
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while not predicate():
            assert loop.time() < end, f"no {what} within 10 s"
            await asyncio.sleep(0.02)
    await until(lambda: withheld, "SRTP from the caller")
    assert audio[E2].srtp_both_ways
    counts = lambda: audio[E2].totals()  # noqa: E731
    before = counts()
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        attacker.sendto(heard[0], port.local)                  # a packet the phone already took: replay
        await until(lambda: counts()["refused_replay"] == before["refused_replay"] + 1, "the replay refused")
        tampered = bytearray(withheld[0])
        tampered[20] ^= 0x40                                   # one payload bit of an unseen packet
        attacker.sendto(bytes(tampered), port.local)
        await until(lambda: counts()["refused_authentication"] == before["refused_authentication"] + 1,
                    "the tampered packet refused")
        taken = counts()["received"]
        attacker.sendto(withheld[0], port.local)               # the genuine packet, late: accepted
        await until(lambda: counts()["received"] > taken, "audio going on")
    finally:
        attacker.close()
    after = counts()
    assert after["refused_replay"] == before["refused_replay"] + 1
    assert after["refused_authentication"] == before["refused_authentication"] + 1
    assert icons(callee) == icons(caller) == [LOCK]
