"""The capf service in process: real NATS, real SQLite (alembic-migrated), real TLS and gRPC/mTLS
on a loopback address of its own. Rules: CHK-2, CERT-3, RST-6, RST-8, DEV-3 (schedule checks)."""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ccmsec.aio.capf import capf_client_run, capf_phone_ssl_context
from ccmsec.pki.tokens import ensure_manufacturer_ca, issue_mic
from ccmsec.runtime.bus import EventBus, make_event
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity, service_identity
from ccmsec.runtime.service import RESTART_EXIT_CODE
from ccmsec.runtime.settings import load_settings
from ccmsec.wire.capf import CapfPhoneSession, PhoneCredentials, Reason
from ccmsec_capf.activation import NOT_ACTIVATED, read_activated
from ccmsec_capf.certcopy import SERVER_ROLES, capf_cer_path
from ccmsec_capf.main import CapfService
from ccmsec.runtime.service import GRPC_PORT_DEFAULT
from ccmsec_proto import callmanager_pb2, callmanager_pb2_grpc
from ccmsec_proto import capf_pb2, capf_pb2_grpc, common_pb2, ctl_provider_pb2, events_pb2
from tests.conftest import free_port
from tests.deviceowner import device_owner, loopback_host
from tests.ownerdb import owner_db

pytestmark = pytest.mark.timeout(60)


class Harness:
    def __init__(self, svc, task, data, stub, channel, events, devices):
        self.svc, self.task, self.data, self.stub, self.channel, self.events = svc, task, data, stub, channel, events
        self.devices = devices  # call control's device look-ups (tests/deviceowner.py)

    async def add_device(self, name: str, model: str = "7960", security_mode: str = "non-secure") -> None:
        # Devices are callmanager's (issue 9 §5): added as callmanager would; CAPF asks it.
        await self.devices.add_device(name, model, security_mode)

    async def enroll(self, phone: PhoneCredentials) -> CapfPhoneSession:
        session = CapfPhoneSession(phone)
        ctx = capf_phone_ssl_context(self.svc.capf_ca.cert)
        await capf_client_run(self.svc.settings.host, self.svc.capf_port, ctx, session, timeout=10)
        return session

    async def events_after(self, mark: int, settle: float = 0.6) -> list[tuple[str, events_pb2.Event]]:
        """The events a rule requires (the owner's audit records: `audits_after`)."""
        await asyncio.sleep(settle)  # let anything else that would be published arrive too
        return [(s, e) for s, e in self.events[mark:] if e.kind != "owner.change"]

    def audits_after(self, mark: int) -> list[tuple[str, str, str, str]]:
        """(action, actor, target, rule) of each owner.change CAPF published (its audit records)."""
        return [(e.owner_change.action, e.owner_change.actor, e.owner_change.target, e.owner_change.rule)
                for _, e in self.events[mark:] if e.kind == "owner.change"]


@pytest.fixture
async def capf(tmp_path, nats_server):
    host, cm_host = loopback_host(), loopback_host()
    settings = load_settings(service="capf", data_dir=tmp_path, host=host, grpc_port=free_port(host),
                             metrics_port=0, nats_url=nats_server, capf_port=free_port(host), shutdown_grace=1.0,
                             peers={"callmanager": cm_host})
    async with device_owner(tmp_path, cm_host, settings.db_url) as devices:
        async for harness in _run_capf(settings, tmp_path, nats_server, host, devices):
            yield harness


async def _run_capf(settings, tmp_path, nats_server, host, devices):
    service_identity(tmp_path, "capf", "capf", host)  # issued before start, as the runner does
    svc = CapfService(settings)
    task = asyncio.create_task(svc.run())
    events: list[tuple[str, events_pb2.Event]] = []
    nc = await nats.connect(nats_server)

    async def collect(msg):
        events.append((msg.subject, events_pb2.Event.FromString(msg.data)))

    await nc.subscribe("ccmsec.>", cb=collect)
    channel = secure_channel(client_identity(tmp_path), host, settings.grpc_port, "capf")
    stub = capf_pb2_grpc.CapfStub(channel)
    deadline = time.monotonic() + 20
    while True:
        assert not task.done(), f"capf service stopped during start: {task.exception() if task.done() else ''}"
        try:
            await stub.Status(common_pb2.Empty(), timeout=1)
            break
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    yield Harness(svc, task, tmp_path, stub, channel, events, devices)
    await channel.close()
    await nc.close()
    svc.request_stop()
    await asyncio.wait_for(task, 10)


def phone_for(h: Harness, device: str, **kw) -> PhoneCredentials:
    return PhoneCredentials(device, capf_certificate=h.svc.capf_ca.cert, **kw)


def schedule_msg(device, op=capf_pb2.CAPF_INSTALL, auth=capf_pb2.CAPF_AUTH_NULL, key="ec256", **kw):
    return capf_pb2.CapfSchedule(device=device, operation=op, auth_mode=auth, key_type=key, **kw)


async def test_chk2_fresh_capf_is_not_activated_and_refuses_sessions_and_schedules(capf):
    """CHK-2: a fresh cluster's CAPF refuses phones (REASON_INFO says why) and schedules."""
    st = await capf.stub.Status(common_pb2.Empty())
    assert st.activated is False
    await capf.add_device("SEP00000000C201")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await capf.stub.ScheduleOperation(schedule_msg("SEP00000000C201"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.value.details() == NOT_ACTIVATED
    session = await capf.enroll(phone_for(capf, "SEP00000000C201"))
    assert session.end_reason == Reason.INVALID_ELEMENT
    assert session.end_info == NOT_ACTIVATED
    assert session.phone.lsc_cert is None
    assert (await capf.stub.GetIssuedLog(capf_pb2.CapfStatusRequest())).entries == []

    st = await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    assert st.activated is True
    assert await read_activated(capf.svc.db) is True  # kept in the publisher database
    await capf.stub.ScheduleOperation(schedule_msg("SEP00000000C201"))
    session = await capf.enroll(phone_for(capf, "SEP00000000C201"))
    assert session.end_reason == Reason.OK and session.phone.lsc_cert is not None

    st = await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=False))
    assert st.activated is False
    session = await capf.enroll(phone_for(capf, "SEP00000000C201"))
    assert session.end_info == NOT_ACTIVATED


async def test_schedule_refuses_7912_unknown_device_past_deadline_and_bad_auth(capf):
    """DEV-3 via check_capf_allowed; unknown device; deadline in the past; auth string rules."""
    await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    await capf.add_device("SEP00000000C912", model="7912")
    await capf.add_device("SEP00000000C960", model="7960")
    cases = [
        (schedule_msg("SEP00000000C912"), grpc.StatusCode.FAILED_PRECONDITION, "DEV-3"),
        (schedule_msg("SEP0000000DEAD0"), grpc.StatusCode.NOT_FOUND, "unknown device"),
        (schedule_msg("SEP00000000C960", deadline_unix=int(time.time()) - 60),
         grpc.StatusCode.INVALID_ARGUMENT, "not in the future"),
        (schedule_msg("SEP00000000C960", auth=capf_pb2.CAPF_AUTH_STRING),
         grpc.StatusCode.INVALID_ARGUMENT, "needs an auth string"),
        (schedule_msg("SEP00000000C960", auth_string="1234"), grpc.StatusCode.INVALID_ARGUMENT, "only goes with"),
        (schedule_msg("SEP00000000C960", key="rsa512"), grpc.StatusCode.INVALID_ARGUMENT, "unknown key type"),
        (capf_pb2.CapfSchedule(device="SEP00000000C960"), grpc.StatusCode.INVALID_ARGUMENT, "no CAPF operation"),
        (schedule_msg("SEP00000000C960", deadline_unix=10**18), grpc.StatusCode.INVALID_ARGUMENT, "deadline"),
    ]
    for request, code, text in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await capf.stub.ScheduleOperation(request)
        assert exc.value.code() == code, (request, exc.value.details())
        assert text in exc.value.details()
    assert (await capf.stub.GetOperations(capf_pb2.CapfStatusRequest())).operations == []
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await capf.stub.GetOperations(capf_pb2.CapfStatusRequest(device="SEP0000000DEAD0"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    # a huge name or one with terminal escapes: quoted escaped and cut (ccmsec/textsafe.py), never
    # a status detail over the ~8 kB that fails the call
    for device in ("X" * 100_000, "SEP\x1b[2J\nFAKE"):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await capf.stub.GetOperations(capf_pb2.CapfStatusRequest(device=device))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND, exc.value
        details = exc.value.details()
        assert details.startswith("unknown device '") and len(details) < 200, details
        assert details.isascii() and details.isprintable(), details


async def test_schedule_publishes_config_changed_and_status_shows_outcomes(capf):
    """A schedule announces config.changed for the device; status lists pending → done / failed."""
    from ccmsec.runtime.metrics import REGISTRY

    def sessions(outcome: str) -> float:
        return REGISTRY.get_sample_value("ccmsec_capf_sessions_total", {"outcome": outcome}) or 0.0

    before = {o: sessions(o) for o in ("ok", "invalid_element")}
    await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    await capf.add_device("SEP00000000C301")
    await capf.add_device("SEP00000000C302")
    mark = len(capf.events)
    state = await capf.stub.ScheduleOperation(schedule_msg(
        "SEP00000000C301", auth=capf_pb2.CAPF_AUTH_STRING, auth_string="246810", key="rsa1024",
        deadline_unix=int(time.time()) + 3600))
    assert state.state == "pending" and state.schedule.auth_string == ""  # never echoed back
    await capf.stub.ScheduleOperation(schedule_msg("SEP00000000C302", auth=capf_pb2.CAPF_AUTH_STRING,
                                                   auth_string="1111"))
    got = await capf.events_after(mark)
    assert [(s, e.config_changed.devices[0]) for s, e in got] == [
        ("ccmsec.capf.config.changed", "SEP00000000C301"),
        ("ccmsec.capf.config.changed", "SEP00000000C302")]
    # Each schedule audited by its owner with the write (issue 9 §5), never with the auth string.
    assert [a[:3] for a in capf.audits_after(mark)] == [
        ("capf.schedule", "cli/cli", "SEP00000000C301"), ("capf.schedule", "cli/cli", "SEP00000000C302")]
    assert not any("246810" in e.owner_change.detail for _, e in capf.events[mark:])

    ok = await capf.enroll(phone_for(capf, "SEP00000000C301", auth_string="246810", auth_mode="string"))
    assert ok.end_reason == Reason.OK
    wrong = await capf.enroll(phone_for(capf, "SEP00000000C302", auth_string="9999", auth_mode="string"))
    assert wrong.end_reason == Reason.INVALID_ELEMENT and wrong.phone.lsc_cert is None
    ops = {o.schedule.device: o for o in (await capf.stub.GetOperations(capf_pb2.CapfStatusRequest())).operations}
    assert ops["SEP00000000C301"].state == "done"
    assert ops["SEP00000000C301"].issued_fingerprint
    assert ops["SEP00000000C302"].state == "pending" and ops["SEP00000000C302"].failed_attempts == 1
    assert "wrong auth string" in ops["SEP00000000C302"].reason
    log = await capf.stub.GetIssuedLog(capf_pb2.CapfStatusRequest(device="SEP00000000C301"))
    assert [e.outcome for e in log.entries] == ["installed"]
    cert = x509.load_der_x509_certificate(log.entries[0].certificate.der)
    assert cert.public_key().public_numbers() == ok.phone.lsc_cert.public_key().public_numbers()
    assert cert.public_key().key_size == 1024

    # Metrics (issue 16): sessions by outcome; operations by state, the LSC's expiry from the database.
    deadline = time.monotonic() + 10
    while sessions("ok") < before["ok"] + 1 or sessions("invalid_element") < before["invalid_element"] + 1:
        assert time.monotonic() < deadline, f"CAPF sessions not counted by outcome: {list(capf.svc.sessions)}"
        await asyncio.sleep(0.1)
    await capf.svc.sample_metrics()
    op = ops["SEP00000000C301"].schedule.operation
    name = capf_pb2.CapfOperation.Name(op).removeprefix("CAPF_").lower()
    gauge = lambda state: REGISTRY.get_sample_value("ccmsec_capf_operations", {"operation": name, "state": state})
    assert (gauge("done"), gauge("pending"), gauge("failed")) == (1.0, 1.0, 0.0)
    assert REGISTRY.get_sample_value("ccmsec_certificate_expiry_timestamp_seconds",
                                     {"kind": "lsc", "name": "earliest"}) == cert.not_valid_after_utc.timestamp()
    assert REGISTRY.get_sample_value("ccmsec_certificate_expiry_timestamp_seconds",
                                     {"kind": "capf", "name": "capf"}) == capf.svc.capf_ca.cert.not_valid_after_utc.timestamp()


async def test_rst8_service_parameter_change_restarts_capf_and_nothing_else(capf):
    """RST-8: a CAPF service parameter change publishes service.restart.capf only; CAPF restarts."""
    mark = len(capf.events)
    reply = await capf.stub.SetServiceParameters(capf_pb2.CapfParametersRequest(values={"max_auth_failures": "3"}))
    assert list(reply.events) == ["service.restart.capf RST-8"]
    assert reply.service["max_auth_failures"] == "3"
    got = await capf.events_after(mark)
    assert [(s, e.service_restart.rule, e.service_restart.role) for s, e in got] == [
        ("ccmsec.capf.service.restart.capf", "RST-8", "capf")]
    assert capf.audits_after(mark) == [("capf.service_parameters", "cli/cli", "capf", "RST-8")]
    # the service itself acts on it: it stops with the restart exit code for the supervisor
    assert await asyncio.wait_for(capf.task, 10) == RESTART_EXIT_CODE


async def test_rst6_enterprise_parameter_change_resets_every_device_and_nothing_else(capf):
    """RST-6: a CAPF enterprise parameter change publishes one device.reset for all devices."""
    mark = len(capf.events)
    reply = await capf.stub.SetEnterpriseParameters(
        capf_pb2.CapfParametersRequest(values={"certificate_validity_days": "90"}))
    assert list(reply.events) == ["device.reset RST-6"]
    got = await capf.events_after(mark)
    assert len(got) == 1
    subject, event = got[0]
    assert subject == "ccmsec.capf.device.reset"
    assert event.device_reset.all and event.device_reset.rule == "RST-6"
    assert capf.audits_after(mark) == [("capf.enterprise_parameters", "cli/cli", "capf", "RST-6")]
    assert event.device_reset.kind == events_pb2.RESET
    assert not capf.task.done()  # enterprise parameters do not restart CAPF
    # and the new validity applies to the next LSC at once
    await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    await capf.add_device("SEP00000000C601")
    await capf.stub.ScheduleOperation(schedule_msg("SEP00000000C601"))
    session = await capf.enroll(phone_for(capf, "SEP00000000C601"))
    lsc = session.phone.lsc_cert
    assert (lsc.not_valid_after_utc - lsc.not_valid_before_utc).days == 90


async def test_parameter_changes_with_bad_names_or_values_are_refused_and_publish_nothing(capf):
    mark = len(capf.events)
    bad = [
        ("SetServiceParameters", {"max_auth_failures": "0"}, "outside 1..20"),
        ("SetServiceParameters", {"nonsense": "1"}, "unknown CAPF parameter"),
        ("SetServiceParameters", {"certificate_validity_days": "30"}, "enterprise parameter"),
        ("SetEnterpriseParameters", {"default_auth_mode": "password"}, "not one of"),
        ("SetEnterpriseParameters", {}, "no parameter given"),
        # a huge name or value is quoted cut (ccmsec/textsafe.py): the refusal still says why
        ("SetServiceParameters", {"n\x1b" + "X" * 100_000: "1"},
         "unknown CAPF parameter 'n\\x1b" + "X" * 75 + "...(99925 more characters)'; known: "),
        ("SetServiceParameters", {"max_auth_failures": "9" * 100_000},
         "'" + "9" * 80 + "...(99920 more characters)' is not a whole number"),
    ]
    for method, values, text in bad:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await getattr(capf.stub, method)(capf_pb2.CapfParametersRequest(values=values))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert text in exc.value.details()
    assert await capf.events_after(mark, settle=0.3) == []
    params = await capf.stub.GetParameters(common_pb2.Empty())
    assert params.service["max_auth_failures"] == "5"


async def test_cert3_ctl_updated_copies_capf_certificate_to_every_server(capf):
    """CERT-3: after ctl.updated each server role holds DATA/servers/<role>/CAPF.cer (DER)."""
    for role in SERVER_ROLES:
        assert not capf_cer_path(capf.data, role).exists()  # not before the CTL client ran
    bus = EventBus(capf.svc.settings.nats_url, "test-ctl-client", role="ctl-provider")
    await bus.connect()
    try:
        await bus.publish(make_event("ctl.updated", "test", ctl_updated=events_pb2.CtlUpdated(version=1)))
        want = capf.svc.capf_ca.cert.public_bytes(serialization.Encoding.DER)
        deadline = time.monotonic() + 10
        while not all(capf_cer_path(capf.data, r).exists() for r in SERVER_ROLES):
            assert time.monotonic() < deadline, "CAPF.cer not copied to every server"
            await asyncio.sleep(0.05)
        for role in SERVER_ROLES:
            assert capf_cer_path(capf.data, role).read_bytes() == want
        # A tampered copy is put right by the next CTL update.
        capf_cer_path(capf.data, "srst").write_bytes(b"tampered")
        await bus.publish(make_event("ctl.updated", "test", ctl_updated=events_pb2.CtlUpdated(version=2)))
        deadline = time.monotonic() + 10
        while capf_cer_path(capf.data, "srst").read_bytes() != want:
            assert time.monotonic() < deadline, "tampered CAPF.cer not replaced"
            await asyncio.sleep(0.05)
    finally:
        await bus.close()
    cert = await capf.stub.GetCapfCertificate(common_pb2.Empty())
    assert cert.der == want and cert.role == common_pb2.ROLE_CAPF


async def test_mic_authentication_uses_manufacturer_ca_created_after_start(capf):
    """MIC auth: the manufacturer CA written after CAPF started is picked up; a foreign MIC is refused."""
    await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    await capf.add_device("SEP00000000C701", model="7970")
    await capf.stub.ScheduleOperation(schedule_msg("SEP00000000C701", auth=capf_pb2.CAPF_AUTH_MIC))
    from ccmsec.pki.ca import create_ca, name, new_key
    foreign = create_ca(name("Foreign CA"), key=new_key("ec256"))
    fake = issue_mic(foreign, "SEP00000000C701", "ec256")
    refused = await capf.enroll(phone_for(capf, "SEP00000000C701", mic_cert=fake.cert, mic_key=fake.key,
                                          auth_mode="mic"))
    assert refused.end_reason == Reason.INVALID_ELEMENT and refused.phone.lsc_cert is None
    mfr = ensure_manufacturer_ca(capf.data / "pki")
    mic = issue_mic(mfr, "SEP00000000C701", "ec256")
    ok = await capf.enroll(phone_for(capf, "SEP00000000C701", mic_cert=mic.cert, mic_key=mic.key, auth_mode="mic"))
    assert ok.end_reason == Reason.OK and ok.phone.lsc_cert is not None


async def test_chk8_check_lists_secure_lsc_only_phones_without_an_lsc(capf):
    """CHK-8: secure 7960s without an LSC are listed missing until CAPF installs one."""
    await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    await capf.add_device("SEP00000000C801", model="7960", security_mode="authenticated")
    await capf.add_device("SEP00000000C802", model="7960", security_mode="non-secure")
    await capf.add_device("SEP00000000C803", model="7970", security_mode="encrypted")  # has a MIC
    reply = await capf.stub.CheckLscs(common_pb2.Empty())
    assert list(reply.missing) == ["SEP00000000C801"] and list(reply.installed) == []
    await capf.stub.ScheduleOperation(schedule_msg("SEP00000000C801"))
    assert (await capf.enroll(phone_for(capf, "SEP00000000C801"))).end_reason == Reason.OK
    reply = await capf.stub.CheckLscs(common_pb2.Empty())
    assert list(reply.missing) == [] and list(reply.installed) == ["SEP00000000C801"]


async def test_devices_are_asked_of_call_control_and_its_absence_is_a_clear_refusal(capf):
    """Issue 9 §5: CAPF looks devices up at their owner (CallManager/GetDevice, ListDevices), never in
    its table. A device only in call control's answer is schedulable; with call control down a
    schedule is refused UNAVAILABLE saying why, and nothing is written or announced; CHK-8 too."""
    await capf.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    await capf.add_device("SEP00000000CA01", model="7960", security_mode="authenticated")
    await capf.stub.ScheduleOperation(schedule_msg("SEP00000000CA01"))
    assert list((await capf.stub.CheckLscs(common_pb2.Empty())).missing) == ["SEP00000000CA01"]

    await capf.devices.stop()  # call control goes away
    mark = len(capf.events)
    await capf.add_device("SEP00000000CA02")  # in the table, but call control cannot vouch for it now
    for call in (capf.stub.ScheduleOperation(schedule_msg("SEP00000000CA02")),
                 capf.stub.CheckLscs(common_pb2.Empty()),
                 capf.stub.GetOperations(capf_pb2.CapfStatusRequest(device="SEP00000000CA02"))):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value.details()
        assert "call control (the devices' owner)" in exc.value.details()
    ops = (await capf.stub.GetOperations(capf_pb2.CapfStatusRequest())).operations
    assert [o.schedule.device for o in ops] == ["SEP00000000CA01"]  # nothing half written
    assert await capf.events_after(mark) == [] and capf.audits_after(mark) == []
    assert capf.task.done() is False  # and CAPF goes on serving


async def test_only_capf_may_look_devices_up_at_call_control(capf):
    """The device look-up RPCs are CAPF's alone (rpc_policy): the CLI's identity is refused
    PERMISSION_DENIED by call control's gate, CAPF's own identity is answered."""
    await capf.add_device("SEP00000000CB01")
    target = (capf.devices.host, GRPC_PORT_DEFAULT)
    async with secure_channel(client_identity(capf.data), *target, "callmanager") as channel:
        stub = callmanager_pb2_grpc.CallManagerStub(channel)
        for call in (stub.GetDevice(callmanager_pb2.DeviceRequest(device="SEP00000000CB01")),
                     stub.ListDevices(callmanager_pb2.DevicesRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await call
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with secure_channel(capf.svc.identity, *target, "callmanager") as channel:
        stub = callmanager_pb2_grpc.CallManagerStub(channel)
        found = await stub.GetDevice(callmanager_pb2.DeviceRequest(device="SEP00000000CB01"))
        assert (found.device, found.model, found.mode) == ("SEP00000000CB01", "7960", common_pb2.NON_SECURE)
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stub.GetDevice(callmanager_pb2.DeviceRequest(device="SEP0000000DEAD0"))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND and "unknown device" in exc.value.details()


async def test_devices_are_listed_in_pages_and_chk8_reads_every_page(capf, monkeypatch):
    """CallManager/ListDevices answers one page by name (a fleet of any size fits gRPC's message
    limit): `after` and `limit` move through it, `more` says a page follows, a limit out of range is
    refused INVALID_ARGUMENT. CAPF's CHK-8 reads every page: a device on the last page is counted."""
    from ccmsec_callmanager import servicer as cm_servicer

    for i in range(5):
        await capf.add_device(f"SEP00000000CC0{i}", security_mode="authenticated" if i != 2 else "non-secure")
    target = (capf.devices.host, GRPC_PORT_DEFAULT)
    async with secure_channel(capf.svc.identity, *target, "callmanager") as channel:
        stub = callmanager_pb2_grpc.CallManagerStub(channel)
        first = await stub.ListDevices(callmanager_pb2.DevicesRequest(limit=2))
        assert [d.device for d in first.devices] == ["SEP00000000CC00", "SEP00000000CC01"] and first.more
        last = await stub.ListDevices(callmanager_pb2.DevicesRequest(after="SEP00000000CC02", limit=2))
        assert [d.device for d in last.devices] == ["SEP00000000CC03", "SEP00000000CC04"] and not last.more
        secure = await stub.ListDevices(callmanager_pb2.DevicesRequest(
            modes=[common_pb2.AUTHENTICATED], after="SEP00000000CC01", limit=1))
        assert [d.device for d in secure.devices] == ["SEP00000000CC03"] and secure.more  # CC02 is not secure
        whole = await stub.ListDevices(callmanager_pb2.DevicesRequest())
        assert len(whole.devices) == 5 and not whole.more
        for limit in (-1, cm_servicer.LIST_DEVICES_MAX + 1):
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.ListDevices(callmanager_pb2.DevicesRequest(limit=limit))
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in exc.value.details()

    monkeypatch.setattr(cm_servicer, "LIST_DEVICES_MAX", 2)  # call control's pages of 2: CAPF must follow them
    assert await capf.svc.devices.secure() == [
        (f"SEP00000000CC0{i}", "7960") for i in (0, 1, 3, 4)]


async def _start_capf(data, nats_url: str, host: str, peers: dict[str, str]):
    settings = load_settings(service="capf", data_dir=data, host=host, grpc_port=free_port(host), metrics_port=0,
                             nats_url=nats_url, capf_port=free_port(host), shutdown_grace=1.0, peers=peers)
    service_identity(data, "capf", "capf", host)
    svc = CapfService(settings)
    task = asyncio.create_task(svc.run())
    channel = secure_channel(client_identity(data), host, settings.grpc_port, "capf")
    stub = capf_pb2_grpc.CapfStub(channel)
    deadline = time.monotonic() + 60
    while True:
        assert not task.done(), f"capf service stopped during start: {task.exception() if task.done() else ''}"
        try:
            await stub.Status(common_pb2.Empty(), timeout=2)
            return svc, task, channel, stub
        except grpc.aio.AioRpcError:
            assert time.monotonic() < deadline, "capf did not start"
            await asyncio.sleep(0.1)


async def _ctl_state(stub, want: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (await stub.Status(common_pb2.Empty(), timeout=5)).details["ctl"] != want:
        assert time.monotonic() < deadline, f"CAPF never learnt ctl={want!r} from the CTL Provider"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(300)
async def test_cert3_after_a_restart_capf_asks_the_ctl_provider_not_the_database(tmp_path, nats_server):
    """CERT-3 after a restart, issue 9 §5: whether a CTL exists is the CTL Provider's state, asked over
    gRPC (`CtlProvider/GetCurrentCtl`), never read from its table. While the provider is down CAPF
    keeps asking and copies nothing; a provider without a CTL gets nothing copied; once it holds a
    CTL, a restarted CAPF copies its certificate to every server."""
    from ccmsec.db.cluster import record_ctl
    from ccmsec.runtime.service import GRPC_PORT_DEFAULT
    from tests.integration.test_ctl_provider_service import _prepare, _start

    await _prepare(tmp_path)
    suffix = f"{random.randint(0, 255)}.{random.randint(2, 250)}"
    provider_host, capf_host = f"127.{random.randint(20, 130)}.{suffix}", f"127.{random.randint(131, 250)}.{suffix}"
    peers = {"ctl-provider": provider_host}
    svc, task, channel, stub = await _start_capf(tmp_path, nats_server, capf_host, peers)
    provider = None
    try:
        assert (await stub.Status(common_pb2.Empty())).details["ctl"] == "unknown"  # nobody answered yet
        provider = await _start(tmp_path, nats_server, provider_host, free_port(provider_host), GRPC_PORT_DEFAULT)
        await _ctl_state(stub, "absent")  # asked again until the provider answered: no CTL
        assert not any(capf_cer_path(tmp_path, r).exists() for r in SERVER_ROLES)
        # The CTL client runs while CAPF is down (no ctl.updated reaches it).
        svc.request_stop()
        await asyncio.wait_for(task, 20)
        await channel.close()
        async with owner_db(svc.settings.db_url, "ctl-provider") as db, db() as s, s.begin():
            await record_ctl(s, content=b"a signed CTL", sha256="00" * 32, signer="sast1", signer_serial="01",
                             records=3, tftp_path="")
        svc, task, channel, stub = await _start_capf(tmp_path, nats_server, capf_host, peers)
        await _ctl_state(stub, "present")
        want = svc.capf_ca.cert.public_bytes(serialization.Encoding.DER)
        assert all(capf_cer_path(tmp_path, r).read_bytes() == want for r in SERVER_ROLES)
    finally:
        svc.request_stop()
        await asyncio.wait_for(task, 20)
        await channel.close()
        if provider is not None:
            p_svc, p_task, p_channel, _ = provider
            await p_channel.close()
            p_svc.request_stop()
            await asyncio.wait_for(p_task, 20)
