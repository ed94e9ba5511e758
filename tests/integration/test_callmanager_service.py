"""The callmanager service in process: real NATS, real SQLite (migrated), real TCP/TLS on
loopback, phones driven with `connect_phone`. Registration decisions per rule, the registry,
resets with progress, the cluster mode (ctl-provider's: read here, its changes audited here), lines
and pools through the one write path (audited), bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket

import grpc
import pytest
from sqlalchemy import select

from ccmsec.aio.sccp import SccpConnectError, SccpRegistrationRejected, connect_phone
from ccmsec.db.admin import AuditEntry
from ccmsec.db.devices import SETTING_CTL_VERSION, SETTING_SECURITY_MODE, Device, set_setting
from ccmsec.db.lines import DevicePool, Line
from ccmsec.db.ownership import CrossOwnerWrite
from ccmsec.runtime.bus import EventBus, make_event
from ccmsec.db.registry import Registration
from ccmsec.pki import ca, tls
from ccmsec.pki.ca import Issued, fingerprint_sha256, load_pair
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.servercert import CERT_FILE
from ccmsec.pki.tokens import ensure_manufacturer_ca, issue_mic
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec.runtime.settings import load_settings
from ccmsec.wire import sccp as s
from ccmsec.runtime.actions import publish_actions
from ccmsec_callmanager.admin.events import BusEvents
from ccmsec_callmanager.main import CallManagerService
from ccmsec.policy.resets import DeviceSecurityModeChanged, HardeningChanged, required_actions
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, events_pb2
from tests.conftest import free_port
from tests.deviceowner import loopback_host
from tests.ownerdb import owner_db

pytestmark = pytest.mark.timeout(60)

PHONE_KEY = ca.new_key()  # one key for every test phone: key generation is the slow part
OTHER_KEY = ca.new_key()


class Cm:
    """A running CallManagerService plus helpers to drive it."""

    def __init__(self, service, task, data):
        self.svc, self.task, self.data = service, task, data
        self.cc = service.callcontrol
        self.host = "127.0.0.1"
        self.ident = client_identity(data)
        self.channel = secure_channel(self.ident, self.host, service.settings.grpc_port, "callmanager")
        self.stub = callmanager_pb2_grpc.CallManagerStub(self.channel)
        self.capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
        self.mfr = ensure_manufacturer_ca(data / "pki")

    @property
    def ccm_cert(self):
        return self.cc.server_certificate

    async def add_device(self, name, model="7970", mode="non-secure", pool=None):
        async with self.svc.db() as session, session.begin():
            session.add(Device(name=name, model=model, security_mode=mode, device_pool=pool))

    async def set_mode(self, mode, ctl=True):
        # The cluster mode is ctl-provider's table: written as ctl-provider (the owner) would.
        async with owner_db(self.svc.settings.db_url, "ctl-provider") as db, db() as session, session.begin():
            if ctl:
                await set_setting(session, SETTING_CTL_VERSION, "1")
            await set_setting(session, SETTING_SECURITY_MODE, mode)
        self.cc.forget_cluster_mode()

    def lsc(self, name, key=PHONE_KEY):
        return Issued(issue_lsc(self.capf, name, key.public_key()), key)

    def phone_ctx(self, mode, *, lsc=None, mic=None):
        return tls.sccp_phone_context(mode, [self.ccm_cert], lsc=lsc, mic=mic)

    async def phone(self, name, *, ctx=None, ip="127.0.0.1", device_type=30006):
        port = self.cc.tls.port if ctx else self.cc.plain.port
        return await connect_phone(self.host, port, s.Register(name, ip, device_type=device_type),
                                   ssl_context=ctx, pinned_ccm_certificates=[self.ccm_cert] if ctx else None)

    async def registered(self, name, **kw):
        phone = await self.phone(name, **kw)
        await phone.wait_registered(5)
        await wait_for(lambda: name in self.cc.registry.entries)
        return phone

    async def refused(self, name, **kw) -> str:
        phone = await self.phone(name, **kw)
        with pytest.raises(SccpRegistrationRejected) as err:
            await phone.wait_registered(5)
        await phone.close()
        assert name not in self.cc.registry.entries
        return err.value.text


async def wait_for(predicate, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _settings(tmp_path, nats_url, **extra):
    return load_settings(service="callmanager", data_dir=tmp_path, host="127.0.0.1",
                         grpc_port=free_port(), metrics_port=0, nats_url=nats_url,
                         sccp_port=free_port(), sccp_tls_port=free_port(), admin_port=free_port(),
                         shutdown_grace=1.0, bus_connect_timeout=10, **extra)


async def start_ctl_provider(data, nats_url, host):
    """The real ctl-provider on `host` at the default gRPC port (where callmanager's settings name
    it): the owner of the cluster mode that call control follows (issue 9 §5)."""
    from ccmsec.runtime.service import GRPC_PORT_DEFAULT
    from tests.integration.test_ctl_provider_service import _start as ctl_start

    return await ctl_start(data, nats_url, host, free_port(host), GRPC_PORT_DEFAULT)


async def stop_ctl_provider(provider) -> None:
    svc, task, channel, _ = provider
    await channel.close()
    if not task.done():
        svc.request_stop()
        await asyncio.wait_for(task, 10)


async def _start(settings):
    svc = CallManagerService(settings)
    task = asyncio.create_task(svc.run())
    # Serving once gRPC health says so: the service sets it after setup, the gRPC start and its
    # built-in subscriptions (counting subscriptions raced with setup's own ones).
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = secure_channel(client_identity(settings.data_dir), settings.host, settings.grpc_port,
                             "callmanager")
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            if task.done():
                task.result()  # raise the start-up error
                raise AssertionError("callmanager stopped during start")
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "callmanager did not start serving"
            await asyncio.sleep(0.05)
    finally:
        await channel.close()
    return svc, task


@pytest.fixture(scope="module")
def pki_template(tmp_path_factory):
    """Keys are the slow part of a start: make the cluster's PKI once and copy it per test."""
    from ccmsec.pki.lsc import ensure_capf_ca
    from ccmsec.runtime.identity import service_identity
    from ccmsec_callmanager.callcontrol import load_pki
    data = tmp_path_factory.mktemp("pki-template")
    service_identity(data, "callmanager", "callmanager", "127.0.0.1")
    client_identity(data)
    ensure_capf_ca(data / "pki")
    load_pki(data, "callmanager", "127.0.0.1")
    return data


@contextlib.asynccontextmanager
async def running_cm(tmp_path, nats_server, pki_template, **extra):
    """A callmanager (and the ctl-provider it follows) on `tmp_path`; `extra` settings."""
    import shutil
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    ctl_host = loopback_host()
    provider = await start_ctl_provider(tmp_path, nats_server, ctl_host)
    svc, task = await _start(_settings(tmp_path, nats_server, peers={"ctl-provider": ctl_host}, **extra))
    handle = Cm(svc, task, tmp_path)
    handle.provider, handle.ctl_host = provider, ctl_host
    try:
        yield handle
    finally:
        await handle.channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)
        await stop_ctl_provider(provider)


@pytest.fixture
async def cm(tmp_path, nats_server, pki_template):
    async with running_cm(tmp_path, nats_server, pki_template) as handle:
        yield handle


@pytest.mark.parametrize("owns_process", [False, True])
async def test_garbage_collection_is_tuned_only_when_the_service_owns_its_process(
        tmp_path, nats_server, pki_template, monkeypatch, owns_process):
    """runtime/gcpolicy.py: callmanager freezes what is alive after set-up and spaces full
    collections out when `run_service` owns the process (owns_process); a host running it
    in-process — this test run — keeps its collector as it was. The policy's call is recorded
    here instead of made: freezing this whole test process would change every later test's
    collector (the policy itself is tests/unit/test_gcpolicy.py's)."""
    import gc
    import shutil

    from ccmsec.runtime import gcpolicy

    calls = []
    monkeypatch.setattr(gcpolicy, "tune_for_long_lived_connections", lambda: calls.append("tuned") or 0)
    monkeypatch.setattr(CallManagerService, "owns_process", owns_process)
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    ctl_host = loopback_host()
    provider = await start_ctl_provider(tmp_path, nats_server, ctl_host)
    try:
        svc, task = await _start(_settings(tmp_path, nats_server, peers={"ctl-provider": ctl_host}))
        svc.request_stop()
        await asyncio.wait_for(task, 10)
    finally:
        await stop_ctl_provider(provider)
    assert calls == (["tuned"] if owns_process else [])
    assert (gc.get_threshold(), gc.get_freeze_count()) == (threshold, frozen)


class BusRecorder:
    def __init__(self, url):
        self.url = url
        self.events: list[events_pb2.Event] = []

    async def __aenter__(self):
        import nats
        self.nc = await nats.connect(self.url)

        async def on(msg):
            self.events.append(events_pb2.Event.FromString(msg.data))
        await self.nc.subscribe("ccmsec.>", cb=on)
        await self.nc.flush()  # the subscription is live on the server before we publish
        return self

    async def __aexit__(self, *exc):
        await self.nc.close()

    def resets_and_restarts(self):
        out = []
        for e in self.events:
            if e.kind == "device.reset":
                d = e.device_reset
                out.append(("device.reset", d.rule, d.all, tuple(d.devices), d.server, d.kind))
            elif e.kind == "service.restart":
                r = e.service_restart
                out.append(("service.restart", r.rule, r.role))
        return out


# -- CERT-5, AUTH-2 -------------------------------------------------------------------------------

async def test_cert5_ccmserver_cer_created_once_and_presented_on_2443(cm):
    cert_path = cm.data / "servers" / "callmanager" / CERT_FILE
    assert cert_path.exists()
    await cm.set_mode("mixed")
    await cm.add_device("SEP00000000C5E5", "7970", "encrypted")
    phone = await cm.registered("SEP00000000C5E5", ctx=cm.phone_ctx("encrypted", lsc=cm.lsc("SEP00000000C5E5")))
    der = phone.ssl_object.getpeercert(binary_form=True)
    assert der == cert_path.read_bytes()  # the very certificate the CTL lists
    await phone.close()
    from ccmsec_callmanager.callcontrol import load_pki
    again, _ = load_pki(cm.data, "callmanager", "127.0.0.1")
    assert fingerprint_sha256(again.cert) == fingerprint_sha256(cm.ccm_cert)  # never re-issued


async def test_cert5_the_node_answers_the_ctl_provider_with_the_certificate_it_presents_on_2443(cm):
    """CallManager/GetServerCertificate on the running service: the certificate this node presents
    to phones (ccmserver.cer, DER), for the CTL Provider's record of it; any other caller — the
    administrator's command line, another service — is refused with PERMISSION_DENIED."""
    from ccmsec.runtime.identity import service_identity

    provider = service_identity(cm.data, "ctl-provider", "ctl-provider", cm.ctl_host)
    async with secure_channel(provider, cm.host, cm.svc.settings.grpc_port, "callmanager") as ch:
        reply = await callmanager_pb2_grpc.CallManagerStub(ch).GetServerCertificate(common_pb2.Empty(), timeout=5)
    assert reply.der == (cm.data / "servers" / "callmanager" / CERT_FILE).read_bytes()
    assert reply.fingerprint_sha256 == fingerprint_sha256(cm.ccm_cert)
    assert reply.role == common_pb2.ROLE_CCM and reply.dns_name == "callmanager"
    other = service_identity(cm.data, "srst", "srst", "127.0.0.1")
    for caller, channel in (("cli", cm.channel), ("srst", None)):
        async with contextlib.AsyncExitStack() as stack:
            if channel is None:
                channel = await stack.enter_async_context(
                    secure_channel(other, cm.host, cm.svc.settings.grpc_port, "callmanager"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await callmanager_pb2_grpc.CallManagerStub(channel).GetServerCertificate(common_pb2.Empty(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, caller
        assert "may not call /ccmsec.v1.CallManager/GetServerCertificate" in refused.value.details()


# -- MODE-1 / MODE-4 ---------------------------------------------------------------------------------

async def test_mode4_unknown_device_auto_registers_in_non_secure_cluster(cm):
    phone = await cm.registered("SEP0000000A0701", device_type=8)  # a 7940
    entry = cm.cc.registry.get("SEP0000000A0701")
    assert entry.security_mode == "non-secure" and entry.certificate_kind == ""
    async with cm.svc.db() as session:
        row = await session.scalar(select(Device).where(Device.name == "SEP0000000A0701"))
    assert row.model == "7940" and row.security_mode == "non-secure"
    assert row.description == "auto-registered"
    regs = (await cm.stub.GetRegistrations(pb.RegistrationsRequest(), timeout=5)).registrations
    assert [r.device for r in regs] == ["SEP0000000A0701"]
    assert regs[0].mode == common_pb2.NON_SECURE and regs[0].server == "callmanager"
    assert regs[0].transport_port == cm.cc.plain.port
    await phone.close()


async def test_mode4_unknown_device_refused_in_mixed_mode(cm):
    await cm.set_mode("mixed")
    text = await cm.refused("SEP0000000A0702")
    assert text == "MODE-4: unknown SEP0000000A0702"  # the whole name fits the phone's field
    refusals = (await cm.stub.GetRefusals(common_pb2.Empty(), timeout=5)).refusals
    assert "auto-registration is off" in refusals[-1].reason
    async with cm.svc.db() as session:
        assert await session.scalar(select(Device).where(Device.name == "SEP0000000A0702")) is None


# -- DEV-1 / AUTH-7 / ENC-1 / CERT-2 / AUTH-2 in mixed mode -------------------------------------------

async def test_dev1_each_mode_registers_on_its_own_transport(cm):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0001", "7960", "non-secure")
    await cm.add_device("SEP0000000B0002", "7960", "authenticated")
    await cm.add_device("SEP0000000B0003", "7970", "encrypted")
    plain = await cm.registered("SEP0000000B0001", device_type=7)
    auth = await cm.registered("SEP0000000B0002", device_type=7,
                               ctx=cm.phone_ctx("authenticated", lsc=cm.lsc("SEP0000000B0002")))
    mic = issue_mic(cm.mfr, "SEP0000000B0003")
    enc = await cm.registered("SEP0000000B0003", ctx=cm.phone_ctx("encrypted", mic=mic))
    e = cm.cc.registry.entries
    assert e["SEP0000000B0001"].security_mode == "non-secure" and e["SEP0000000B0001"].cipher == ""
    assert e["SEP0000000B0002"].cipher.startswith("NULL") and e["SEP0000000B0002"].certificate_kind == "LSC"
    assert "AES" in e["SEP0000000B0003"].cipher and e["SEP0000000B0003"].certificate_kind == "MIC"
    assert e["SEP0000000B0003"].certificate_fingerprint == fingerprint_sha256(mic.cert)
    await cm.cc.registry.mirror.flush()
    async with cm.svc.db() as session:
        rows = {r.device: r for r in (await session.scalars(select(Registration))).all()}
    assert rows["SEP0000000B0002"].security_mode == "authenticated"
    assert rows["SEP0000000B0003"].certificate_kind == "MIC"
    for p in (plain, auth, enc):
        await p.close()


async def test_dev1_authenticated_or_encrypted_device_on_2000_refused(cm):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0010", "7960", "authenticated")
    await cm.add_device("SEP0000000B0011", "7970", "encrypted")
    assert (await cm.refused("SEP0000000B0010", device_type=7)).startswith("DEV-1")
    assert (await cm.refused("SEP0000000B0011")).startswith("DEV-1")


async def test_auth7_dev1_authenticated_device_over_an_aes_suite_refused(cm):
    """AUTH-7 / DEV-1 on the running service: a device configured *authenticated* must use TLS
    with a NULL cipher; the same phone, with a valid LSC, offering only AES suites (the encrypted
    profile) is refused with the rule named, is not registered — then registers over NULL."""
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0030", "7960", "authenticated")
    lsc = cm.lsc("SEP0000000B0030")
    aes = cm.phone_ctx("encrypted", lsc=lsc)
    text = await cm.refused("SEP0000000B0030", device_type=7, ctx=aes)
    assert text.startswith("DEV-1: device is configured aut"), text   # RegisterReject's text is short
    refusal = [r for r in cm.cc.registry.refusals if r.device == "SEP0000000B0030"][-1]
    assert refusal.reason.startswith("DEV-1") and "authenticated" in refusal.reason, refusal.reason
    ok = await cm.registered("SEP0000000B0030", device_type=7, ctx=cm.phone_ctx("authenticated", lsc=lsc))
    entry = cm.cc.registry.entries["SEP0000000B0030"]
    assert entry.cipher.startswith("NULL") and entry.security_mode == "authenticated"
    await ok.close()


async def test_enc1_encrypted_device_over_null_cipher_refused(cm):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0020", "7970", "encrypted")
    ctx = cm.phone_ctx("authenticated", lsc=cm.lsc("SEP0000000B0020"))
    assert (await cm.refused("SEP0000000B0020", ctx=ctx)).startswith("ENC-1")


async def test_auth2_certificate_of_another_device_refused(cm):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0030", "7970", "encrypted")
    ctx = cm.phone_ctx("encrypted", lsc=cm.lsc("SEP0000000B0031"))  # a valid LSC, wrong device
    text = await cm.refused("SEP0000000B0030", ctx=ctx)
    assert text.startswith("AUTH-2")
    reasons = [r.reason for r in (await cm.stub.GetRefusals(common_pb2.Empty(), timeout=5)).refusals]
    assert any("SEP0000000B0031" in r for r in reasons)


async def test_cert2_certificate_from_unknown_ca_refused_at_handshake(cm):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0040", "7970", "encrypted")
    rogue = ca.create_ca(ca.name("Rogue CA"))
    wrong = ca.issue(rogue, ca.name("SEP0000000B0040"), PHONE_KEY.public_key(), server=False, client=True)
    ctx = cm.phone_ctx("encrypted", lsc=Issued(wrong, PHONE_KEY))
    with pytest.raises((SccpConnectError, SccpRegistrationRejected)):
        phone = await cm.phone("SEP0000000B0040", ctx=ctx)
        try:
            await phone.wait_registered(3)
        finally:
            await phone.close()
    assert "SEP0000000B0040" not in cm.cc.registry.entries


async def test_dev3_mode_the_model_cannot_do_refused(cm):
    await cm.set_mode("mixed")
    # A row the admin API would refuse (it checks DEV-3 too), written behind its back.
    await cm.add_device("SEP0000000B0050", "7912", "authenticated")
    ctx = cm.phone_ctx("authenticated", lsc=cm.lsc("SEP0000000B0050"))
    assert (await cm.refused("SEP0000000B0050", ctx=ctx, device_type=30007)).startswith("DEV-3")
    # Configured as a 7960, but the phone says it is a 7912 (device type 30007).
    await cm.add_device("SEP0000000B0051", "7960", "encrypted")
    ctx = cm.phone_ctx("encrypted", lsc=cm.lsc("SEP0000000B0051"))
    assert (await cm.refused("SEP0000000B0051", ctx=ctx, device_type=30007)).startswith("DEV-3")


async def test_mode7_translated_address_in_mixed_mode_flagged_and_warned(cm, caplog):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000B0060", "7960", "non-secure")
    await cm.add_device("SEP0000000B0061", "7960", "non-secure")
    with caplog.at_level(logging.WARNING, logger="ccmsec.callmanager"):
        natted = await cm.registered("SEP0000000B0060", ip="10.20.30.40", device_type=7)
    direct = await cm.registered("SEP0000000B0061", device_type=7)
    assert cm.cc.registry.get("SEP0000000B0060").nat_suspected
    assert not cm.cc.registry.get("SEP0000000B0061").nat_suspected
    assert any("MODE-7" in r.getMessage() for r in caplog.records)
    reg = (await cm.stub.GetRegistrations(pb.RegistrationsRequest(device="SEP0000000B0060"), timeout=5)).registrations
    assert reg[0].nat_suspected and reg[0].reported_address == "10.20.30.40"
    await natted.close()
    await direct.close()


async def test_dev2_shared_line_keeps_each_devices_security_status(cm):
    await cm.set_mode("mixed")
    await cm.add_device("SEP0000000D0001", "7970", "encrypted")
    await cm.add_device("SEP0000000D0002", "7960", "non-secure")
    for dev in ("SEP0000000D0001", "SEP0000000D0002"):
        await cm.stub.AddLine(pb.Line(dn="1000", device=dev), timeout=5)
    enc = await cm.registered("SEP0000000D0001", ctx=cm.phone_ctx("encrypted", lsc=cm.lsc("SEP0000000D0001")))
    plain = await cm.registered("SEP0000000D0002", device_type=7)
    lines = (await cm.stub.GetLines(pb.LinesRequest(dn="1000"), timeout=5)).lines
    assert sorted(line.device for line in lines) == ["SEP0000000D0001", "SEP0000000D0002"]
    regs = {r.device: r.mode for r in (await cm.stub.GetRegistrations(pb.RegistrationsRequest(), timeout=5)).registrations}
    assert regs == {"SEP0000000D0001": common_pb2.ENCRYPTED, "SEP0000000D0002": common_pb2.NON_SECURE}
    await enc.close()
    await plain.close()


# -- resets --------------------------------------------------------------------------------------

async def _reregister_on_reset(cm, phone, name, **kw):
    event = await phone.next_event(s.ResetRequested, timeout=5)
    await phone.close()
    return event, await cm.registered(name, **kw)


def _metric(name: str, **labels) -> float | None:
    """A sample as the service's /metrics endpoint shows it (scrape-time gauges included)."""
    from ccmsec.runtime.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


async def test_reset_named_device_reaches_only_it_and_progress_completes(cm):
    a = await cm.registered("SEP0000000E0001")
    b = await cm.registered("SEP0000000E0002")
    in_flight = lambda: _metric("ccmsec_phone_resets_in_flight", node="callmanager")  # noqa: E731
    sent_before = _metric("ccmsec_phone_resets_sent_total", node="callmanager", type="reset") or 0
    assert in_flight() == 0
    reply = await cm.stub.ResetDevices(pb.ResetDevicesRequest(devices=["SEP0000000E0001"]), timeout=5)
    assert reply.targeted == 1
    event = await a.next_event(s.ResetRequested, timeout=5)
    assert event.reset_type == s.ResetType.RESET
    progress = await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=reply.request_id), timeout=5)
    assert progress.reset_sent == 1 and not progress.complete
    assert list(progress.not_back) == ["SEP0000000E0001"]
    # issue 16: the reset is in flight until the phone registers again, and counted as sent
    assert in_flight() == 1
    assert _metric("ccmsec_phone_resets_sent_total", node="callmanager", type="reset") == sent_before + 1
    await a.close()
    a = await cm.registered("SEP0000000E0001")
    progress = await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=reply.request_id), timeout=5)
    assert progress.complete and progress.back == 1 and not progress.not_back
    assert in_flight() == 0
    with pytest.raises(asyncio.TimeoutError):
        await b.next_event(s.ResetRequested, timeout=0.3)  # the other phone was left alone
    await a.close()
    await b.close()


async def test_restart_flag_sends_reset_type_2(cm):
    a = await cm.registered("SEP0000000E0010")
    await cm.stub.ResetDevices(pb.ResetDevicesRequest(devices=["SEP0000000E0010"], restart=True), timeout=5)
    event = await a.next_event(s.ResetRequested, timeout=5)
    assert event.reset_type == s.ResetType.RESTART
    await a.close()


async def test_rst9_reset_devices_per_server_and_chk13_reset_all(cm, nats_server):
    names = [f"SEP0000000E002{i}" for i in range(3)]
    phones = {n: await cm.registered(n) for n in names}
    async with BusRecorder(nats_server) as rec:
        other = await cm.stub.ResetDevices(pb.ResetDevicesRequest(server="callmanager-sub1"), timeout=5)
        assert other.targeted == 0
        mine = await cm.stub.ResetDevices(pb.ResetDevicesRequest(server="callmanager"), timeout=5)
        assert mine.targeted == 3
        for n in names:
            phones[n] = (await _reregister_on_reset(cm, phones[n], n))[1]
        progress = await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=mine.request_id), timeout=5)
        assert progress.complete and progress.back == 3 and progress.reset_sent == 3
        everyone = await cm.stub.ResetDevices(pb.ResetDevicesRequest(all=True), timeout=5)
        assert everyone.targeted == 3
        for n in names:
            phones[n] = (await _reregister_on_reset(cm, phones[n], n))[1]
        await asyncio.sleep(0.2)
    rows = rec.resets_and_restarts()
    assert rows == [("device.reset", "RST-9", False, (), "callmanager-sub1", events_pb2.RESET),
                    ("device.reset", "RST-9", False, (), "callmanager", events_pb2.RESET),
                    ("device.reset", "CHK-13", True, (), "", events_pb2.RESET)]
    for p in phones.values():
        await p.close()


async def test_reset_targets_count_this_nodes_registry_and_other_nodes_rows_by_name(cm):
    """ResetDevices(all / server) counts its targets from names only (this node's live registry,
    the other nodes' mirrored rows): a node's own mirrored rows are not counted twice, another
    node's are counted for all and for that server only."""
    import datetime as dt

    from ccmsec.db import registry as registry_db

    phone = await cm.registered("SEP0000000E0050")
    row = {"model": "7960", "security_mode": "non-secure", "address": "127.0.0.1:40000",
           "reported_address": "127.0.0.1", "nat_suspected": False, "transport_port": 2000, "cipher": "",
           "certificate_fingerprint": "", "certificate_kind": "", "since": dt.datetime.now(dt.timezone.utc)}
    async with cm.svc.db() as session, session.begin():
        await registry_db.apply_changes(session, "callmanager-sub1",
                                        [{"device": d, **row} for d in ("SEP0000000E0051", "SEP0000000E0052")], [])
    await cm.cc.registry.mirror.flush()   # this node's own row is in the table too
    async with cm.svc.db() as session:
        assert await registry_db.registered_names(session, except_node="callmanager") == [
            "SEP0000000E0051", "SEP0000000E0052"]
        assert await registry_db.registered_names(session, node="callmanager") == ["SEP0000000E0050"]
        assert [r.device for r in await registry_db.list_registrations(session, except_node="callmanager")] == [
            "SEP0000000E0051", "SEP0000000E0052"]
    other = await cm.stub.ResetDevices(pb.ResetDevicesRequest(server="callmanager-sub1"), timeout=5)
    assert other.targeted == 2
    everyone = await cm.stub.ResetDevices(pb.ResetDevicesRequest(all=True), timeout=5)
    assert everyone.targeted == 3
    progress = await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=everyone.request_id), timeout=5)
    assert progress.targeted == 3
    await phone.close()


async def test_reset_progress_names_devices_that_do_not_come_back(cm):
    a = await cm.registered("SEP0000000E0030")
    b = await cm.registered("SEP0000000E0031")
    reply = await cm.stub.ResetDevices(pb.ResetDevicesRequest(all=True), timeout=5)
    _, a = await _reregister_on_reset(cm, a, "SEP0000000E0030")
    await b.next_event(s.ResetRequested, timeout=5)
    await b.close()  # b stays down
    progress = await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=reply.request_id), timeout=5)
    assert not progress.complete and list(progress.not_back) == ["SEP0000000E0031"]
    assert progress.targeted == 2 and progress.reset_sent == 2 and progress.back == 1
    await a.close()


async def test_reset_of_phones_already_gone_when_the_event_is_handled_completes_when_they_return(cm, monkeypatch):
    """Issue 13: phone-sim handles the same `device.reset` itself and reboots its phone; when it is
    first (seen on the publisher just restarted by a fail-back, whose first event is handled tens
    of ms later than phone-sim's), the phone has left this node before the node looks, so no Reset
    is sent. Its registering here afterwards is its coming back — before, `--wait` ran to its
    timeout with `0/1 reset sent` though the phone was back. The bad case: a phone that left and
    does not register again stays not back; a registration older than the event does not count."""
    a = await cm.registered("SEP0000000E0040")
    b = await cm.registered("SEP0000000E0041")
    looked = asyncio.Event()
    targets = cm.cc.targets

    def phones_gone_first(**kw):
        # The order phone-sim wins in, held deterministic: both phones drop just before the look.
        for name in ("SEP0000000E0040", "SEP0000000E0041"):
            cm.cc.registry.entries[name].connection.close()
        looked.set()
        return targets(**kw)
    monkeypatch.setattr(cm.cc, "targets", phones_gone_first)
    handled = cm.svc.events_handled
    reply = await cm.stub.ResetDevices(pb.ResetDevicesRequest(devices=["SEP0000000E0040", "SEP0000000E0041"]),
                                       timeout=5)
    assert reply.targeted == 2
    await asyncio.wait_for(looked.wait(), 5)
    await wait_for(lambda: cm.svc.events_handled > handled)
    monkeypatch.setattr(cm.cc, "targets", targets)

    def progress():
        return cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=reply.request_id), timeout=5)
    before = await progress()
    assert before.reset_sent == 0 and before.back == 0 and list(before.not_back) == ["SEP0000000E0040",
                                                                                    "SEP0000000E0041"]
    await a.close()
    await b.close()
    a = await cm.registered("SEP0000000E0040")        # rebooted by phone-sim: registers again
    after = await progress()
    assert after.back == 1 and list(after.not_back) == ["SEP0000000E0041"] and not after.complete
    b = await cm.registered("SEP0000000E0041")
    after = await progress()
    assert after.complete and after.back == 2 and after.reset_sent == 0
    with pytest.raises(asyncio.TimeoutError):
        await a.next_event(s.ResetRequested, timeout=0.3)  # nothing sent twice
    await a.close()
    await b.close()


async def test_reset_request_validation(cm):
    for bad in (pb.ResetDevicesRequest(), pb.ResetDevicesRequest(all=True, server="x"),
                pb.ResetDevicesRequest(devices=["SEP12"])):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cm.stub.ResetDevices(bad, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # RST-9 names a call-control node: the SRST reference (its phones in fallback) or a subscriber
    # that cannot exist is refused, nothing published
    for server in ("srst", "callmanager-sub9", "localhost"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cm.stub.ResetDevices(pb.ResetDevicesRequest(server=server), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"server '{server}' is no call-control node" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id="nope"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no reset request 'nope' on callmanager"
    # a huge id or one with terminal escapes and a newline: quoted escaped and bounded (a status
    # detail over ~8 kB failed the call instead of carrying the refusal)
    for bad, quoted in (("x" * 100_000, "x" * 80 + "...(99920 more characters)"),
                        ("a\x1b[2J\nFAKE", "a\\x1b[2J\\nFAKE")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cm.stub.GetResetProgress(pb.ResetProgressRequest(request_id=bad), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value
        assert err.value.details() == f"no reset request '{quoted}' on callmanager"
    # a validator's refusal quotes the bad value cut and still says what a valid one is
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cm.stub.AddDevicePool(pb.DevicePool(name="P" * 100_000, cm_group=["cm1"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert err.value.details() == ("device pool name '" + "P" * 80 + "...(99920 more characters)': "
                                   "1-64 of letters, digits, ' _.-'")
    # a name that is no device (a typo): refused, as by the API, not "reset requested for 1"
    await cm.add_device("SEP0000000E0050")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cm.stub.ResetDevices(pb.ResetDevicesRequest(devices=["SEP0000000E0050", "SEP0000000EFFFF"]),
                                   timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "no device named SEP0000000EFFFF"


async def test_rst9_a_reset_on_a_node_the_cluster_does_not_run_is_not_found_and_publishes_nothing(
        tmp_path, nats_server, pki_template):
    """RST-9 over gRPC (`ccmsec device reset --server`): a well-formed node name this cluster does
    not run (`callmanager-sub3` beside the publisher and callmanager-sub1, as
    CCMSEC_CLUSTER_CALL_CONTROL_NODES lists them — compose and the local runner both set it) was
    accepted, published, and reset nothing. Now NOT_FOUND naming the nodes there are: nothing
    published, nothing queued in the outbox, nothing tracked; the nodes it runs are still reset."""
    from ccmsec.db.outbox import OutboxRow

    async with running_cm(tmp_path, nats_server, pki_template,
                          cluster_call_control_nodes=["callmanager", "callmanager-sub1"]) as cm:
        tracked = set(cm.cc.registry.resets)
        async with BusRecorder(nats_server) as rec:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cm.stub.ResetDevices(pb.ResetDevicesRequest(server="callmanager-sub3"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == ("server 'callmanager-sub3' is no node of this cluster: its "
                                           "call-control nodes are callmanager, callmanager-sub1; a reset "
                                           "on it would reach no phone")
            assert set(cm.cc.registry.resets) == tracked, "a refused request is not tracked"
            async with cm.svc.db() as session:
                queued = (await session.scalars(select(OutboxRow.kind))).all()
            assert "device.reset" not in queued, "a refused request queues nothing"
            ok = await cm.stub.ResetDevices(pb.ResetDevicesRequest(server="callmanager-sub1"), timeout=5)
            assert ok.targeted == 0
            await asyncio.sleep(0.3)
        assert rec.resets_and_restarts() == [("device.reset", "RST-9", False, (), "callmanager-sub1",
                                              events_pb2.RESET)]


async def test_rst9_a_service_run_alone_checks_only_the_node_names_form(cm, nats_server):
    """RST-9: without CCMSEC_CLUSTER_CALL_CONTROL_NODES (a service run alone) which nodes exist is
    not known: a well-formed subscriber name is taken (a malformed one is still refused:
    test_reset_request_validation)."""
    ok = await cm.stub.ResetDevices(pb.ResetDevicesRequest(server="callmanager-sub3"), timeout=5)
    assert ok.request_id and ok.targeted == 0


async def test_rst1_rst2_admin_changes_reset_exactly_that_device(cm, nats_server):
    a = await cm.registered("SEP0000000E0040")
    b = await cm.registered("SEP0000000E0041")
    async with BusRecorder(nats_server) as rec:
        # RST-1 through the policy table, RST-2 through the admin API's publisher adapter.
        await publish_actions(cm.svc.publish, required_actions(DeviceSecurityModeChanged("SEP0000000E0040")))
        ev = await a.next_event(s.ResetRequested, timeout=5)
        assert ev.reset_type == s.ResetType.RESET
        await a.close()
        a = await cm.registered("SEP0000000E0040")
        await BusEvents(cm.svc.publish).publish("device.reset", None, {"device_reset": events_pb2.DeviceReset(
            devices=["SEP0000000E0040"], kind=events_pb2.RESET, rule="RST-2")})
        await a.next_event(s.ResetRequested, timeout=5)
        await asyncio.sleep(0.2)
    assert rec.resets_and_restarts() == [
        ("device.reset", "RST-1", False, ("SEP0000000E0040",), "", events_pb2.RESET),
        ("device.reset", "RST-2", False, ("SEP0000000E0040",), "", events_pb2.RESET)]
    assert required_actions(HardeningChanged("x"))[0].rule_id == "RST-2"
    with pytest.raises(asyncio.TimeoutError):
        await b.next_event(s.ResetRequested, timeout=0.3)
    await a.close()
    await b.close()


async def test_cluster_mode_is_ctl_providers_callmanager_only_reads_and_audits_it(cm, nats_server):
    """Issue 9 §5: the cluster mode has one owner, ctl-provider. Call control has no door to change
    it any more (the RPC is gone: UNIMPLEMENTED), cannot write it (its database writes are guarded:
    refused, nothing written), reads it (MODE-4 decisions) and records ctl-provider's change in the
    audit log it owns, with who asked (RST-3 events themselves: tests/integration/
    test_ctl_provider_service.py)."""
    set_mode = cm.channel.unary_unary("/ccmsec.v1.CallManager/SetClusterMode",
                                      request_serializer=lambda m: m.SerializeToString(),
                                      response_deserializer=pb.ClusterModeReply.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await set_mode(pb.ClusterModeReply(mode=common_pb2.CLUSTER_MIXED), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=5)).mode == common_pb2.CLUSTER_NON_SECURE
    await cm.set_mode("non-secure")  # ctl-provider has started once: its table exists (MODE-1's value)
    with pytest.raises(CrossOwnerWrite, match="callmanager may not write table 'cluster_settings'.*ctl-provider"):
        async with cm.svc.db() as session, session.begin():
            await set_setting(session, SETTING_SECURITY_MODE, "mixed")
    assert (await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=5)).mode == common_pb2.CLUSTER_NON_SECURE
    await cm.set_mode("mixed")  # as ctl-provider stores it
    reply = await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=5)
    assert reply.mode == common_pb2.CLUSTER_MIXED and reply.ctl_present
    assert await cm.cc.cluster_mode() == "mixed"
    bus = EventBus(nats_server, "test-ctl-provider", role="ctl-provider")
    await bus.connect()
    try:
        await bus.publish(make_event("mode.changed", "ctl-provider", mode_changed=events_pb2.SecurityModeChanged(
            mode=common_pb2.CLUSTER_MIXED, previous=common_pb2.CLUSTER_NON_SECURE, actor="cli/cli",
            rule="MODE-2")))
    finally:
        await bus.close()

    async def audited():
        async with cm.svc.db() as session:
            return (await session.scalars(select(AuditEntry).where(AuditEntry.action == "cluster.mode"))).all()

    deadline = asyncio.get_running_loop().time() + 30  # generous: the machine is shared
    while not (rows := await audited()):
        assert asyncio.get_running_loop().time() < deadline, "mode change never audited"
        await asyncio.sleep(0.05)
    assert [(r.actor, r.rule, r.outcome) for r in rows] == [("cli/cli", "MODE-2", "ok")]
    assert "'non-secure' -> 'mixed'" in rows[0].detail and "ctl-provider" in rows[0].detail


async def _mode_event(nats_url, mode, previous):
    bus = EventBus(nats_url, "test-ctl-provider", role="ctl-provider")
    await bus.connect()
    try:
        await bus.publish(make_event("mode.changed", "ctl-provider", mode_changed=events_pb2.SecurityModeChanged(
            mode=mode, previous=previous, actor="cli/cli", rule="MODE-2")))
    finally:
        await bus.close()


async def test_mode_unknown_until_the_ctl_provider_answers_then_last_known_when_it_is_away(
        tmp_path, nats_server, pki_template, caplog):
    """Issue 9 §5: call control takes the cluster mode from its owner, ctl-provider. Before the owner
    ever answered nothing is decided on an assumed mode (a Register is rejected, GetClusterMode is
    UNAVAILABLE, saying why); once it answered, the owner being away keeps the last known state in
    force (it alone changes it), said in the log — never a crash."""
    import shutil
    for folder in ("pki", "servers", "identities"):
        shutil.copytree(pki_template / folder, tmp_path / folder)
    ctl_host = loopback_host()  # nothing listens there yet
    svc, task = await _start(_settings(tmp_path, nats_server, peers={"ctl-provider": ctl_host}))
    cm = Cm(svc, task, tmp_path)
    provider = None
    try:
        await cm.add_device("SEP0000000E0001", "7960")
        assert "cluster mode unknown" in await cm.refused("SEP0000000E0001")
        assert "SEP0000000E0001" not in cm.cc.registry.entries
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "CTL Provider did not answer" in err.value.details()
        assert (await cm.stub.Status(common_pb2.Empty(), timeout=10)).details["cluster_mode"].startswith("unknown: ")

        await cm.set_mode("mixed")  # stored as the owner stores it; the owner now starts
        provider = await start_ctl_provider(tmp_path, nats_server, ctl_host)
        deadline = asyncio.get_running_loop().time() + 60  # asked again until it answers (gRPC back-off)
        while True:
            try:
                reply = await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=10)
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert asyncio.get_running_loop().time() < deadline, "the CTL Provider's answer never reached call control"
                await asyncio.sleep(0.2)
        assert reply.mode == common_pb2.CLUSTER_MIXED and reply.ctl_present
        assert (await cm.stub.Status(common_pb2.Empty(), timeout=10)).details["cluster_mode"] == "mixed"
        assert "MODE-4" in await cm.refused("SEP0000000E00FF")  # mixed: no auto-registration

        await stop_ctl_provider(provider)
        provider = None
        cm.cc.forget_cluster_mode()  # as a delivered reset does: the next decision asks the owner
        with caplog.at_level(logging.WARNING, logger="ccmsec.callmanager"):
            assert (await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=10)).mode == common_pb2.CLUSTER_MIXED
            assert "MODE-4" in await cm.refused("SEP0000000E00FE")  # still decided on mixed
        assert "deciding on the last known cluster state" in caplog.text
        assert not task.done()
    finally:
        await cm.channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)
        if provider is not None:
            await stop_ctl_provider(provider)


async def test_mode_changed_event_makes_call_control_ask_the_owner_a_late_one_never_sticks(cm, nats_server):
    """The owner's mode.changed reaches every call-control node (consumer `cluster-mode`): applied,
    then confirmed with the owner at the next decision — so a change is followed without any reset,
    and an old event delivered late (the owner says otherwise) does not stick."""
    assert (await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=10)).mode == common_pb2.CLUSTER_NON_SECURE
    async with owner_db(cm.svc.settings.db_url, "ctl-provider") as db, db() as session, session.begin():
        await set_setting(session, SETTING_CTL_VERSION, "1")
        await set_setting(session, SETTING_SECURITY_MODE, "mixed")  # as the owner stores it; no forget
    await _mode_event(nats_server, common_pb2.CLUSTER_MIXED, common_pb2.CLUSTER_NON_SECURE)

    async def mode():
        return (await cm.stub.GetClusterMode(common_pb2.Empty(), timeout=10)).mode

    deadline = asyncio.get_running_loop().time() + 30
    while await mode() != common_pb2.CLUSTER_MIXED:
        assert asyncio.get_running_loop().time() < deadline, "mode.changed never followed"
        await asyncio.sleep(0.05)
    # A stale event: "non-secure" while the owner keeps mixed. Asked again, the owner wins.
    events_before = cm.svc.events_handled
    await _mode_event(nats_server, common_pb2.CLUSTER_NON_SECURE, common_pb2.CLUSTER_MIXED)
    await wait_for(lambda: cm.svc.events_handled >= events_before + 2, 30)  # followed and audited
    assert await mode() == common_pb2.CLUSTER_MIXED
    assert await cm.cc.cluster_mode() == "mixed"


# -- lines and pools -----------------------------------------------------------------------------

async def test_lines_and_device_pools(cm, nats_server):
    await cm.add_device("SEP0000000F0001", "7960")
    pool = await cm.stub.AddDevicePool(pb.DevicePool(name="HQ", cm_group=["ccm1", "ccm2"], srst="branch-gw"), timeout=5)
    assert list(pool.cm_group) == ["ccm1", "ccm2"]
    async with BusRecorder(nats_server) as rec:
        await cm.stub.SetDevicePool(pb.SetDevicePoolRequest(device="SEP0000000F0001", pool="HQ"), timeout=5)
        first = await cm.stub.AddLine(pb.Line(dn="2001", device="SEP0000000F0001"), timeout=5)
        second = await cm.stub.AddLine(pb.Line(dn="2002", device="SEP0000000F0001", label="fax"), timeout=5)
        await asyncio.sleep(0.2)
    assert (first.line_index, second.line_index) == (1, 2)
    assert [e.config_changed.what for e in rec.events] == ["device_pool", "line", "line"]
    assert rec.resets_and_restarts() == []  # no RST rule covers lines or pools
    pools = (await cm.stub.GetDevicePools(common_pb2.Empty(), timeout=5)).pools
    assert [(p.name, p.srst) for p in pools] == [("HQ", "branch-gw")]
    async with cm.svc.db() as session:
        assert (await session.scalar(select(Device).where(Device.name == "SEP0000000F0001"))).device_pool == "HQ"
    bad = [
        (cm.stub.AddLine, pb.Line(dn="12a", device="SEP0000000F0001"), grpc.StatusCode.INVALID_ARGUMENT),
        (cm.stub.AddLine, pb.Line(dn="2001", device="SEP0000000F0001"), grpc.StatusCode.ALREADY_EXISTS),
        (cm.stub.AddLine, pb.Line(dn="2003", device="SEP0000000F0009"), grpc.StatusCode.NOT_FOUND),
        (cm.stub.AddLine, pb.Line(dn="2003", device="SEP0000000F0001", line_index=99), grpc.StatusCode.INVALID_ARGUMENT),
        (cm.stub.AddDevicePool, pb.DevicePool(name="HQ", cm_group=["ccm1"]), grpc.StatusCode.ALREADY_EXISTS),
        (cm.stub.AddDevicePool, pb.DevicePool(name="X", cm_group=[]), grpc.StatusCode.INVALID_ARGUMENT),
        (cm.stub.AddDevicePool, pb.DevicePool(name="X", cm_group=["a", "b", "c", "d"]), grpc.StatusCode.INVALID_ARGUMENT),
        (cm.stub.SetDevicePool, pb.SetDevicePoolRequest(device="SEP0000000F0001", pool="nope"), grpc.StatusCode.NOT_FOUND),
    ]
    async def audit_rows():
        async with cm.svc.db() as session:
            return [(r.actor, r.action, r.target, r.outcome, r.detail) for r in (await session.scalars(
                select(AuditEntry).order_by(AuditEntry.id))).all()]

    # Issue 9 §5: every gRPC write is audited like the API's (same actions), naming the caller.
    assert await audit_rows() == [
        ("cli/cli", "pool.create", "HQ", "ok", "cm_group=ccm1,ccm2 srst='branch-gw' (via grpc)"),
        ("cli/cli", "device.set_pool", "SEP0000000F0001", "ok", "device_pool: None -> 'HQ' (via grpc)"),
        ("cli/cli", "line.create", "SEP0000000F0001", "ok", "dn=2001 line 1 (via grpc)"),
        ("cli/cli", "line.create", "SEP0000000F0001", "ok", "dn=2002 line 2 (via grpc)")]
    before = await audit_rows()
    for call, req, code in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(req, timeout=5)
        assert err.value.code() == code, (req, err.value.details())
    # Refused: nothing written, nothing audited as done.
    assert await audit_rows() == before
    async with cm.svc.db() as session:
        assert len((await session.scalars(select(Line))).all()) == 2
        assert [p.name for p in (await session.scalars(select(DevicePool))).all()] == ["HQ"]


async def test_addline_over_grpc_refuses_a_label_with_control_characters_and_writes_nothing(cm):
    """The gRPC door (and `ccmsec line add --label`) goes through the same check as the API:
    a label with a terminal escape, a newline, a bidi override or text Skinny cannot carry is
    INVALID_ARGUMENT naming `label`; no line, no audit row."""
    await cm.add_device("SEP0000000F0001", "7960")
    for label in ("fax\x1b[2J", "a\nb", "\u202exaf", "本線", "l" * 41):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cm.stub.AddLine(pb.Line(dn="2001", device="SEP0000000F0001", label=label), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("label: ") and err.value.details().isprintable()
    async with cm.svc.db() as session:
        assert (await session.scalars(select(Line))).all() == []
        assert [r.action for r in (await session.scalars(select(AuditEntry))).all()
                if r.action == "line.create" and r.outcome == "ok"] == []
    ok = await cm.stub.AddLine(pb.Line(dn="2001", device="SEP0000000F0001", label="Fax 2"), timeout=5)
    assert ok.label == "Fax 2"


# -- bad input -------------------------------------------------------------------------------------

async def _raw(host, port, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_bad_input_closes_only_the_offender(cm):
    good = await cm.registered("SEP0000000C0001")
    port = cm.cc.plain.port
    # absurd length, malformed Register, garbage
    assert await _raw(cm.host, port, (0xFFFFFFF0).to_bytes(4, "little") + b"\0" * 8) == b""
    assert await _raw(cm.host, port, (8).to_bytes(4, "little") + b"\0" * 4 + (1).to_bytes(4, "little") + b"abcd") == b""
    assert await _raw(cm.host, port, b"\xff" * 64) == b""
    # out of order: capabilities before Register are ignored (no answer, no registration); a
    # KeepAlive before Register is a phone's standby connection and only gets its ack (LATER-7)
    reader, writer = await asyncio.open_connection(cm.host, port)
    writer.write(s.CapabilitiesRes().serialize())
    await writer.drain()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.3)
    writer.write(s.KeepAlive().serialize())
    await writer.drain()
    assert s.SccpFramer().feed(await asyncio.wait_for(reader.read(100), 5)) == [s.KeepAliveAck()]
    writer.close()
    # a flood from one connection is cut off
    flood = s.Register("SEP0000000C0002", "127.0.0.1").serialize() + s.KeepAlive().serialize() * 2000
    await _raw(cm.host, port, flood)
    # a TLS client that stalls mid-handshake blocks nobody
    stalled = socket.create_connection((cm.host, cm.cc.tls.port))
    stalled.sendall(b"\x16\x03\x01\x00\xff\x01")  # half a ClientHello
    other = await cm.registered("SEP0000000C0003")
    await good.send(s.KeepAlive())
    await good.next_event(s.KeepAliveAcked, timeout=5)
    stalled.close()
    assert "SEP0000000C0002" not in cm.cc.registry.entries
    await good.close()
    await other.close()
