"""Extension mobility FROM THE PHONE (issue 10, DEV-2) against the callmanager service: the user
types user id and PIN at the phone, which sends them in DeviceToUserData on its own registered
connection (TLS 2443 for the encrypted phone here); call control checks the PIN, stores the login
through the one write path (audited as phone/<device> via sccp), answers in UserToDeviceData and
restarts the phone, which registers again with the user's line and its own security mode; logout
the same way. Bad cases: wrong PIN and unknown user (same answer), no PIN set, too many wrong PINs
(throttled even with the right one), malformed data, a login during a call, a logout with nobody
logged in — each answered on the phone, nothing stored."""

from __future__ import annotations


import grpc
import pytest
from sqlalchemy import select

from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.mobility import EM_APPLICATION_ID
from ccmsec.db import calls as calls_db
from ccmsec.db.admin import AuditEntry
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec.wire.sccp_userdata import DeviceToUserData
from ccmsec_proto import callmanager_pb2 as pb
from tests.integration.test_callmanager_service import cm, pki_template, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(180)

DESK, OTHER = "SEP0000000EB001", "SEP0000000EB002"


async def _phone(cm, name: str, *, secure: bool) -> CallingPhone:
    if secure:
        conn = await connect_phone(cm.host, cm.cc.tls.port, s.Register(name, cm.host, device_type=30006),
                                   ssl_context=cm.phone_ctx("encrypted", lsc=cm.lsc(name)),
                                   pinned_ccm_certificates=[cm.ccm_cert])
    else:
        conn = await connect_phone(cm.host, cm.cc.plain.port, s.Register(name, cm.host, device_type=30006))
    phone = CallingPhone(conn, bind_host=cm.host)
    await phone.wait_ready(30)
    return phone


async def _answer(phone: CallingPhone, action, *args):
    phone.display.mobility = None
    phone.act(action, *args)
    await phone.wait_for(lambda d: d.mobility is not None, 30, "the extension-mobility answer")
    return phone.display.mobility


async def test_a_user_logs_in_and_out_at_the_phone_and_the_device_keeps_its_mode(cm):
    await cm.set_mode("mixed")
    await cm.add_device(DESK, "7970", "encrypted")
    await cm.add_device(OTHER, "7960", "non-secure")
    stub = cm.stub
    # through the owner's write path, as the administrator adds lines (call control keeps its
    # directory from it)
    await stub.AddLine(pb.Line(dn="4601", device=DESK), timeout=10)
    await stub.AddLine(pb.Line(dn="4602", device=OTHER), timeout=10)
    await stub.AddMobilityUser(pb.MobilityUser(user_id="alice", dn="4690", display_name="Alice"), timeout=10)
    await stub.AddMobilityUser(pb.MobilityUser(user_id="bob", dn="4691"), timeout=10)
    # the PIN is set by the administrator, stored hashed, never echoed; bad PINs refused
    user = await stub.SetMobilityPin(pb.MobilityPinRequest(user_id="alice", pin="4711"), timeout=30)
    assert user.user_id == "alice" and "4711" not in str(user)
    for bad, code in (("12", grpc.StatusCode.INVALID_ARGUMENT), ("12ab", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetMobilityPin(pb.MobilityPinRequest(user_id="alice", pin=bad), timeout=30)
        assert err.value.code() == code and "4-16 digits" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SetMobilityPin(pb.MobilityPinRequest(user_id="nobody", pin="1234"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    async with cm.svc.db() as session:
        stored = (await session.get(calls_db.MobilityUser, "alice")).pin_hash
    assert stored.startswith("$argon2") and "4711" not in stored

    desk = await _phone(cm, DESK, secure=True)
    other = await _phone(cm, OTHER, secure=False)
    try:
        assert [li.number for li in desk.display.lines.values()] == ["4601"]
        # bad cases first: nothing stored, the phone told why, no restart
        for user_id, pin in (("alice", "0000"), ("nobody", "4711"), ("bob", "1234")):
            result = await _answer(desk, desk.display.mobility_login, user_id, pin)
            assert not result.ok and result.text == "wrong user id or PIN", result
        desk.conn.write([DeviceToUserData(EM_APPLICATION_ID, 0, 0, 9, b"<!DOCTYPE x><emLogin/>")])
        await desk.wait_for(lambda d: d.mobility is not None and d.mobility.text == "not understood", 30)
        result = await _answer(desk, desk.display.mobility_logout)
        assert not result.ok and "nobody is logged in" in result.text
        # a call in progress: the phone refuses to log in (it would restart), call control too
        other.act(other.display.dial, "4601")
        await desk.wait_for(lambda d: any(c.state == CS.RING_IN for c in d.calls.values()), 20)
        desk.act(desk.display.answer)
        await other.wait_for(lambda d: any(c.state == CS.CONNECTED for c in d.calls.values()), 20)
        from ccmsec.wire.sccp_phone import PhoneActionError
        with pytest.raises(PhoneActionError, match="hang up first"):
            desk.display.mobility_login("alice", "4711")
        desk.conn.write([DeviceToUserData(EM_APPLICATION_ID, 0, 0, 10,
                                          b'<emLogin user="alice" pin="4711"/>')])
        await desk.wait_for(lambda d: d.mobility is not None and d.mobility.text == "hang up first", 30)
        other.act(other.display.hang_up)
        await desk.wait_for(lambda d: not d.calls, 20)
        async with cm.svc.db() as session:
            assert (await session.scalars(select(calls_db.MobilityLogin))).all() == []

        # the right PIN: answered, stored, the phone restarted
        result = await _answer(desk, desk.display.mobility_login, "alice", "4711")
        assert result.ok and result.user == "alice" and "4690" in result.text
        await wait_for(lambda: bool(desk.lost), 30)
        await desk.close()
        desk = await _phone(cm, DESK, secure=True)           # it registers again, on TLS
        assert [li.number for li in desk.display.lines.values()] == ["4690"]
        assert cm.cc.registry.entries[DESK].security_mode == "encrypted"   # DEV-2: its own mode
        # the user's number rings at the desk, which keeps its own status
        other.act(other.display.dial, "4690")
        await desk.wait_for(lambda d: any(c.state == CS.RING_IN for c in d.calls.values()), 20)
        desk.act(desk.display.answer)
        await other.wait_for(lambda d: any(c.state == CS.CONNECTED for c in d.calls.values()), 20)
        view = next(v for v in cm.cc.calls.calls() if {lg.device for lg in v.legs} == {DESK, OTHER})
        modes = {lg.device: lg.device_mode for lg in view.legs}
        assert next(lg.user for lg in view.legs if lg.device == DESK) == "alice"
        assert modes == {DESK: "encrypted", OTHER: "non-secure"}, modes
        other.act(other.display.hang_up)
        await desk.wait_for(lambda d: not d.calls, 20)

        # logout at the phone: its own line back, still encrypted
        result = await _answer(desk, desk.display.mobility_logout)
        assert result.ok and result.user == "alice"
        await wait_for(lambda: bool(desk.lost), 30)
        await desk.close()
        desk = await _phone(cm, DESK, secure=True)
        assert [li.number for li in desk.display.lines.values()] == ["4601"]
        assert cm.cc.registry.entries[DESK].security_mode == "encrypted"

        # five wrong PINs: the sixth try is refused even with the right PIN
        for _ in range(5):
            assert not (await _answer(desk, desk.display.mobility_login, "alice", "9999")).ok
        result = await _answer(desk, desk.display.mobility_login, "alice", "4711")
        assert not result.ok and "too many wrong PINs" in result.text

        async with cm.svc.db() as session:
            rows = (await session.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
                                          .where(AuditEntry.outcome == "ok")
                                          .where(AuditEntry.action.like("mobility%")))).all()
        phone_rows = [(a, act) for a, act, d in rows if "via sccp" in (d or "")]
        assert phone_rows == [(f"phone/{DESK}", "mobility.login"), (f"phone/{DESK}", "mobility.logout")]
        assert not any("4711" in (d or "") for _, _, d in rows)
    finally:
        await desk.close()
        await other.close()


async def test_wrong_pins_sent_together_are_limited_like_one_after_another(cm, monkeypatch):
    """Tries sent in one burst must not all pass the wrong-PIN limit before the first is counted:
    of twelve wrong PINs sent at once, call control checks at most five (MAX_FAILURES) and then
    refuses even the right PIN."""
    from ccmsec_callmanager import phone_mobility

    await cm.set_mode("mixed")
    await cm.add_device(DESK, "7970", "encrypted")
    await cm.stub.AddLine(pb.Line(dn="4601", device=DESK), timeout=10)
    await cm.stub.AddMobilityUser(pb.MobilityUser(user_id="alice", dn="4690"), timeout=10)
    await cm.stub.SetMobilityPin(pb.MobilityPinRequest(user_id="alice", pin="4711"), timeout=30)
    checked = []
    real = phone_mobility.pin_matches

    def counting(stored, pin):
        checked.append(pin)
        return real(stored, pin)

    monkeypatch.setattr(phone_mobility, "pin_matches", counting)
    desk = await _phone(cm, DESK, secure=True)
    try:
        mobility = cm.svc.phone_mobility
        refused_before = mobility.refused
        answered = sum(n.startswith("Extension mobility login: refused") for n in desk.display.notifications)
        desk.conn.write([DeviceToUserData(EM_APPLICATION_ID, 0, 0, 100 + i, b'<emLogin user="alice" pin="9999"/>')
                         for i in range(12)])
        await wait_for(lambda: mobility.refused - refused_before == 12, 60)
        # Answered by call control is not yet received by the phone: on a loaded machine the
        # last answers are still on their way, and one arriving after the right PIN is sent would
        # be read as its answer. Wait for all twelve on the phone (bounded) before sending it.
        await desk.wait_for(lambda d: sum(n.startswith("Extension mobility login: refused")
                                          for n in d.notifications) - answered == 12,
                            30, "the twelve answers on the phone")
        assert len(checked) == phone_mobility.MAX_FAILURES, checked
        result = await _answer(desk, desk.display.mobility_login, "alice", "4711")
        assert not result.ok and "too many wrong PINs" in result.text
        assert len(checked) == phone_mobility.MAX_FAILURES
        async with cm.svc.db() as session:
            assert (await session.scalars(select(calls_db.MobilityLogin))).all() == []
    finally:
        await desk.close()
