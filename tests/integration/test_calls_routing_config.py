"""Call routing configuration through callmanager's gRPC API and its one write path (issue 10):
speed dials, call forward busy / no answer and codec regions (CALL-9's "region configuration")
reach the profile a device registers with; each change is audited; bad values and unknown
devices, numbers and regions are refused with a clear status and nothing written."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from ccmsec.db.admin import AuditEntry
from ccmsec.db.lines import Line
from ccmsec_proto import callmanager_pb2 as pb
from tests.integration.test_callmanager_service import cm, pki_template  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(60)

PHONE, OTHER = "SEP0000000E0001", "SEP0000000E0002"


async def _refused(call, code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code and text in err.value.details(), err.value.details()


async def test_speed_dials_forwards_and_regions_reach_the_profile_and_are_audited(cm):
    await cm.add_device(PHONE, "7960", "encrypted")
    await cm.add_device(OTHER, "7970", "non-secure")
    async with cm.svc.db() as session, session.begin():
        session.add(Line(dn="4401", device=PHONE, line_index=1, label=""))
    stub = cm.stub
    await stub.SetSpeedDial(pb.SpeedDialSetting(device=PHONE, index=1, number="4402", label="Bob"), timeout=10)
    fwd = await stub.SetLineForward(pb.LineForwardSetting(dn="4401", busy="4402", no_answer="4499"), timeout=10)
    assert list(fwd.devices) == [PHONE]
    region = await stub.SetRegion(pb.RegionSetting(name="hq-wide", wideband=True), timeout=10)
    assert region.wideband and list(region.devices) == []
    await stub.SetDeviceRegion(pb.DeviceRegionSetting(device=PHONE, region="hq-wide"), timeout=10)

    directory = cm.cc.directory
    directory.forget()
    profile = await directory.profile(PHONE, "7960", "encrypted")
    assert [(sd.index, sd.number, sd.label) for sd in profile.speed_dials] == [(1, "4402", "Bob")]
    (line,) = profile.lines
    assert (line.dn, line.forward_busy, line.forward_no_answer) == ("4401", "4402", "4499")
    assert profile.wideband_region is True                      # CALL-9: the region allows it

    # changes and removals
    await stub.SetRegion(pb.RegionSetting(name="hq-wide", wideband=False), timeout=10)
    await stub.SetSpeedDial(pb.SpeedDialSetting(device=PHONE, index=1, number=""), timeout=10)
    await stub.SetLineForward(pb.LineForwardSetting(dn="4401"), timeout=10)
    directory.forget()
    profile = await directory.profile(PHONE, "7960", "encrypted")
    assert profile.speed_dials == () and profile.wideband_region is False
    assert (profile.lines[0].forward_busy, profile.lines[0].forward_no_answer) == ("", "")
    await stub.SetDeviceRegion(pb.DeviceRegionSetting(device=PHONE, region=""), timeout=10)

    # bad cases: nothing is written
    bad = grpc.StatusCode.INVALID_ARGUMENT
    await _refused(stub.SetSpeedDial(pb.SpeedDialSetting(device=PHONE, index=0, number="1"), timeout=10),
                   bad, "index must be 1..42")
    await _refused(stub.SetSpeedDial(pb.SpeedDialSetting(device=PHONE, index=2, number="12ab"), timeout=10),
                   bad, "12ab")
    await _refused(stub.SetSpeedDial(pb.SpeedDialSetting(device="SEP0000000E0FFF", index=2, number="1"),
                                     timeout=10), grpc.StatusCode.NOT_FOUND, "no device")
    await _refused(stub.SetLineForward(pb.LineForwardSetting(dn="4401", busy="4401"), timeout=10),
                   bad, "forward to itself")
    await _refused(stub.SetLineForward(pb.LineForwardSetting(dn="4477", busy="4402"), timeout=10),
                   grpc.StatusCode.NOT_FOUND, "no line has directory number 4477")
    await _refused(stub.SetRegion(pb.RegionSetting(name="bad region!"), timeout=10), bad, "region")
    await _refused(stub.SetDeviceRegion(pb.DeviceRegionSetting(device=OTHER, region="nowhere"), timeout=10),
                   grpc.StatusCode.NOT_FOUND, "no region named nowhere")
    directory.forget()
    assert (await directory.profile(PHONE, "7960", "encrypted")).speed_dials == ()

    async with cm.svc.db() as session:
        actions = [a for (a,) in (await session.execute(
            select(AuditEntry.action).where(AuditEntry.outcome == "ok").order_by(AuditEntry.id))).all()]
    assert actions.count("speed_dial.set") == 2 and actions.count("line_forward.set") == 2
    assert actions.count("region.set") == 2 and actions.count("device_region.set") == 2


async def test_a_routing_change_applies_to_the_next_call_without_re_registration(cm, nats_server):
    """Issue 10: routing changes apply live. The phones stay registered (one connection each,
    never reset); a call forward busy set through gRPC applies to the very next call, and one
    written by another door and announced by the owner's `config.changed` event applies once the
    event arrives. Bad case first: before the change, the busy number gives busy tone."""
    from ccmsec.aio.sccp import connect_phone
    from ccmsec.aio.sccp_calling import CallingPhone
    from ccmsec.db import calls as calls_db
    from ccmsec.wire import sccp as s
    from ccmsec.wire.sccp_calls import CallStateCode as CS
    from ccmsec_proto import events_pb2
    from tests.integration.test_callmanager_service import wait_for

    names = {"SEP0000000E0A01": "4501", "SEP0000000E0A02": "4502", "SEP0000000E0A03": "4503",
             "SEP0000000E0A04": "4504", "SEP0000000E0A05": "4505"}
    for name, dn in names.items():
        await cm.add_device(name, "7970", "non-secure")
    async with cm.svc.db() as session, session.begin():
        session.add_all([Line(dn=dn, device=name, line_index=1, label="") for name, dn in names.items()])
    cm.cc.directory.forget()
    phones = []
    for name in names:
        conn = await connect_phone(cm.host, cm.cc.plain.port, s.Register(name, cm.host, device_type=30006))
        phone = CallingPhone(conn, bind_host=cm.host)
        await phone.wait_ready(20)
        phones.append(phone)
    a, b, c, d, e = phones
    registrations = cm.cc.registered_total

    def has(phone, state):
        return lambda disp=None: any(x.state == state for x in phone.display.calls.values())

    try:
        a.act(a.display.dial, "4502")                       # B busy with A
        await wait_for(has(b, CS.RING_IN), 20)
        b.act(b.display.answer)
        await wait_for(has(a, CS.CONNECTED), 20)
        c.act(c.display.dial, "4502")                       # before the change: busy tone
        await wait_for(has(c, CS.BUSY), 20)
        assert not d.display.calls
        c.act(c.display.hang_up)
        await wait_for(lambda: not c.display.calls, 20)

        await cm.stub.SetLineForward(pb.LineForwardSetting(dn="4502", busy="4504"), timeout=10)
        c.act(c.display.dial, "4502")                       # the next call follows the route
        await wait_for(has(d, CS.RING_IN), 20)
        d.act(d.display.answer)
        await wait_for(has(c, CS.CONNECTED), 20)
        c.act(c.display.hang_up)
        await wait_for(lambda: not d.display.calls, 20)

        # another door wrote the change; the owner's event carries it to call control
        async with cm.svc.db() as session, session.begin():
            row = await session.get(calls_db.LineForward, "4502")
            row.forward_busy = "4505"
        applied = cm.cc.routing_changes_applied
        await cm.svc.publish("config.changed", None, config_changed=events_pb2.ConfigChanged(
            devices=["SEP0000000E0A02"], what="line_forward"))
        await wait_for(lambda: cm.cc.routing_changes_applied > applied, 20)
        c.act(c.display.dial, "4502")
        await wait_for(has(e, CS.RING_IN), 20)
        assert not d.display.calls
        c.act(c.display.hang_up)
        await wait_for(lambda: not e.display.calls, 20)
        # nobody registered again: the same connections carried every call
        assert cm.cc.registered_total == registrations and all(not p.lost for p in phones)
    finally:
        for phone in phones:
            await phone.close()
