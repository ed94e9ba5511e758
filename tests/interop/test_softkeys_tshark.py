"""Softkey sets per device (issue 10): two phones whose configuration gives them different softkey
sets — one through its device pool ("no-barge"), one its own ("basic", which also wins over the
pool) — are answered different SoftKeyTemplateRes / SoftKeySetRes after RegisterAck. Proved on the
wire: captured live on loopback from the real call agent and decoded by the Wireshark skinny
dissector (tshark), no malformed packet. The assignments are written through callmanager's one
write path (`CallManagerDomain.set_softkey_set`, the admin API's and CLI's), bad values refused.
Bad case: a key the device's set does not give it, sent anyway, changes nothing. The same capture
shows extension mobility's DeviceToUserData / UserToDeviceData decoded by the dissector. A barge's
initiator's connected set, masked (SelectSoftKeys' valid-key mask: no Transfer, no Confrn), is read
the same way, and a Transfer it sends anyway is refused with a prompt (CALL-1)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.config import AgentSettings
from ccmsec.calls.mobility import EM_APPLICATION_ID, MobilityResult, result_message
from ccmsec.calls.setup import keys_of
from ccmsec.db.devices import Device
from ccmsec.db.lines import DevicePool, Line
from ccmsec.runtime.database import open_database
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_calls import SoftKey
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig
from ccmsec_callmanager.domain import Actor, CallManagerDomain, OwnerRefused
from tests.interop.test_calls_tshark import _capture
from tests.interop.test_sccp_tshark import _fields, _port_free, _stop_capture

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

if shutil.which("tshark") is None:
    pytest.skip("tshark binary not installed", allow_module_level=True)

HOST = "127.0.0.49"
POOLED, OWN = "SEP0000000CB001", "SEP0000000CB002"   # pool "no-barge"; own "basic" over the pool's
DN = {POOLED: "3101", OWN: "3102"}


def _per_stream(pcap, message_id: int, field: str) -> dict[int, list[int]]:
    rows = _fields(pcap, "-Y", f"skinny.messageId == {message_id:#06x}", "-T", "fields",
                   "-e", "tcp.stream", "-e", field)
    out: dict[int, list[int]] = {}
    for row in rows:
        stream, _, values = row.partition("\t")
        out.setdefault(int(stream), []).extend(int(v, 0) for v in values.split(",") if v)
    return out


async def _phone(name: str) -> CallingPhone:
    conn = await connect_phone(HOST, 2000, s.Register(name, HOST, device_type=30006))
    phone = CallingPhone(conn, bind_host=HOST)
    await phone.wait_ready(30)
    return phone


async def _start_call_control(tmp_path, sm, host: str, pcap_name: str):
    """The real call agent on `host`:2000 over the database `sm`, with a live loopback capture of
    its SCCP. Returns the call control, the capture file and the capture process."""
    cc = CallControl(CallControlConfig("callmanager", host, 2000, 0, tmp_path, agent=AgentSettings(
        inter_digit_timeout=0.3, server_name="callmanager")), sm)
    await cc.start()
    pcap = tmp_path / pcap_name
    return cc, pcap, _capture(pcap, f"host {host} and tcp port 2000")


async def _stop_all(proc, phones, cc, engine) -> None:
    """Stop the capture (flushed for reading), the phones, the call control, the database."""
    _stop_capture(proc)
    for phone in phones:
        await phone.close()
    await cc.close()
    await engine.dispose()


async def test_two_devices_with_different_softkey_sets_get_different_sets_on_the_wire(tmp_path):
    if not _port_free(HOST, 2000):
        pytest.skip(f"{HOST}:2000 busy")
    engine, sm = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        session.add(DevicePool(name="lobby", cm_group=HOST, srst=""))
        for name in (POOLED, OWN):
            session.add(Device(name=name, model="7970", security_mode="non-secure", device_pool="lobby"))
        await session.flush()
        session.add_all([Line(dn=dn, device=name, line_index=1, label="") for name, dn in DN.items()])
    published = []

    async def publish(kind, target, payload):
        published.append((kind, payload))
    domain = CallManagerDomain(sm, publish)
    admin = Actor("admin", "test")
    # the one write path: bad values refused, nothing written
    for kwargs, text in (({"device": OWN, "softkey_set": "gold"}, "unknown softkey set 'gold'"),
                         ({"device": OWN, "pool": "lobby", "softkey_set": "basic"}, "exactly one"),
                         ({"device": "SEP0000000CBFFF", "softkey_set": "basic"}, "no device named"),
                         ({"pool": "nowhere", "softkey_set": "basic"}, "no device pool named")):
        with pytest.raises(OwnerRefused) as err:
            await domain.set_softkey_set(admin, **kwargs)
        assert text in err.value.message
    assert published == []
    out = await domain.set_softkey_set(admin, pool="lobby", softkey_set="no-barge")
    assert sorted(out["devices"]) == [POOLED, OWN]
    out = await domain.set_softkey_set(admin, device=OWN, softkey_set="basic")
    assert out["devices"] == [OWN]
    assert [kind for kind, _ in published] == ["config.changed", "config.changed"]

    cc, pcap, proc = await _start_call_control(tmp_path, sm, HOST, "softkeys.pcap")
    phones = []
    try:
        pooled = await _phone(POOLED)        # TCP stream 0
        phones.append(pooled)
        own = await _phone(OWN)              # TCP stream 1
        phones.append(own)
        # what each display offers follows its set
        assert list(pooled.display.softkeys.values()) == list(keys_of("no-barge"))
        assert list(own.display.softkeys.values()) == list(keys_of("basic"))
        assert SoftKey.BARGE not in pooled.display.softkeys.values()

        # bad case: a key its set does not give it, sent anyway, is ignored by call control
        pooled.act(pooled.display.dial, DN[OWN])
        await own.wait_for(lambda d: any(x.state == CS.RING_IN for x in d.calls.values()), 20, "ringing")
        own.act(own.display.answer)
        await own.wait_for(lambda d: any(x.state == CS.CONNECTED for x in d.calls.values()), 20, "connected")
        ref = next(iter(own.display.calls))
        ignored = cc.calls.agent.ignored
        own.conn.write([c.SoftKeyEvent(SoftKey.TRANSFER, 1, ref)])
        for _ in range(200):   # bounded: up to 20 s on a loaded machine
            if cc.calls.agent.ignored > ignored:
                break
            await asyncio.sleep(0.1)
        assert cc.calls.agent.ignored > ignored
        assert [x.state for x in own.display.calls.values()] == [CS.CONNECTED]   # no consultation
        pooled.act(pooled.display.transfer)           # its own set has Transfer: the call is held
        await pooled.wait_for(lambda d: any(x.state == CS.HOLD for x in d.calls.values()), 20, "held")
        pooled.act(pooled.display.hang_up)            # the consultation's dial tone
        own.act(own.display.hang_up)                  # and the held call, from the other side
        await pooled.wait_for(lambda d: not d.calls, 20, "idle")

        # extension mobility's messages from the phone and back (DEV-2), decoded by the same
        # dissector: DeviceToUserData 0x002E and UserToDeviceData 0x011E
        def answer(conn, device, message):
            conn.session.send(result_message(MobilityResult(False, "login", "alice", "wrong user id or PIN"),
                                             message.transaction_id))
            conn.flush()
        cc.user_data = answer
        pooled.act(pooled.display.mobility_login, "alice", "4711")
        await pooled.wait_for(lambda d: d.mobility is not None, 20, "the extension-mobility answer")
        assert not pooled.display.mobility.ok
    finally:
        await _stop_all(proc, phones, cc, engine)

    # on the wire, as the Wireshark skinny dissector reads it
    templates = _per_stream(pcap, 0x0108, "skinny.softKeyEvent")     # SoftKeyTemplateResMessage
    assert templates == {0: [int(k) for k in keys_of("no-barge")], 1: [int(k) for k in keys_of("basic")]}
    set_counts = _per_stream(pcap, 0x0109, "skinny.softKeySetCount")  # SoftKeySetResMessage
    assert set(set_counts) == {0, 1}
    infos = _per_stream(pcap, 0x0109, "skinny.softKeyTemplateIndex")
    assert infos[0] != infos[1]   # the per-state sets differ too
    basic_positions = len(keys_of("basic"))
    assert infos[1] and max(infos[1]) <= basic_positions
    em = _fields(pcap, "-Y", "skinny.messageId == 0x002e || skinny.messageId == 0x011e", "-T", "fields",
                 "-e", "skinny.messageId", "-e", "skinny.applicationId", "-e", "skinny.dataLength")
    assert [tuple(int(v, 0) for v in row.split("\t")[:2]) for row in em] == [
        (0x002E, EM_APPLICATION_ID), (0x011E, EM_APPLICATION_ID)], em
    assert all(int(row.split("\t")[2]) > 0 for row in em)
    assert _fields(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []


BARGE_HOST = "127.0.0.50"
CALLER, TARGET, XENA = "SEP0000000CB011", "SEP0000000CB012", "SEP0000000CB013"   # XENA shares 3112


async def test_a_barge_initiators_connected_set_masks_transfer_and_conference_on_the_wire(tmp_path):
    """CALL-1: a barge's initiator cannot transfer or conference the call it barged into. Its
    SelectSoftKeys (the two-party set) carries a valid-key mask without the Transfer and Confrn
    bits, as the Wireshark skinny dissector reads it; a Transfer sent anyway is refused with a
    prompt and the call stays as it was (the bad case)."""
    if not _port_free(BARGE_HOST, 2000):
        pytest.skip(f"{BARGE_HOST}:2000 busy")
    engine, sm = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        session.add(DevicePool(name="desk", cm_group=BARGE_HOST, srst=""))
        for name in (CALLER, TARGET, XENA):
            session.add(Device(name=name, model="7970", security_mode="non-secure", device_pool="desk"))
        await session.flush()
        session.add_all([Line(dn=dn, device=name, line_index=1, label="")
                         for name, dn in ((CALLER, "3111"), (TARGET, "3112"), (XENA, "3112"))])
    cc, pcap, proc = await _start_call_control(tmp_path, sm, BARGE_HOST, "barge.pcap")
    phones = []
    try:
        for name in (CALLER, TARGET, XENA):   # TCP streams 0, 1, 2
            conn = await connect_phone(BARGE_HOST, 2000, s.Register(name, BARGE_HOST, device_type=30006))
            phone = CallingPhone(conn, bind_host=BARGE_HOST)
            await phone.wait_ready(30)
            phones.append(phone)
        caller, target, xena = phones
        caller.act(caller.display.dial, "3112")
        await target.wait_for(lambda d: any(x.state == CS.RING_IN for x in d.calls.values()), 20, "ringing")
        target.act(target.display.answer)
        await xena.wait_for(lambda d: any(x.state == CS.REMOTE_MULTILINE for x in d.calls.values()),
                            20, "in use remote")
        xena.act(xena.display.barge)
        await xena.wait_for(lambda d: any(x.state == CS.CONNECTED for x in d.calls.values()), 20, "barged")
        barged = next(x for x in xena.display.calls.values() if x.state == CS.CONNECTED)
        assert barged.softkey_set == c.SoftKeySetIndex.CONNECTED
        assert xena.display.offered_names(barged) == ["Hold", "EndCall"]
        # bad case: Transfer sent anyway — refused, said so, nothing else changes
        calls_before = {x.reference: x.state for x in xena.display.calls.values()}
        xena.conn.write([c.SoftKeyEvent(SoftKey.TRANSFER, barged.line, barged.reference)])
        await xena.wait_for(lambda d: "No transfer from a barge" in d.notifications, 20, "the refusal")
        assert {x.reference: x.state for x in xena.display.calls.values()} == calls_before
        (view,) = cc.calls.agent.views()
        assert view.barge == "barge" and len(view.legs) == 3
    finally:
        await _stop_all(proc, phones, cc, engine)

    rows = _fields(pcap, "-Y", "skinny.messageId == 0x0110 && tcp.stream == 2", "-T", "fields",
                   "-e", "skinny.softKeySetIndex", "-e", "skinny.SoftKeyMask.SoftKey1",
                   "-e", "skinny.SoftKeyMask.SoftKey2", "-e", "skinny.SoftKeyMask.SoftKey3",
                   "-e", "skinny.SoftKeyMask.SoftKey4")
    # one frame may carry several SCCP messages: each field lists its values in message order
    shown = [list(message) for row in rows
             for message in zip(*(field.split(",") for field in row.split("\t")))]
    # the barge leg's connected set (Hold, EndCall, Transfer, Confrn): only the first two bits
    assert [r[1:] for r in shown if int(r[0], 0) == c.SoftKeySetIndex.CONNECTED] == [
        ["1", "1", "0", "0"]], shown
    # every other SelectSoftKeys to that phone carries all bits
    assert all(r[1:] == ["1"] * 4 for r in shown if int(r[0], 0) != c.SoftKeySetIndex.CONNECTED), shown
    assert _fields(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []
