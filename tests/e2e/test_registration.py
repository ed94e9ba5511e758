"""Issue 6 on the running cluster: phones register with the real callmanager process over SCCP
on 2000 and SCCP/TLS on 2443, the CLI shows the registry and resets with progress, and a cluster
mode change emits exactly the RST-3 events and restarts callmanager."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from sqlalchemy import select

from ccmsec.aio.sccp import SccpRegistrationRejected, connect_phone
from ccmsec.db.devices import SETTING_CTL_VERSION, Device
from ccmsec.pki.ca import Issued, load_pair, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.tls import sccp_phone_context
from ccmsec.runtime.bus import EventBus
from ccmsec.runtime.database import create_engine, sessionmaker
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.identity import client_identity
from ccmsec.wire import sccp as s
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, ctl_provider_pb2, ctl_provider_pb2_grpc, events_pb2
from cryptography import x509

from tests.ownerdb import owner_sql, owner_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _cm(cluster):
    return cluster["endpoints"]["services"]["callmanager"]


async def _stub_call(cluster, fn):
    svc = _cm(cluster)
    async with secure_channel(client_identity(cluster["data"]), svc["host"], svc["grpc_port"],
                              "callmanager") as ch:
        return await fn(callmanager_pb2_grpc.CallManagerStub(ch))


async def _wait_serving(cluster, old_pid: str | None = None, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = await _stub_call(cluster, lambda st: st.Status(common_pb2.Empty(), timeout=2))
            if st.state == "serving" and st.details.get("pid") != old_pid:
                return st
        except Exception:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError("callmanager did not come back")


async def _cli(cluster, *args, timeout=60):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ccmsec.cli.main", *args, "--data", str(cluster["data"]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def _phone_that_comes_back(host, port, name, register_kw=None, **kw):
    """A phone that re-registers after every Reset, like a booting phone would."""
    phone = await connect_phone(host, port, s.Register(name, host, **(register_kw or {})), **kw)
    await phone.wait_registered(10)
    while True:
        await phone.next_event(s.ResetRequested, timeout=60)
        await phone.close()
        phone = await connect_phone(host, port, s.Register(name, host, **(register_kw or {})), **kw)
        await phone.wait_registered(10)


def test_non_secure_registration_registry_cli_and_reset_wait(cluster):
    svc = _cm(cluster)

    async def scenario():
        name = "SEP00E2E0000001"
        # Configured non-secure: it registers on 2000 whatever mode other tests left the cluster in.
        silent = "SEP00E2E0000999"   # configured, never registers
        engine = create_engine(owner_url(cluster["data"], "callmanager"))  # the owner's own database
        async with sessionmaker(engine)() as session, session.begin():
            for device in (name, silent):
                if await session.scalar(select(Device.id).where(Device.name == device)) is None:
                    session.add(Device(name=device, model="7970", security_mode="non-secure"))
        await engine.dispose()
        task = asyncio.create_task(_phone_that_comes_back(svc["host"], svc["sccp_port"], name))
        try:
            deadline = time.monotonic() + 10
            rows = []
            while time.monotonic() < deadline and not rows:
                code, out, err = await _cli(cluster, "device", "registrations", name, "--json")
                assert code == 0, err
                rows = json.loads(out)
            assert rows[0]["device"] == name and rows[0]["mode"] == "non-secure"
            assert rows[0]["transport_port"] == svc["sccp_port"] and rows[0]["server"] == "callmanager"
            code, out, err = await _cli(cluster, "device", "reset", name, "--wait", "--timeout", "20")
            assert code == 0, out + err
            assert "complete" in out and "1/1 back" in out
            code, out, _ = await _cli(cluster, "device", "reset", silent, "--wait", "--timeout", "1")
            assert code == 3 and silent in out  # named as not back
            code, out, err = await _cli(cluster, "device", "reset", "SEP00E2E0000998", "--wait",
                                        "--timeout", "1")
            assert code == 1 and "no device named SEP00E2E0000998" in out + err, out + err  # a typo: refused
        finally:
            task.cancel()
    asyncio.run(scenario())


def test_mixed_mode_rst3_then_tls_registration_and_refusals(cluster):
    data, svc = cluster["data"], _cm(cluster)
    host = svc["host"]

    async def set_mode(mode):
        # The cluster mode's owner is ctl-provider (issue 9 §5): changed there, RST-3 emitted there.
        ctl = cluster["endpoints"]["services"]["ctl-provider"]
        async with secure_channel(client_identity(data), ctl["host"], ctl["grpc_port"], "ctl-provider") as ch:
            return await ctl_provider_pb2_grpc.CtlProviderStub(ch).SetSecurityMode(
                ctl_provider_pb2.SecurityModeRequest(mode=mode), timeout=10)

    async def scenario():
        owner_sql(data, "ctl-provider", "INSERT INTO cluster_settings (key, value, updated_at) VALUES "
                  "(?, '1', CURRENT_TIMESTAMP) ON CONFLICT (key) DO UPDATE SET value = '1'",
                  SETTING_CTL_VERSION)  # as the CTL client would
        engine = create_engine(owner_url(data, "callmanager"))  # each owner's own database
        db = sessionmaker(engine)
        async with db() as session, session.begin():
            session.add(Device(name="SEP00E2E0000002", model="7970", security_mode="encrypted"))
        await engine.dispose()
        found = await _stub_call(cluster, lambda st: st.GetClusterMode(common_pb2.Empty(), timeout=5))
        before = await _wait_serving(cluster)
        if found.mode == common_pb2.CLUSTER_MIXED:  # another test left it mixed: start from non-secure
            await set_mode(common_pb2.CLUSTER_NON_SECURE)
            before = await _wait_serving(cluster, before.details["pid"])
        bus = EventBus.for_cli(cluster["data"], cluster["endpoints"]["nats_url"], "e2e-registration")
        await bus.connect()
        seen: list[events_pb2.Event] = []

        async def record(msg):
            seen.append(events_pb2.Event.FromString(msg.data))
        sub = await bus.nc.subscribe("ccmsec.>", cb=record)
        await bus.nc.flush()
        try:
            reply = await set_mode(common_pb2.CLUSTER_MIXED)
            assert reply.mode == common_pb2.CLUSTER_MIXED
            await _wait_serving(cluster, before.details["pid"])  # RST-3: callmanager restarted
            await asyncio.sleep(0.3)
            actions = [(e.kind, e.device_reset.rule if e.kind == "device.reset" else e.service_restart.rule)
                       for e in seen if e.kind in ("device.reset", "service.restart")]
            assert actions == [("device.reset", "RST-3"), ("service.restart", "RST-3")]
            assert seen[[e.kind for e in seen].index("device.reset")].device_reset.all

            ccm = x509.load_der_x509_certificate(
                (data / "servers" / "callmanager" / "ccmserver.cer").read_bytes())
            capf = load_pair(data / "pki" / "capf.crt", data / "pki" / "capf.key")
            key = new_key()
            lsc = Issued(issue_lsc(capf, "SEP00E2E0000002", key.public_key()), key)
            ctx = sccp_phone_context("encrypted", [ccm], lsc=lsc)
            phone = await connect_phone(host, svc["sccp_tls_port"], s.Register("SEP00E2E0000002", host),
                                        ssl_context=ctx, pinned_ccm_certificates=[ccm])
            await phone.wait_registered(10)
            regs = (await _stub_call(cluster, lambda st: st.GetRegistrations(
                pb.RegistrationsRequest(device="SEP00E2E0000002"), timeout=5))).registrations
            assert regs[0].mode == common_pb2.ENCRYPTED and regs[0].certificate_kind == "LSC"
            await phone.close()

            unknown = await connect_phone(host, svc["sccp_port"], s.Register("SEP00E2E0000003", host))
            with pytest.raises(SccpRegistrationRejected) as err:
                await unknown.wait_registered(10)
            assert err.value.text.startswith("MODE-4")
            await unknown.close()
        finally:
            current = await _wait_serving(cluster)
            now = await _stub_call(cluster, lambda st: st.GetClusterMode(common_pb2.Empty(), timeout=5))
            if now.mode != found.mode:  # leave the shared cluster as found
                await set_mode(found.mode)
                await _wait_serving(cluster, current.details["pid"])
            await sub.unsubscribe()
            await bus.close()
    asyncio.run(scenario())
