"""Issue 14, "CAPF with real peers": our CAPF server against a standard client, and phone-sim's
CAPF client against a standard server — both peers written in `capf_peers` from the wire format,
not with our protocol classes, so a convention mismatch fails here.

Server (item 1): an empty password is accepted when the operation uses no authentication string;
certificate authentication (LSC and MIC, RSA and EC) in the real phones' convention; a forged
signature is refused and counted. Extensions (item 3): the offline-CA frames never reach a client
whose operation does not use them. Phone (item 2): phone-sim sends both signatures, decides from
its capfAuthMode although the server always says auth type 0, and its fetch response carries
reason 1 and its certificate.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ccmsec.aio.capf import CapfServer, capf_server_ssl_context
from ccmsec.db.base import Base
from ccmsec.db.capf import SqlCapfStore, schedule_operation
from ccmsec.pki.ca import create_ca, issue_with_new_key, name, new_key
from ccmsec.pki.lsc import LscIssuer, ensure_capf_ca, verify_lsc_chain
from ccmsec.pki.tokens import issue_mic
from ccmsec_phone_sim.phone import State
from tests.integration.capf_peers import (
    DELETE_REQ, FETCH_REQ, KEYGEN_REQ, STORE_REQ, ClientResult, StandardClient, StandardServer,
)
from tests.integration.test_phone_sim_boot import boot, lab, make_ctl, pki, until  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(90)

DEVICE = "SEP0000000C0A01"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed "
                                   "(the standard client signs RSA digests with `openssl pkeyutl`)")


@pytest.fixture(scope="module")
def capf_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("capf-pki")
    return {"dir": d, "capf": ensure_capf_ca(d), "mfr": create_ca(name("Manufacturer CA"), key=new_key("ec256"))}


@pytest.fixture
async def factory(tmp_path):
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'ccmsec.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
async def store(factory):
    return SqlCapfStore(factory)


def _server(capf_pki, store, issuer_mode="capf") -> CapfServer:
    d = capf_pki["dir"]
    return CapfServer("127.0.0.1", 0, capf_server_ssl_context(d / "capf.crt", d / "capf.key"), store,
                      LscIssuer(capf_pki["capf"], [capf_pki["mfr"].cert]), idle_timeout=5, session_timeout=20,
                      issuer_mode=lambda: issuer_mode)


@pytest.fixture
async def server(capf_pki, store):
    async with _server(capf_pki, store) as srv:
        yield srv


async def standard(server, capf_pki, **kw) -> ClientResult:
    client = StandardClient("127.0.0.1", server.port, capf_pki["capf"].cert, kw.pop("device", DEVICE), **kw)
    return await asyncio.to_thread(client.run)


# ---- item 1: our server, a standard client ------------------------------------------------------


async def test_null_auth_accepts_the_empty_password_of_a_standard_client(server, store, factory, capf_pki):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="null", key_type="rsa2048")
    result = await standard(server, capf_pki)  # sends PASSWORD = a lone NUL
    assert result.outcome == "installed" and result.end_reason == 1
    verify_lsc_chain(result.certificate, capf_pki["capf"].cert, device_name=DEVICE)
    assert (await store.operation(op)).state == "done"
    (record,) = await store.certificates(DEVICE)
    assert record.outcome == "installed" and record.der == result.certificate.public_bytes(serialization.Encoding.DER)


async def test_string_auth_refuses_the_empty_password_and_counts_it(server, store, factory, capf_pki):
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="string", auth_string="24680")
    result = await standard(server, capf_pki)
    assert result.end_reason == 7 and result.outcome == "ended" and result.commands == [1, 15]
    assert (await store.operation(op)).failed_attempts == 1 and await store.certificates(DEVICE) == []
    assert (await standard(server, capf_pki, password="24680")).outcome == "installed"


@pytest.mark.parametrize("key_kind", [pytest.param("rsa2048", marks=needs_openssl), "ec256"])
async def test_upgrade_authenticated_by_the_lsc_in_the_real_phones_convention(server, store, factory, capf_pki,
                                                                               key_kind):
    """Issue 14: "an upgrade authenticated by an LSC fails with 'authentication signature does
    not verify'" — no longer: name|0x00|cert, SHA-1 and SHA-512, RSA without DigestInfo."""
    await schedule_operation(factory, DEVICE, "install", auth_mode="null", key_type=key_kind)
    first = await standard(server, capf_pki)
    assert first.outcome == "installed"
    op = await schedule_operation(factory, DEVICE, "upgrade", auth_mode="lsc", key_type=key_kind)
    second = await standard(server, capf_pki, certificate=first.certificate, key=first.key)
    assert second.outcome == "installed" and second.end_reason == 1, second
    assert second.certificate.serial_number != first.certificate.serial_number
    view = await store.operation(op)
    assert view.state == "done" and view.failed_attempts == 0


@pytest.mark.parametrize("key_kind", [pytest.param("rsa2048", marks=needs_openssl), "ec256"])
async def test_mic_authentication_even_when_the_client_labels_its_mic_lsc(server, store, factory, capf_pki, key_kind):
    mic = issue_mic(capf_pki["mfr"], DEVICE, key_kind)
    await schedule_operation(factory, DEVICE, "install", auth_mode="mic", key_type="ec256")
    result = await standard(server, capf_pki, certificate=mic.cert, key=mic.key)
    assert result.outcome == "installed", result


@needs_openssl
async def test_forged_signature_is_refused_counted_and_nothing_issued(server, store, factory, capf_pki):
    """The bad case: the right MIC, signed with another key — refused with reason 7, counted."""
    mic = issue_mic(capf_pki["mfr"], DEVICE, "rsa2048")
    op = await schedule_operation(factory, DEVICE, "install", auth_mode="mic", key_type="ec256")
    result = await standard(server, capf_pki, certificate=mic.cert, key=new_key("rsa2048"))
    assert result.end_reason == 7 and result.outcome == "ended"
    view = await store.operation(op)
    assert view.failed_attempts == 1 and "does not verify" in view.reason
    assert await store.certificates(DEVICE) == []
    # A certificate from no trusted CA, correctly signed: refused as well.
    stranger = issue_with_new_key(create_ca(name("Manufacturer CA"), key=new_key("ec256")), name(DEVICE), "rsa2048")
    result = await standard(server, capf_pki, certificate=stranger.cert, key=stranger.key)
    assert result.end_reason == 7 and (await store.operation(op)).failed_attempts == 2


async def test_troubleshoot_and_delete_with_a_standard_client(server, store, factory, capf_pki):
    await schedule_operation(factory, DEVICE, "install", auth_mode="null", key_type="ec256")
    installed = await standard(server, capf_pki)
    await schedule_operation(factory, DEVICE, "troubleshoot", auth_mode="null")
    fetched = await standard(server, capf_pki, held=installed.certificate)
    assert fetched.outcome == "fetched" and fetched.end_reason == 1
    await schedule_operation(factory, DEVICE, "delete", auth_mode="null")
    deleted = await standard(server, capf_pki)
    assert deleted.outcome == "deleted" and deleted.end_reason == 1
    assert [r.outcome for r in await store.certificates(DEVICE)] == ["installed", "fetched", "deleted"]


# ---- item 3: our extensions never break a standard client -------------------------------------------


@pytest.mark.parametrize("issuer_mode", ["capf", "offline"])
async def test_offline_ca_extension_never_reaches_a_standard_client_whose_operation_does_not_use_it(
        capf_pki, store, factory, issuer_mode):
    """The standard client raises on commands 16/22/23 or any unknown element: every operation
    that does not go through the offline CA completes with it, whatever the issuer setting."""
    mic = issue_mic(capf_pki["mfr"], DEVICE, "ec256")
    async with _server(capf_pki, store, issuer_mode) as srv:
        plan = [("troubleshoot", "mic", "fetched", [1, FETCH_REQ, 15]), ("delete", "null", "deleted", [1, DELETE_REQ, 15])]
        if issuer_mode == "capf":
            plan.insert(0, ("install", "null", "installed", [1, KEYGEN_REQ, STORE_REQ, 15]))
        for operation, auth, outcome, commands in plan:
            await schedule_operation(factory, DEVICE, operation, auth_mode=auth, key_type="ec256")
            result = await standard(srv, capf_pki, certificate=mic.cert, key=mic.key)
            assert (result.outcome, result.end_reason, result.commands) == (outcome, 1, commands), operation
        # Nothing scheduled: a plain end (reason 0), still nothing the client does not know.
        result = await standard(srv, capf_pki)
        assert result.commands == [1, 15] and result.end_reason == 0


# ---- item 2: phone-sim against a standard server -------------------------------------------------


@pytest.fixture
async def standard_server(pki):
    srv = StandardServer(pki["capf"].cert, pki["capf"].key, [pki["capf"].cert, pki["mfr"].cert])
    yield srv
    await srv.close()


@pytest.mark.parametrize("mic_kind", [pytest.param("rsa2048", marks=needs_openssl), "ec256"])
async def test_phone_sim_enrols_with_a_standard_server_that_always_says_auth_type_0(lab, standard_server, mic_kind):
    """The phone sends its MIC with both signatures because its capfAuthMode says MIC (4), not
    because the server asked (auth type 0 always); then upgrades with its LSC (capfAuthMode 3),
    hands it over on a troubleshoot with reason 1, and deletes it."""
    name_ = "SEP0000000C0B01"
    srv = standard_server
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.image()
    phone = lab.phone(name_, model="7970", mic=False)
    phone.mic = issue_mic(lab.pki["mfr"], name_, mic_kind)
    lab.device(name_, model="7970", mode=2, capf_op="install", capf_auth=4, capf_port=srv.port)
    srv.operations[name_] = ("install", "certificate")
    runner = await boot(lab, phone, timeout=40)
    assert phone.lsc is not None, (phone.last_failure, phone.last_failure_reason, [v.error for v in srv.visits])
    assert srv.visits[0].certificate_auth and srv.visits[0].outcome == "installed"
    assert phone.state is State.REGISTERED and phone.certificate_in_use == "LSC"
    first_lsc = phone.lsc.cert
    # Upgrade authenticated by the LSC it now holds (RSA-2048: the server asked for one).
    lab.device(name_, model="7970", mode=2, capf_op="upgrade", capf_auth=3, capf_port=srv.port)
    srv.operations[name_] = ("install", "certificate")
    await runner.request_boot()
    await until(lambda: phone.lsc is not None and phone.lsc.cert != first_lsc and phone.state is State.REGISTERED, 30)
    installs = [v for v in srv.visits if v.outcome == "installed"]
    assert len(installs) == 2 and all(v.certificate_auth and not v.error for v in installs), srv.visits
    # Troubleshoot: the fetch response carries reason 1 and the certificate.
    srv.operations[name_] = ("fetch", "certificate")
    lab.device(name_, model="7970", mode=2, capf_op="troubleshoot", capf_auth=3, capf_port=srv.port)
    await runner.request_boot()
    await until(lambda: srv.visits[-1].outcome == "fetched" and phone.state is State.REGISTERED, 30)
    assert srv.visits[-1].fetch_reason == 1 and srv.visits[-1].fetched == phone.lsc.cert


async def test_phone_sim_sends_its_auth_string_or_an_empty_password_from_its_configuration(lab, standard_server):
    srv = standard_server
    lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
    lab.image()
    a, b = "SEP0000000C0B02", "SEP0000000C0B03"
    lab.device(a, mode=1, capf_op="install", capf_auth=1, auth_string="13579", capf_port=srv.port)
    lab.device(b, mode=1, capf_op="install", capf_auth=2, capf_port=srv.port)
    srv.operations[a] = ("install", ("password", "13579"))
    srv.operations[b] = ("install", None)
    for device in (a, b):
        phone = lab.phone(device)
        await boot(lab, phone, timeout=40)
        assert phone.lsc is not None, (phone.last_failure, phone.last_failure_reason)
    # Each phone visits again after its reset (the file still names the operation): nothing to do.
    assert [(v.device, v.password, v.outcome) for v in srv.visits] == [
        (a, "13579", "installed"), (a, "13579", "nothing"), (b, "", "installed"), (b, "", "nothing")]
    # The bad case: a wrong string in the configuration is refused; the phone keeps no LSC.
    c = "SEP0000000C0B04"
    lab.device(c, mode=1, capf_op="install", capf_auth=1, auth_string="99999", capf_port=srv.port)
    srv.operations[c] = ("install", ("password", "13579"))
    phone = lab.phone(c)
    await boot(lab, phone, timeout=40)
    assert phone.lsc is None and phone.last_failure == "capf-failed" and srv.visits[-1].error == "wrong password"


async def test_phone_sim_service_points_a_phone_at_servers_that_are_not_ours_over_grpc(
        lab, standard_server, tmp_path, nats_server):
    """gRPC PhoneSim/SetServers: the phone-sim service's phone fetches from a TFTP server, enrols
    with a CAPF server and registers with call control that are not the cluster's."""
    import random
    import time

    import grpc

    from ccmsec.runtime.grpcio import secure_channel
    from ccmsec.runtime.identity import client_identity, service_identity
    from ccmsec.runtime.settings import load_settings
    from ccmsec_phone_sim.main import PhoneSimService
    from ccmsec_proto import common_pb2, phone_sim_pb2, phone_sim_pb2_grpc
    from tests.conftest import free_port

    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    data = tmp_path / "phone-sim-data"  # the lab's database lives in tmp_path itself
    data.mkdir()
    settings = load_settings(service="phone-sim", data_dir=data, host=host, grpc_port=free_port(host),
                             metrics_port=0, nats_url=nats_server, shutdown_grace=1.0,
                             peers={"tftp-signer": host})  # no tftp-signer: the phone is pointed elsewhere
    service_identity(data, "phone-sim", "phone-sim", host)  # issued before start, as the runner does
    svc = PhoneSimService(settings)
    task = asyncio.create_task(svc.run())
    channel = secure_channel(client_identity(data), host, settings.grpc_port, "phone-sim")
    stub = phone_sim_pb2_grpc.PhoneSimStub(channel)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert not task.done(), "phone-sim stopped during start"
            try:
                await stub.Status(common_pb2.Empty(), timeout=1)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        (added,) = (await stub.AddPhones(phone_sim_pb2.AddPhonesRequest(count=1, model="7960",
                                                                        name_prefix="SEP0C0D"))).phones
        name_ = added.name
        lab.files["CTLFile.tlv"] = make_ctl(lab.pki)
        lab.image()
        lab.device(name_, mode=1, capf_op="install", capf_auth=2, capf_port=1)  # the file names a dead CAPF
        standard_server.operations[name_] = ("install", None)
        selector = phone_sim_pb2.PhoneSelector(names=[name_])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SetServers(phone_sim_pb2.SetServersRequest(phones=selector, capf="no such host!"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "CAPF" in refused.value.details()
        # a refusal quotes the request's names escaped and cut: a 100 kB name with terminal escapes
        # came back whole (over gRPC's metadata limit the call failed with another code)
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetPhone(phone_sim_pb2.PhoneName(name="\x1b[2J" + "X" * 100_000))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, unknown.value
        details = unknown.value.details()
        assert len(details) < 300 and "\x1b" not in details and "\\x1b[2J" in details and "more characters" in details
        (state,) = (await stub.SetServers(phone_sim_pb2.SetServersRequest(
            phones=selector, tftp=f"127.0.0.1:{lab.tftp.address[1]}", capf=f"127.0.0.1:{standard_server.port}",
            call_control=[f"127.0.0.1:{lab.sccp.port}"]))).phones
        assert state.capf_server == f"127.0.0.1:{standard_server.port}" and len(state.call_control) == 1
        await stub.BootPhones(selector)
        await until(lambda: name_ in lab.sccp.registered, 40)
        phone = await stub.GetPhone(phone_sim_pb2.PhoneName(name=name_))
        assert phone.HasField("lsc") and phone.registered_with == f"127.0.0.1:{lab.sccp.port}"
        assert standard_server.visits[0].device == name_ and standard_server.visits[0].outcome == "installed"
        # issue 16: phone-sim's metrics endpoint shows its phones by state (read as a scrape reads it)
        from ccmsec.runtime.metrics import REGISTRY

        by_state = {state: REGISTRY.get_sample_value("ccmsec_simulated_phones", {"node": "phone-sim", "state": state})
                    for state in ("registered", "off", "failed")}
        assert by_state == {"registered": 1, "off": 0, "failed": 0}
    finally:
        await channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)
