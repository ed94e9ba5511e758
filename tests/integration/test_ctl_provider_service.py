"""The ctl-provider service in process: real NATS, real SQLite (migrated), real TLS on a unique
loopback address. The peer services are not running here, so the provider takes the server
certificates from the files those services keep in the data directory (the documented fallback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import nats
import pytest
from cryptography.hazmat.primitives import serialization

from ccmsec.ctlclient import (
    ProviderRefused,
    ProviderUnreachable,
    ServerCertificate,
    build_records,
    fetch_server_certificates,
    provider_ssl_context,
)
from ccmsec.db.cluster import record_ctl
from ccmsec.formats.ctl import Role, build_ctl
from ccmsec.pki.lsc import ensure_capf_ca
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.pki.tokens import create_software_token, ensure_manufacturer_ca
from ccmsec.runtime.grpcio import secure_channel
from ccmsec.runtime.database import open_database
from ccmsec.runtime.grpcio import server_credentials
from ccmsec.runtime.identity import client_identity, service_identity
from ccmsec.runtime.service import GRPC_PORT_DEFAULT
from ccmsec.runtime.settings import load_settings
from ccmsec.wire.ctlprovider import ErrorCode
from ccmsec.runtime.grpcio import GrpcServer
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig, load_pki
from ccmsec_callmanager.servicer import CallManagerServicer
from ccmsec_ctl_provider.main import CtlProviderService
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, ctl_provider_pb2, ctl_provider_pb2_grpc, events_pb2
from ccmsec_proto import tftp_signer_pb2, tftp_signer_pb2_grpc
from tests.conftest import free_port
from tests.deviceowner import loopback_host


@dataclass
class Harness:
    svc: CtlProviderService
    task: asyncio.Task
    data: Path
    stub: ctl_provider_pb2_grpc.CtlProviderStub
    events: list

    async def fetch(self, port: int | None = None):
        ident = client_identity(self.data)
        ctx = provider_ssl_context(ident.ca_path, ident.cert_path, ident.key_path)
        return await fetch_server_certificates(self.svc.settings.host, port or self.svc.listening_port,
                                               ctx, timeout=5)

    async def events_after(self, mark: int, settle: float = 0.8) -> list[tuple[str, events_pb2.Event]]:
        """The events a rule requires (the owner's audit records: `audits_after`)."""
        await asyncio.sleep(settle)  # let anything else that would be published arrive too
        return [(s, e) for s, e in self.events[mark:]
                if not s.startswith("ccmsec.test") and e.kind != "owner.change"]

    def audits_after(self, mark: int) -> list[tuple[str, str, str, str]]:
        """(action, actor, target, rule) of each owner.change published (its audit records)."""
        return [(e.owner_change.action, e.owner_change.actor, e.owner_change.target, e.owner_change.rule)
                for _, e in self.events[mark:] if e.kind == "owner.change"]


_TEMPLATE: dict[str, Path] = {}


async def _prepare(data: Path) -> None:
    """The files the peer services would have written and a migrated database; made once, copied
    per test (each test still gets its own data directory)."""
    if "dir" not in _TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="ctlprov-template-"))
        ensure_server_certificate(template / "servers" / "callmanager", "callmanager")
        ensure_server_certificate(template / "servers" / "tftp-signer", "tftp-signer")
        ensure_capf_ca(template / "pki")
        engine, _ = await open_database(f"sqlite+aiosqlite:///{template / 'ccmsec.db'}")
        await engine.dispose()
        _TEMPLATE["dir"] = template
    shutil.copytree(_TEMPLATE["dir"], data, dirs_exist_ok=True)


async def _start(data: Path, nats_url: str, host: str, port: int, grpc_port: int,
                 peer_host: str = "127.254.253.252", peers: dict[str, str] | None = None, **extra):
    settings = load_settings(service="ctl-provider", data_dir=data, host=host, grpc_port=grpc_port,
                             metrics_port=0, nats_url=nats_url, ctl_provider_port=port,
                             shutdown_grace=1.0,
                             peers={**{r: peer_host for r in ("callmanager", "tftp-signer", "capf")},
                                    **(peers or {})}, **extra)
    service_identity(data, "ctl-provider", "ctl-provider", host)  # issued before start, as the runner does
    svc = CtlProviderService(settings)
    task = asyncio.create_task(svc.run())
    channel = secure_channel(client_identity(data), host, grpc_port, "ctl-provider")
    stub = ctl_provider_pb2_grpc.CtlProviderStub(channel)
    deadline = time.monotonic() + 20
    while True:
        assert not task.done(), f"service stopped during start: {task.exception() if task.done() else ''}"
        try:
            await stub.Status(common_pb2.Empty(), timeout=1)
            return svc, task, channel, stub
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
async def provider(tmp_path, nats_server):
    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(tmp_path)
    svc, task, channel, stub = await _start(tmp_path, nats_server, host, free_port(host), free_port(host))
    events: list = []
    nc = await nats.connect(nats_server)

    async def collect(msg):
        events.append((msg.subject, events_pb2.Event.FromString(msg.data)))

    await nc.subscribe("ccmsec.>", cb=collect)
    harness = Harness(svc, task, tmp_path, stub, events)
    yield harness
    await channel.close()
    await nc.close()
    if not harness.task.done():
        harness.svc.request_stop()
        await asyncio.wait_for(harness.task, 10)


def _der(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw.startswith(b"-----"):
        from cryptography import x509
        return x509.load_pem_x509_certificate(raw).public_bytes(serialization.Encoding.DER)
    return raw


async def test_chk1_fresh_provider_is_not_activated_and_refuses_over_tls(provider):
    """CHK-1: a fresh cluster's CTL Provider answers over TLS only with a refusal naming the rule."""
    assert (await provider.stub.Status(common_pb2.Empty())).activated is False
    with pytest.raises(ProviderRefused, match=r"not activated .*\(CHK-1\)") as refused:
        await provider.fetch()
    assert refused.value.code is ErrorCode.NOT_ACTIVATED
    status = await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    assert status.activated is True
    servers = await provider.fetch()
    assert [s.role for s in servers] == [Role.CCM, Role.TFTP, Role.CAPF]


async def test_cert5_provider_lists_exactly_the_servers_certificate_files(provider):
    """CERT-5 / CERT-3: the certificates answered are byte for byte the ones the services keep."""
    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    by_role = {s.role: s for s in await provider.fetch()}
    der = {r: s.certificate.public_bytes(serialization.Encoding.DER) for r, s in by_role.items()}
    assert der[Role.CCM] == _der(provider.data / "servers" / "callmanager" / "ccmserver.cer")
    assert der[Role.TFTP] == _der(provider.data / "servers" / "tftp-signer" / "ccmserver.cer")
    assert der[Role.CAPF] == _der(provider.data / "pki" / "capf.crt")
    assert by_role[Role.CCM].dns_name == "callmanager" and by_role[Role.CCM].ipv4 == "127.254.253.252"
    reply = await provider.stub.GetServerCertificates(common_pb2.Empty())
    assert [c.der for c in reply.certificates] == [der[Role.CCM], der[Role.TFTP], der[Role.CAPF]]


async def test_later7_every_node_of_the_callmanager_group_is_in_the_ctl_AUTH_2(tmp_path, nats_server):
    """LATER-7 / AUTH-2: with subscribers in the CallManager group the provider answers one
    CallManager certificate per node (here from the files the nodes keep, matched by the node's
    address: the nodes are not running), so a secure phone that fails over finds its node in the
    CTL; a group node whose certificate cannot be had at all is refused by name, not left out."""
    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(tmp_path)
    sub = ensure_server_certificate(tmp_path / "servers" / "callmanager-sub1", "callmanager-sub1",
                                    ip="127.254.253.21")
    nodes = ["127.254.253.252", "127.254.253.21"]
    svc, task, channel, stub = await _start(tmp_path, nats_server, host, free_port(host), free_port(host),
                                            call_control_nodes=nodes)
    harness = Harness(svc, task, tmp_path, stub, [])
    try:
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
        servers = await harness.fetch()
        ccm = [s for s in servers if s.role is Role.CCM]
        assert [(s.dns_name, s.ipv4) for s in ccm] == [("callmanager", "127.254.253.252"),
                                                       ("callmanager-sub1", "127.254.253.21")]
        assert ccm[1].certificate.public_bytes(serialization.Encoding.DER) == \
            sub.cert.public_bytes(serialization.Encoding.DER)
        records = build_records([], servers)
        assert sum(r.role is Role.CCM for r in records) == 2
        # A node nobody can vouch for: refused, naming it.
        svc.settings.call_control_nodes.append("127.254.253.22")
        svc._cache = None
        with pytest.raises(ProviderRefused, match="127.254.253.22"):
            await harness.fetch()
    finally:
        await channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)


async def test_later7_a_group_node_named_by_host_name_is_found_by_its_name(tmp_path, nats_server):
    """LATER-7 in compose: the group lists the nodes by service name and a node listens on every
    address, so its certificate carries its name and no address; the provider finds the file the
    node keeps under DATA/servers/<name>/ by that name. A certificate of another name placed in
    that folder is not taken: the node is refused, by name."""
    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(tmp_path)
    name = "callmanager-sub7.invalid"  # a name no resolver answers: the record carries no address
    sub = ensure_server_certificate(tmp_path / "servers" / name, name)
    nodes = ["127.254.253.252", name]
    svc, task, channel, stub = await _start(tmp_path, nats_server, host, free_port(host), free_port(host),
                                            call_control_nodes=nodes)
    harness = Harness(svc, task, tmp_path, stub, [])
    try:
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
        ccm = [s for s in await harness.fetch() if s.role is Role.CCM]
        assert [(s.dns_name, s.ipv4) for s in ccm] == [("callmanager", "127.254.253.252"), (name, None)]
        assert ccm[1].certificate.public_bytes(serialization.Encoding.DER) == \
            sub.cert.public_bytes(serialization.Encoding.DER)
        # the bad case: the folder of a listed name holds another node's certificate
        other = "callmanager-sub8.invalid"
        ensure_server_certificate(tmp_path / "servers" / "callmanager-x", other)
        svc.settings.call_control_nodes.append("callmanager-x")
        svc._cache = None
        with pytest.raises(ProviderRefused, match="callmanager-x"):
            await harness.fetch()
    finally:
        await channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def _call_control_node(data: Path, node: str, host: str):
    """One call-control node as the CTL Provider reaches it: the real CallManagerServicer behind
    the real authorization gate, on mutual TLS with the node's own identity, at `host` on the
    default gRPC port; its ccmserver.cer is made by call control's own loader in a data directory of
    its own (nothing of it in the provider's data directory)."""
    own = data / "node-data" / node
    issued, _ = load_pki(own, node, host)
    control = CallControl(CallControlConfig(node=node, host=host, sccp_port=0, sccp_tls_port=0,
                                            data_dir=own), None, server_identity=issued)
    server = GrpcServer(service_identity(data, "callmanager", node, host), host, GRPC_PORT_DEFAULT,
                        metrics=False)
    server.add(callmanager_pb2_grpc.add_CallManagerServicer_to_server,
               CallManagerServicer(SimpleNamespace(node=node, callcontrol=control, grpc=server)),
               "ccmsec.v1.CallManager")
    await server.start()
    await server.set_serving(True)
    try:
        yield issued.cert.public_bytes(serialization.Encoding.DER), server
    finally:
        await server.stop(0)


async def test_cert5_ctl_takes_each_nodes_certificate_over_grpc_and_a_wrong_role_is_refused(
        tmp_path, nats_server, caplog):
    """CERT-5 / AUTH-2 / LATER-7: the CTL Provider asks every call-control node for its own
    certificate (CallManager/GetServerCertificate). No node keeps a file in the provider's data
    directory here, so the records can only have come over gRPC — and they are the nodes' own
    certificates, logged and shown as `grpc`. Only ctl-provider may ask: any other role is refused
    (PERMISSION_DENIED). A node that stops answering while no file stands in for it is refused by
    name, not left out of the CTL."""
    host, publisher, sub = loopback_host(), loopback_host(), loopback_host()
    await _prepare(tmp_path)
    (tmp_path / "servers" / "callmanager" / "ccmserver.cer").unlink()  # the publisher's file: absent
    async with _call_control_node(tmp_path, "callmanager", publisher) as (pub_der, pub_server), \
            _call_control_node(tmp_path, "callmanager-sub1", sub) as (sub_der, sub_server):
        assert not list((tmp_path / "servers").glob("callmanager*/ccmserver.cer"))
        # the bad case first: a role other than ctl-provider may not read a node's certificate
        for role, identity in (("tftp-signer", service_identity(tmp_path, "tftp-signer", "tftp-signer", host)),
                               ("cli", client_identity(tmp_path))):
            async with secure_channel(identity, publisher, GRPC_PORT_DEFAULT, "callmanager") as ch:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await callmanager_pb2_grpc.CallManagerStub(ch).GetServerCertificate(common_pb2.Empty())
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED, role
            assert "may not call /ccmsec.v1.CallManager/GetServerCertificate" in refused.value.details()

        svc, task, channel, stub = await _start(tmp_path, nats_server, host, free_port(host), free_port(host),
                                                peers={"callmanager": publisher},
                                                call_control_nodes=[publisher, sub])
        harness = Harness(svc, task, tmp_path, stub, [])
        try:
            await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
            with caplog.at_level(logging.INFO, logger="ccmsec.ctl-provider"):
                servers = await harness.fetch()
            ccm = [s for s in servers if s.role is Role.CCM]
            assert [s.certificate.public_bytes(serialization.Encoding.DER) for s in ccm] == [pub_der, sub_der]
            assert [(s.dns_name, s.ipv4) for s in ccm] == [("callmanager", publisher), ("callmanager-sub1", sub)]
            assert sum(r.role is Role.CCM for r in build_records([], servers)) == 2
            details = (await stub.Status(common_pb2.Empty())).details
            assert details["source_CCM"] == "grpc" and details[f"source_CCM@{sub}"] == "grpc"
            assert details["source_TFTP"] == "file"  # no tftp-signer runs: its file stands in
            taken = [(r.getMessage(), getattr(r, "node", "")) for r in caplog.records
                     if r.name == "ccmsec.ctl-provider" and r.getMessage().startswith("certificate ")]
            assert ("certificate over gRPC", "callmanager") in taken and ("certificate over gRPC", sub) in taken
            assert ("certificate from file", "tftp-signer") in taken

            # the subscriber stops answering and no file is for it: refused, naming it
            await sub_server.stop(0)
            svc._cache = None
            with pytest.raises(ProviderRefused, match=sub):
                await harness.fetch()
        finally:
            await channel.close()
            svc.request_stop()
            await asyncio.wait_for(task, 10)


async def test_chk1_activation_survives_a_restart(provider, nats_server):
    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    provider.svc.request_stop()
    await asyncio.wait_for(provider.task, 10)
    svc, task, channel, stub = await _start(provider.data, nats_server, provider.svc.settings.host,
                                            provider.svc.listening_port, provider.svc.settings.grpc_port)
    provider.svc, provider.task = svc, task
    try:
        assert (await stub.Status(common_pb2.Empty())).activated is True
        assert len(await provider.fetch()) == 3
    finally:
        await channel.close()


async def test_only_the_administration_path_may_use_the_ctl_provider_port(provider, caplog):
    """Issue 9 §2 on 2444: the CTL client is the administrator's (`cli`, `admin-api`); a service's
    certificate of the same cluster — phone-sim's, even callmanager's — gets UNAUTHORIZED naming
    it, and the refusal is logged; the administration path still gets the certificates."""
    import logging

    from ccmsec.cluster.pki import issue_identity, issue_service_identity

    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    for role in ("phone-sim", "callmanager"):
        ident = issue_service_identity(provider.data, role, role, "127.0.0.1",
                                       out_dir=provider.data / "other" / role)
        ctx = provider_ssl_context(ident.ca_path, ident.cert_path, ident.key_path)
        with caplog.at_level(logging.WARNING, logger="ccmsec.ctl-provider"):
            with pytest.raises(ProviderRefused, match=rf"{role}/{role} \(spiffe://ccmsec/{role}/{role}\) "
                                                      r"may not use the CTL Provider") as refused:
                await fetch_server_certificates(provider.svc.settings.host, provider.svc.listening_port,
                                                ctx, timeout=5)
        assert refused.value.code is ErrorCode.UNAUTHORIZED
        assert f"refused a CTL client: {role}/{role}" in caplog.text
    admin_api = issue_identity(provider.data, "admin-api", "callmanager", provider.data / "other" / "admin-api")
    ctx = provider_ssl_context(admin_api.ca_path, admin_api.cert_path, admin_api.key_path)
    assert len(await fetch_server_certificates(provider.svc.settings.host, provider.svc.listening_port,
                                               ctx, timeout=5)) == 3
    assert len(await provider.fetch()) == 3   # cli


async def test_client_without_a_cluster_certificate_is_refused_at_tls(provider):
    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    ctx = ssl.create_default_context(cafile=str(client_identity(provider.data).ca_path))
    with pytest.raises(ProviderUnreachable):
        await fetch_server_certificates(provider.svc.settings.host, provider.svc.listening_port, ctx,
                                        timeout=3)


async def test_clients_that_never_handshake_are_bounded_at_accept_and_others_are_served(provider, monkeypatch):
    """Connections are counted from accept, before TLS: one address holding MAX_PER_SOURCE silent
    connections has its next one closed at once (no handshake wait), and the whole port at
    MAX_CONNECTIONS; an administrator from another address is still answered meanwhile."""
    from ccmsec_ctl_provider import listener

    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    host, port = provider.svc.settings.host, provider.svc.listening_port

    async def silent(source: str):
        return await asyncio.open_connection(host, port, local_addr=(source, 0))

    async def closed_at_once(source: str) -> bool:
        reader, writer = await silent(source)
        try:
            return await asyncio.wait_for(reader.read(1), 2) == b""
        except ConnectionResetError:
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            writer.close()

    held = [await silent("127.66.0.1") for _ in range(listener.MAX_PER_SOURCE)]
    try:
        await asyncio.sleep(0.2)
        assert await closed_at_once("127.66.0.1"), "one address past its limit must be closed at accept"
        assert len(await provider.fetch()) == 3      # another address: served
        monkeypatch.setattr(listener, "MAX_CONNECTIONS", listener.MAX_PER_SOURCE + 1)
        held.append(await silent("127.66.0.2"))     # the port's last slot
        await asyncio.sleep(0.2)
        assert await closed_at_once("127.66.0.3"), "the port past its limit must be closed at accept"
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.2)
    assert len(await provider.fetch()) == 3          # the slots come back when they hang up


async def test_unreachable_provider_is_a_clear_error(provider):
    ident = client_identity(provider.data)
    ctx = provider_ssl_context(ident.ca_path, ident.cert_path, ident.key_path)
    with pytest.raises(ProviderUnreachable, match="cannot connect to the CTL Provider at 127.0.0.1:1"):
        await fetch_server_certificates("127.0.0.1", 1, ctx, timeout=2)


async def test_garbage_on_the_tls_port_gets_bad_request_and_the_service_keeps_serving(provider):
    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    ident = client_identity(provider.data)
    ctx = provider_ssl_context(ident.ca_path, ident.cert_path, ident.key_path)
    reader, writer = await asyncio.open_connection(provider.svc.settings.host, provider.svc.listening_port,
                                                   ssl=ctx, server_hostname="ctl-provider")
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    assert answer.startswith(b"CTLP") and b"bad magic" in answer
    assert len(await provider.fetch()) == 3


async def test_rst7_port_change_emits_exactly_one_provider_restart_and_applies_after_it(provider, nats_server):
    """RST-7: changing the TLS port restarts the CTL Provider (and nothing else); the stored port
    overrides the setting when the service starts again."""
    host = provider.svc.settings.host
    new_port = free_port(host)
    mark = len(provider.events)
    reply = await provider.stub.SetProviderPort(ctl_provider_pb2.SetProviderPortRequest(port=new_port))
    assert reply.restart_required and list(reply.events) == ["service.restart.ctl-provider RST-7"]
    events = await provider.events_after(mark)
    assert [(s, e.service_restart.rule) for s, e in events] == [("ccmsec.ctl-provider.service.restart.ctl-provider",
                                                                  "RST-7")]
    # audited by its owner in the same transaction (issue 9 §5), callmanager records it
    assert provider.audits_after(mark) == [("ctl_provider.port", "cli/cli", provider.svc.node, "RST-7")]
    assert await asyncio.wait_for(provider.task, 10) == 75  # restarted itself on the event
    svc, task, channel, stub = await _start(provider.data, nats_server, host, free_port(host),
                                            provider.svc.settings.grpc_port)
    provider.svc, provider.task = svc, task
    try:
        settings = await stub.GetProviderSettings(common_pb2.Empty())
        assert settings.listening_port == new_port == svc.listening_port
        mark = len(provider.events)
        same = await stub.SetProviderPort(ctl_provider_pb2.SetProviderPortRequest(port=new_port))
        assert not same.restart_required and list(same.events) == []
        assert await provider.events_after(mark, settle=0.5) == [] and provider.audits_after(mark) == []
        with pytest.raises(grpc.aio.AioRpcError, match="not between 1 and 65535"):
            await stub.SetProviderPort(ctl_provider_pb2.SetProviderPortRequest(port=70000))
    finally:
        await channel.close()


async def test_mode1_fresh_cluster_is_non_secure_and_mode5_mixed_needs_a_ctl(provider):
    """MODE-1: non-secure at install. MODE-5: mixed refused while no CTL exists."""
    state = await provider.stub.GetSecurityMode(common_pb2.Empty())
    assert state.mode == common_pb2.CLUSTER_NON_SECURE and not state.ctl_present
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.SetSecurityMode(ctl_provider_pb2.SecurityModeRequest(mode=common_pb2.CLUSTER_MIXED))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MODE-5" in refused.value.details()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokens")
    ca = ensure_manufacturer_ca(tmp / "pki")
    return {n: create_software_token(tmp / "tokens", n, "pw", ca) for n in ("t1", "t2", "t3")}


async def _ctl(provider, signer, *listed) -> bytes:
    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    servers: list[ServerCertificate] = await provider.fetch()
    return build_ctl(build_records([t.certificate for t in listed], servers), signer, int(time.time()))


async def _committed_and_next(provider, tokens) -> tuple[bytes, bytes]:
    """The first CTL (t1 signing; t1, t2 listed) committed as version 1, and the next one to
    commit (t1 signing; t1, t3 listed)."""
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))).version == 1
    second = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t3"])
    return first, second


async def test_ctl1_commit_refuses_a_ctl_with_one_token_and_a_tampered_one(provider, tokens):
    one = await _ctl(provider, tokens["t1"], tokens["t1"])
    with pytest.raises(grpc.aio.AioRpcError, match="CTL-1"):
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=one))
    servers = await provider.fetch()  # the same token listed twice is still one token
    twice = build_ctl(build_records([tokens["t1"].certificate], servers)
                      + build_records([tokens["t1"].certificate], servers)[:1], tokens["t1"], int(time.time()))
    with pytest.raises(grpc.aio.AioRpcError, match="CTL-1: the CTL lists 1 distinct security token"):
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=twice))
    good = bytearray(await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"]))
    good[-10] ^= 0xFF
    with pytest.raises(grpc.aio.AioRpcError, match="not a valid signed CTL"):
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=bytes(good)))
    assert not (await provider.stub.GetCurrentCtl(common_pb2.Empty())).present


async def test_ctl2_commit_refuses_a_signer_outside_the_current_ctl(provider, tokens):
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    async with provider.svc.db() as session, session.begin():
        await record_ctl(session, content=first, sha256="0" * 64, signer="t1", signer_serial="01",
                         records=5, tftp_path="cluster1")
    stranger = await _ctl(provider, tokens["t3"], tokens["t3"], tokens["t2"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=stranger))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CTL-2" in refused.value.details() and "--new-trust" in refused.value.details()
    # With new trust the check passes and the next step (publishing) is reached.
    with pytest.raises(grpc.aio.AioRpcError) as later:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=stranger, new_trust=True))
    assert "CTL-2" not in later.value.details() and "tftp-signer" in later.value.details()


async def test_rst3_mode_switch_by_its_owner_emits_exactly_the_rst3_events(provider, tokens):
    """RST-3: ctl-provider, the only owner of the cluster mode (issue 9 §5), stores it itself —
    callmanager is not even reachable here — and publishes mode.changed (naming who changed it,
    for the audit log callmanager keeps), a reset of every device and a callmanager restart —
    nothing else."""
    ctl = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    async with provider.svc.db() as session, session.begin():
        await record_ctl(session, content=ctl, sha256="0" * 64, signer="t1", signer_serial="01",
                         records=5, tftp_path="cluster1")
    mark = len(provider.events)
    reply = await provider.stub.SetSecurityMode(ctl_provider_pb2.SecurityModeRequest(mode=common_pb2.CLUSTER_MIXED))
    assert reply.mode == common_pb2.CLUSTER_MIXED and reply.previous == common_pb2.CLUSTER_NON_SECURE
    events = await provider.events_after(mark)
    assert [(s, e.device_reset.rule or e.service_restart.rule) for s, e in events] == [
        ("ccmsec.ctl-provider.mode.changed", ""), ("ccmsec.ctl-provider.device.reset", "RST-3"),
        ("ccmsec.ctl-provider.service.restart.callmanager", "RST-3")]
    assert events[1][1].device_reset.all
    assert events[0][1].mode_changed.actor == "cli/cli" and events[0][1].mode_changed.rule == "MODE-2"
    assert (await provider.stub.GetSecurityMode(common_pb2.Empty())).mode == common_pb2.CLUSTER_MIXED
    mark = len(provider.events)
    again = await provider.stub.SetSecurityMode(ctl_provider_pb2.SecurityModeRequest(mode=common_pb2.CLUSTER_MIXED))
    assert list(again.events) == [] and await provider.events_after(mark, settle=0.4) == []


async def test_mode6_registry_refuses_a_cluster_reusing_our_tftp_path(provider):
    mixed = common_pb2.CLUSTER_MIXED
    with pytest.raises(grpc.aio.AioRpcError, match="MODE-6: .*cluster1.*already used by cluster local"):
        await provider.stub.RegisterTftpCluster(ctl_provider_pb2.TftpCluster(
            cluster_id="other", tftp_path="cluster1", mode=common_pb2.CLUSTER_NON_SECURE))
    with pytest.raises(grpc.aio.AioRpcError, match="MODE-6: .*same security mode"):
        await provider.stub.RegisterTftpCluster(ctl_provider_pb2.TftpCluster(
            cluster_id="other", tftp_path="cluster2", mode=mixed))
    reply = await provider.stub.RegisterTftpCluster(ctl_provider_pb2.TftpCluster(
        cluster_id="other", tftp_path="cluster2", alternate_path="cluster2b",
        mode=common_pb2.CLUSTER_NON_SECURE))
    assert [c.cluster_id for c in reply.clusters] == ["local", "other"]
    listed = await provider.stub.ListTftpClusters(common_pb2.Empty())
    assert [c.tftp_path for c in listed.clusters] == ["cluster1", "cluster2"]


class _SlowTftpSigner(tftp_signer_pb2_grpc.TftpSignerServicer):
    """A real gRPC tftp-signer whose PublishFile takes a while, as a busy one does; every other
    RPC (and the other peers' services on the same address) answers UNIMPLEMENTED. It orders
    publishes as tftp-signer does on arrival (a generation named in `takes_back` is refused,
    ABORTED, when it arrives later: the real one in test_tftp_signer_service.py::
    test_chk6_a_publish_arriving_after_its_take_back_is_refused) and keeps what it serves (`live`)."""

    def __init__(self):
        self.published: list[bytes] = []
        self.requests: list[tftp_signer_pb2.PublishFileRequest] = []  # as they arrived
        self.arrived = asyncio.Event()
        self.unimplemented = False  # answer PublishFile as a tftp-signer without it would
        self.delays: list[float] = []  # seconds the next PublishFiles take (then 0.3 each)
        self.taken_back: set[int] = set()
        self.live: bytes | None = None  # the CTLFile.tlv served (None: none)
        self.hold: asyncio.Event | None = None  # written at once, answered only once it is set

    async def PublishFile(self, request, context):  # noqa: N802
        if self.unimplemented:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.requests.append(request)
        self.taken_back.update(g for g in request.takes_back if g)
        if request.generation in self.taken_back:
            await context.abort(grpc.StatusCode.ABORTED, f"publish generation {request.generation} "
                                "was taken back by ctl-provider; not published")
        self.arrived.set()
        if self.hold is not None:  # written, its answer held back (the caller may die meanwhile)
            self.live = None if request.withdraw else request.content
            await self.hold.wait()
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0.3)
        self.live = None if request.withdraw else request.content
        self.published.append(request.content)
        return tftp_signer_pb2.PublishFileReply(path=f"/tftp/{request.cluster_path}/{request.name}",
                                                sha256=request.sha256)


@pytest.fixture
async def provider_with_signer(tmp_path, nats_server):
    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    peer = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(tmp_path)
    signer = _SlowTftpSigner()
    signer.peer = peer
    await _serve_signer(signer, tmp_path)
    svc, task, channel, stub = await _start(tmp_path, nats_server, host, free_port(host),
                                            free_port(host), peer_host=peer)
    harness = Harness(svc, task, tmp_path, stub, [])
    yield harness, signer
    await channel.close()
    if not harness.task.done():
        harness.svc.request_stop()
        await asyncio.wait_for(harness.task, 10)
    if signer.server is not None:
        await signer.server.stop(None)


async def _serve_signer(signer: _SlowTftpSigner, data: Path) -> None:
    """(Again) serve the stand-in tftp-signer at its address (`signer.server`; None when stopped)."""
    server = grpc.aio.server()
    tftp_signer_pb2_grpc.add_TftpSignerServicer_to_server(signer, server)
    server.add_secure_port(f"{signer.peer}:{GRPC_PORT_DEFAULT}", server_credentials(
        service_identity(data, "tftp-signer", "tftp-signer", signer.peer)))
    await server.start()
    signer.server = server


async def test_ctl2_concurrent_commits_cannot_both_pass_against_the_same_current_ctl(
        provider_with_signer, tokens):
    """CTL-2 under concurrency: two CTLs that each drop the other's signing token are both valid
    against the current CTL, but once one is recorded the other is signed by a token the phones no
    longer trust. Committed at the same time, exactly one must win and the other be refused."""
    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))).version == 1
    by_t1 = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t3"])  # drops t2
    by_t2 = await _ctl(provider, tokens["t2"], tokens["t2"], tokens["t3"])  # drops t1
    results = await asyncio.gather(
        provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=by_t1)),
        provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=by_t2)),
        return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 1, results
    assert refused[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "CTL-2" in refused[0].details()
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert current.version == 2 and current.ctl in (by_t1, by_t2)
    assert signer.published == [first, current.ctl]  # the refused file never reached TFTP


async def test_ctl2_commit_refuses_a_ctl_older_than_the_current_one(provider_with_signer, tokens):
    """CTL-2: a phone refuses a CTL whose timestamp is older than the one it holds (a replay — an
    old file may still list a token removed since). The provider published and recorded such a
    file as the new version, so every phone stayed on the old CTL while the cluster recorded
    another. Refused now, and nothing reaches TFTP; with --new-trust (trust lists reset) it passes."""
    provider, signer = provider_with_signer
    await provider.stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
    servers = await provider.fetch()
    records = build_records([tokens["t1"].certificate, tokens["t2"].certificate], servers)
    now = int(time.time())
    older = build_ctl(records, tokens["t1"], now - 3600)
    first = build_ctl(records, tokens["t1"], now)
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))).version == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=older))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "replay" in refused.value.details() and "CTL-2" in refused.value.details()
    assert (await provider.stub.GetCurrentCtl(common_pb2.Empty())).ctl == first
    assert signer.published == [first]
    same_second = build_ctl(records, tokens["t2"], now)  # not older: accepted
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=same_second))).version == 2
    reply = await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=older, new_trust=True))
    assert reply.version == 3 and signer.published == [first, same_second, older]


async def test_a_ctl_published_but_not_recorded_is_taken_back(provider_with_signer, tokens, monkeypatch):
    """Commit publishes, then records. When the record failed (the database locked or away) the new
    CTLFile.tlv stayed on the TFTP server — phones downloaded a CTL the cluster never recorded, with
    no RST-4 events — and the client got UNKNOWN and a traceback. Now the recorded CTL is
    published again and the refusal (UNAVAILABLE) says so; nothing else changed."""
    import sqlalchemy.exc

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)

    async def locked(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("INSERT INTO ctl_files", {}, Exception("database is locked"))
    monkeypatch.setattr(trust_mod, "record_ctl", locked)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(
            ctl=second, mode=common_pb2.CLUSTER_MIXED))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "could not be recorded" in refused.value.details()
    assert "version 1 is published again" in refused.value.details()
    assert signer.published == [first, second, first]
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert (current.version, current.ctl) == (1, first)
    assert (await provider.stub.GetSecurityMode(common_pb2.Empty())).mode == common_pb2.CLUSTER_NON_SECURE


async def test_chk6_a_record_the_database_refused_logs_and_answers_no_ctl_content(
        provider_with_signer, tokens, caplog):
    """CHK-6 / logging: the database refused the record (here a real SQLite trigger aborting the
    INSERT into ctl_files). The error SQLAlchemy raises renders the statement and its parameters
    — the CTL file's bytes among them — and ctl-provider logged it whole, and put its first 200
    characters in the refusal. Now the log and the refusal name the database's error only."""
    import sqlite3

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    with contextlib.closing(sqlite3.connect(provider.data / "ccmsec.db")) as db:
        db.execute("CREATE TRIGGER refuse_ctl BEFORE INSERT ON ctl_files "
                   "BEGIN SELECT RAISE(ABORT, 'ctl_files refused by the test'); END")
        db.commit()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))
    details = refused.value.details()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "could not be recorded" in details
    assert "ctl_files refused by the test" in details and "ctl_files refused by the test" in caplog.text
    assert "version 1 is published again" in details and signer.live == first
    for text in (details, caplog.text):
        assert "[parameters:" not in text and "[SQL:" not in text
        assert repr(second[:16])[2:-1] not in text and second[:16].hex() not in text


async def test_chk6_the_take_back_after_a_failed_record_runs_to_its_end_when_cancelled(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6: the record failed, the recorded CTL is being published again — and the commit is
    cancelled (shutdown, the client gone). The take-back completes before the cancellation goes
    on: cut mid-call, its write could land after the next commit's publish and put the old CTL
    back over a recorded one."""
    import sqlalchemy

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)

    async def locked(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("INSERT INTO ctl_files", {}, Exception("database is locked"))
    monkeypatch.setattr(trust_mod, "record_ctl", locked)
    signer.delays = [0.0, 0.8]  # the publish answers; the take-back takes a while
    commit = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_MIXED, False, "test"))
    async with asyncio.timeout(10):
        while len(signer.requests) < 3:  # the take-back is at the signer, not answered
            await asyncio.sleep(0.02)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    assert signer.requests[2].takes_back == [signer.requests[1].generation]
    assert signer.published == [first, second, first]  # the take-back was answered first


async def test_a_ctl_commit_cancelled_while_recording_takes_the_published_ctl_back(
        provider_with_signer, tokens, monkeypatch):
    """A commit cancelled (shutdown, the client gone) while its record was being written left the
    new CTLFile.tlv on the TFTP server with the old CTL recorded: phones downloaded a CTL the
    cluster never recorded. Cancellation now takes the failed-record path — the recorded CTL is
    published again, shielded: a second cancellation during that clean-up does not cut it short —
    and the CancelledError goes on."""
    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)

    recording = asyncio.Event()

    async def stuck_recording(*args, **kwargs):  # the deterministic cancellation point
        recording.set()
        await asyncio.Event().wait()
    monkeypatch.setattr(trust_mod, "record_ctl", stuck_recording)
    commit = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_MIXED, False, "test"))
    await asyncio.wait_for(recording.wait(), 10)
    assert signer.published == [first, second]  # live on the TFTP server, not recorded
    commit.cancel()
    await asyncio.sleep(0.05)  # the clean-up's PublishFile (0.3 s at this signer) is under way
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    assert signer.published == [first, second, first]
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert (current.version, current.ctl) == (1, first)
    assert (await provider.stub.GetSecurityMode(common_pb2.Empty())).mode == common_pb2.CLUSTER_NON_SECURE


async def test_chk6_a_commit_cancelled_while_publishing_names_its_publish_in_the_take_back(
        provider_with_signer, tokens):
    """CHK-6: a commit cancelled while its PublishFile is still on its way to the signer takes the
    CTL back (the recorded one published again). The late PublishFile could land after that and
    put the unrecorded CTL back; now every publish carries a fresh generation and the take-back
    names it (`takes_back`), which the signer refuses from then on
    (tests/integration/test_tftp_signer_service.py::test_chk6_a_publish_arriving_after_its_take_back_is_refused)."""
    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    signer.arrived.clear()
    commit = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_MIXED, False, "test"))
    await asyncio.wait_for(signer.arrived.wait(), 10)  # the publish is at the signer, not answered
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    initial, cancelled, take_back = signer.requests
    assert cancelled.content == second and take_back.content == first
    assert cancelled.generation != 0 and take_back.takes_back == [cancelled.generation]
    assert take_back.generation not in (0, cancelled.generation, initial.generation)
    assert initial.takes_back == cancelled.takes_back == []
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert (current.version, current.ctl) == (1, first)


async def test_chk6_a_publish_the_signer_did_not_answer_in_time_is_taken_back(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6: a PublishFile that times out (DEADLINE_EXCEEDED: a slow disk, a busy signer) may still
    be written by the signer afterwards — its write runs on in a thread — and would put live a CTL
    the refused commit never recorded. Like a cancelled commit, the refusal now takes it back: the
    recorded CTL is published again naming the timed-out publish's generation (`takes_back`), which
    the signer then refuses (test_tftp_signer_service.py::
    test_chk6_a_publish_arriving_after_its_take_back_is_refused); the refusal says so."""
    from ccmsec_ctl_provider import trust

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    monkeypatch.setattr(trust, "RPC_TIMEOUT", 1.0)
    signer.delays = [3.0, 0.0]  # the publish outlives its deadline; the take-back is answered
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second, mode=common_pb2.CLUSTER_MIXED))
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "version 1 is published again and that publish taken back" in refused.value.details()
    initial, timed_out, take_back = signer.requests
    assert timed_out.content == second and take_back.content == first
    assert timed_out.generation != 0 and take_back.takes_back == [timed_out.generation]
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert (current.version, current.ctl) == (1, first)


async def test_chk6_the_first_ctl_not_recorded_is_withdrawn_naming_its_publish(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6 for the cluster's first CTL (none recorded before): its record failed after the
    publish. There was nothing to publish back, so the unrecorded CTL stayed on the TFTP server
    and a late publish of it could not be refused ("no earlier CTL exists to put back"). Now the
    take-back is a withdraw naming the publish's generation (the signer removes the file and
    refuses that publish: test_tftp_signer_service.py::
    test_chk6_the_first_ctl_taken_back_is_withdrawn_and_its_late_publish_refused); no CTL and no
    mode change are recorded. Bad case too: the first publish got no answer in time."""
    import sqlalchemy.exc

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])

    async def locked(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("INSERT INTO ctl_files", {}, Exception("database is locked"))
    with monkeypatch.context() as patch:
        patch.setattr(trust_mod, "record_ctl", locked)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first, mode=common_pb2.CLUSTER_MIXED))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no earlier CTL exists, so CTLFile.tlv is withdrawn" in refused.value.details()
    published, withdrawn = signer.requests
    assert published.content == first and not published.withdraw
    assert withdrawn.withdraw and withdrawn.takes_back == [published.generation] != [0]
    assert withdrawn.content == b"" and withdrawn.generation not in (0, published.generation)
    assert (await provider.stub.GetCurrentCtl(common_pb2.Empty())).version == 0
    assert (await provider.stub.GetSecurityMode(common_pb2.Empty())).mode == common_pb2.CLUSTER_NON_SECURE

    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    signer.delays = [3.0, 0.0]  # the publish outlives its deadline; the withdraw is answered
    with pytest.raises(grpc.aio.AioRpcError) as unanswered:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))
    assert unanswered.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "CTLFile.tlv is withdrawn from the TFTP server and that publish taken back" in unanswered.value.details()
    timed_out, withdrawn = signer.requests[2:]
    assert withdrawn.withdraw and withdrawn.takes_back == [timed_out.generation] != [0]
    assert (await provider.stub.GetCurrentCtl(common_pb2.Empty())).version == 0


async def test_chk6_a_take_back_that_got_no_answer_is_named_by_the_next_publish(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6: the take-back (here the withdraw of the cluster's first CTL, its record failed) got
    no answer in time — the signer may still carry it out. The refusal says to run the CTL client
    again; that commit's publish then landed and was recorded, and the late take-back could land
    after it and remove (or overwrite) the CTL the cluster had just recorded. Now the next publish
    names the unanswered take-back in `takes_back`, so the signer refuses it if it comes later
    (test_tftp_signer_service.py::test_chk6_the_first_ctl_taken_back_is_withdrawn_and_its_late_publish_refused);
    once a publish carried it, the following one names nothing."""
    import sqlalchemy.exc

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 60.0)  # no background retry: the next commit names it

    async def locked(*args, **kwargs):
        raise sqlalchemy.exc.OperationalError("INSERT INTO ctl_files", {}, Exception("database is locked"))
    signer.delays = [0.0, 2.5]  # the publish is answered; its withdraw outlives its deadline
    with monkeypatch.context() as patch:
        patch.setattr(trust_mod, "record_ctl", locked)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))
    assert "putting back no CTL (CTLFile.tlv withdrawn) failed" in refused.value.details()
    published, withdrawn = signer.requests
    assert withdrawn.withdraw and withdrawn.takes_back == [published.generation] and withdrawn.generation

    again = await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))
    assert again.version == 1
    # ... and the publish the withdraw took back (kept in flight until a publish naming it is answered)
    assert signer.requests[2].content == first
    assert signer.requests[2].takes_back == [published.generation, withdrawn.generation]
    second = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))).version == 2
    assert signer.requests[3].content == second and signer.requests[3].takes_back == []


async def _two_unanswered_commits(provider, signer, ctl: bytes):
    """Two commits in a row whose publish and take-back (the recorded CTL put back) both outlive
    their deadline (RPC_TIMEOUT patched to 1 s): two take-backs the signer may still carry out.
    Returns the requests (publish, take-back A, publish, take-back B)."""
    signer.delays = [3.0, 3.0, 3.0, 3.0]
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=ctl))
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "putting back version 1 (so that publish cannot land later) failed" in refused.value.details()
    return signer.requests[-4:]


async def _stored_take_backs(svc) -> list[int]:
    from ccmsec.db.cluster import unsettled_take_backs

    async with svc.db() as session:
        return await unsettled_take_backs(session)


async def _stored_in_flight(svc) -> list[int]:
    from ccmsec.db.cluster import publishes_in_flight

    async with svc.db() as session:
        return await publishes_in_flight(session)


async def test_chk6_two_unanswered_take_backs_in_a_row_are_all_named_and_survive_a_restart(
        provider_with_signer, tokens, monkeypatch, nats_server):
    """CHK-6: ctl-provider remembered ONE unanswered take-back, in memory. Two in a row (A, then
    B): only B was named by the next publish, so A could still land at the signer over the CTL
    committed since; and a restart forgot both. Now every unanswered take-back is kept in
    `ctl_take_backs` (stored before it is sent) and named by every later publish — B names A too
    — until a publish naming them is answered; after a restart they are all still there, and the
    start's take-back (the publishes they took back were never recorded either: kept in flight)
    names every one (the signer then refuses each of them arriving late: test_tftp_signer_service.py::
    test_chk6_every_unanswered_take_back_a_publish_names_is_refused_when_it_lands_late); once it
    was answered they are gone: the following publish names none."""
    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 60.0)  # no background retry: a later publish names them
    publish_2, take_back_a, publish_3, take_back_b = await _two_unanswered_commits(provider, signer, second)
    assert take_back_a.content == take_back_b.content == first
    assert list(take_back_a.takes_back) == [publish_2.generation]
    # the publishes they took back are named too: not recorded, they may still land as well
    assert list(publish_3.takes_back) == [publish_2.generation, take_back_a.generation]
    assert list(take_back_b.takes_back) == [publish_2.generation, take_back_a.generation,
                                            publish_3.generation]  # the one it undoes last
    both = [take_back_a.generation, take_back_b.generation]
    publishes = [publish_2.generation, publish_3.generation]
    assert provider.svc.trust.unsettled_take_backs() == both
    assert await _stored_take_backs(provider.svc) == both
    assert await _stored_in_flight(provider.svc) == publishes

    # Restart: a new ctl-provider process on the same database. Its start takes the publishes
    # left in flight back (the recorded CTL published again), naming every one of them.
    settings = provider.svc.settings
    provider.svc.request_stop()
    await asyncio.wait_for(provider.task, 10)
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 5.0)
    signer.delays = []
    svc, task, channel, stub = await _start(provider.data, nats_server, settings.host, free_port(settings.host),
                                            free_port(settings.host), peer_host=settings.peers["tftp-signer"])
    provider.svc, provider.task, provider.stub = svc, task, stub
    try:
        recovered = signer.requests[-1]
        assert recovered.content == first
        assert list(recovered.takes_back) == [publish_2.generation, *both, publish_3.generation]
        assert await _stored_take_backs(svc) == [] and svc.trust.unsettled_take_backs() == []
        assert await _stored_in_flight(svc) == []
        assert (await stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))).version == 2
        named = signer.requests[-1]
        assert named.content == second and list(named.takes_back) == []
        third = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
        assert (await stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=third))).version == 3
        assert signer.requests[-1].content == third and list(signer.requests[-1].takes_back) == []
    finally:
        await channel.close()
        svc.request_stop()  # the fixture stops the service it started, not this one
        await asyncio.wait_for(task, 10)


def _former_publish_request():
    """PublishFileRequest as a tftp-signer built before the list read it: `uint64 takes_back = 6`,
    singular (a message class of its own pool, from that descriptor: no generated code changed)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="former_tftp_signer.proto", package="former",
                                               syntax="proto3")
    message = proto.message_type.add(name="PublishFileRequest")
    for number, name, kind in ((5, "generation", "TYPE_UINT64"), (6, "takes_back", "TYPE_UINT64"),
                               (7, "withdraw", "TYPE_BOOL")):
        message.field.add(name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("former.PublishFileRequest"))


async def test_chk6_a_signer_of_the_former_single_field_still_refuses_the_publish_a_take_back_undoes(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6, wire compatibility: a tftp-signer built before `takes_back` became a list reads the
    unpacked entries as the former singular field, so it keeps only the LAST one. A take-back named
    the publish it undoes first and the earlier unanswered take-backs after it, so such a signer
    remembered the oldest earlier take-back and not that publish — which could then land late and
    put the unrecorded CTL live. The publish a take-back undoes is named last. Bad case kept in
    view: the new signer still sees every generation named."""
    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 60.0)  # no background retry: a later publish names them
    publish_2, take_back_a, publish_3, take_back_b = await _two_unanswered_commits(provider, signer, second)
    assert sorted(take_back_b.takes_back) == sorted([publish_2.generation, publish_3.generation,
                                                     take_back_a.generation])
    former = _former_publish_request().FromString(take_back_b.SerializeToString())
    assert former.generation == take_back_b.generation
    assert former.takes_back == publish_3.generation, "a former signer would not refuse the publish undone"
    former_a = _former_publish_request().FromString(take_back_a.SerializeToString())
    assert former_a.takes_back == publish_2.generation


async def test_chk6_a_take_back_is_not_held_up_by_a_database_that_does_not_answer(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6: the record failed (the database locked), so the unrecorded CTL is live until the
    take-back puts the recorded one back. The take-back is stored in `ctl_take_backs` before it
    is sent — and that write waited for the same database: SQLite's 30 s busy wait (a stuck
    PostgreSQL: longer), while phones could download the unrecorded CTL. The store now waits
    TAKE_BACK_STORE_WAIT at most, the take-back goes out, and the store completes once the
    database answers; a commit after it waits for that store before storing its own publish, and
    leaves nothing behind once recorded."""
    import sqlite3
    import time

    import sqlalchemy

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    db_file = provider.svc.settings.db_url.split("///", 1)[1]
    holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)

    async def locked(*args, **kwargs):  # another writer holds the database: the record fails
        holder.execute("BEGIN IMMEDIATE")
        raise sqlalchemy.exc.OperationalError("INSERT INTO ctl_files", {}, Exception("database is locked"))
    monkeypatch.setattr(trust_mod, "record_ctl", locked)
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    signer.delays = [0.0, 3.0]  # the publish answers; the take-back gets no answer in time
    commit = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_MIXED, False, "test"))
    try:
        async with asyncio.timeout(10):
            while len(signer.requests) < 2 or not holder.in_transaction:
                await asyncio.sleep(0.02)
        locked_at = time.monotonic()
        async with asyncio.timeout(8):
            while len(signer.requests) < 3:
                await asyncio.sleep(0.02)
        waited = time.monotonic() - locked_at
        with pytest.raises(trust_mod.Refused):
            await asyncio.wait_for(commit, 10)
        # The next commit while that store still waits: its write-ahead intent waits for it (the
        # store read the intents before it), then the commit goes through naming the take-back.
        monkeypatch.setattr(trust_mod, "record_ctl", record_ctl)
        monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 5.0)
        again = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_MIXED, False, "test"))
        await asyncio.sleep(0.5)
        assert len(signer.requests) == 3 and not again.done()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert waited < trust_mod.TAKE_BACK_STORE_WAIT + 1.5, waited
    take_back = signer.requests[2]
    assert take_back.content == first and list(take_back.takes_back) == [signer.requests[1].generation]
    assert (await asyncio.wait_for(again, 40))["version"] == 2
    assert take_back.generation in signer.requests[3].takes_back and signer.requests[3].content == second
    from ccmsec.db.cluster import publishes_in_flight
    async with provider.svc.db() as session:
        assert await publishes_in_flight(session) == []
    assert await _stored_take_backs(provider.svc) == [] == provider.svc.trust.unsettled_take_backs()


async def test_chk6_unanswered_take_backs_beyond_the_bound_drop_the_oldest_with_a_warning(
        provider_with_signer, tokens, monkeypatch, caplog):
    """CHK-6, the bound (MAX_UNSETTLED_TAKE_BACKS, 64; 1 here): one take-back more than it, all
    unanswered, drops the oldest — from the database too — and says so (a warning naming its
    generation: it is no longer named and could still land over a later CTL). Bad case kept in
    view: the next publish names only the one kept."""
    import logging

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 60.0)  # no background retry: the next commit names them
    monkeypatch.setattr(trust_mod, "MAX_UNSETTLED_TAKE_BACKS", 1)
    caplog.set_level(logging.WARNING, logger="ccmsec.ctl-provider")
    _, take_back_a, publish_3, take_back_b = await _two_unanswered_commits(provider, signer, second)
    assert "2 take-backs in a row got no answer from the tftp-signer" in caplog.text
    assert f"(generations {take_back_a.generation}) are no longer named" in caplog.text
    assert provider.svc.trust.unsettled_take_backs() == [take_back_b.generation]
    assert await _stored_take_backs(provider.svc) == [take_back_b.generation]
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 5.0)
    signer.delays = []
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))).version == 2
    # the publishes in flight are bounded alike: this commit's own intent dropped publish 3's
    assert list(signer.requests[-1].takes_back) == [take_back_b.generation]
    assert f"publishes not taken back in a row got no answer from the tftp-signer; the oldest " \
        f"(generations {publish_3.generation})" in caplog.text
    assert await _stored_take_backs(provider.svc) == [] and await _stored_in_flight(provider.svc) == []


async def test_chk6_the_take_back_of_an_unanswered_publish_runs_to_its_end_when_cancelled(
        provider_with_signer, tokens, monkeypatch):
    """CHK-6: the commit cancelled (shutdown, the client gone) while it takes back a publish that
    got no answer: the take-back still completes before the cancellation goes on — cut mid-call,
    it could land at the signer after the next commit's publish and put an old CTL back over it."""
    from ccmsec_ctl_provider import trust

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    monkeypatch.setattr(trust, "RPC_TIMEOUT", 1.0)
    signer.delays = [3.0, 0.5]  # the publish outlives its deadline; the take-back takes a while
    commit = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_MIXED, False, "test"))
    async with asyncio.timeout(10):
        while len(signer.requests) < 3:  # the take-back is at the signer, not answered
            await asyncio.sleep(0.02)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    assert signer.requests[2].takes_back == [signer.requests[1].generation]
    assert signer.published == [first, first]  # the take-back was answered before the cancellation went on


async def test_a_ctl_commit_cancelled_after_its_record_landed_leaves_the_published_ctl(
        provider_with_signer, tokens, monkeypatch):
    """The other side of the same race: cancelled once the record's transaction had committed, the
    published file is the recorded one — taking it back would make them disagree the other way."""
    from ccmsec_ctl_provider.trust import TrustOperations

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)

    real_record = TrustOperations._record
    recorded = asyncio.Event()

    async def cancelled_after_commit(self, *args, **kwargs):
        await real_record(self, *args, **kwargs)
        recorded.set()
        await asyncio.Event().wait()  # as if cancelled on its way back from COMMIT
    monkeypatch.setattr(TrustOperations, "_record", cancelled_after_commit)
    commit = asyncio.create_task(provider.svc.trust.commit(second, common_pb2.CLUSTER_SECURITY_MODE_UNSPECIFIED, False, "test"))
    await asyncio.wait_for(recorded.wait(), 10)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    assert signer.published == [first, second]
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert (current.version, current.ctl) == (2, second)


def _sqlite_rows(data: Path, sql: str) -> list[tuple]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(data / "ccmsec.db")) as db:
        return db.execute(sql).fetchall()


async def _crash_between_publish_and_record(provider, signer, nats_server, ctl: bytes, recorded=1):
    """The ctl-provider, as a process of its own on the test's database, commits `ctl`; its
    PublishFile reaches the signer, which writes it, and the process is killed (SIGKILL: no
    clean-up, no take-back) before the answer — so before the record. Returns that request."""
    import json
    import os
    import signal
    import sys

    settings = provider.svc.settings
    provider.svc.request_stop()  # the in-process one stops first: one ctl-provider at a time
    await asyncio.wait_for(provider.task, 10)
    grpc_port = free_port(settings.host)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CCMSEC_")},
           "CCMSEC_SERVICE": "ctl-provider", "CCMSEC_DATA_DIR": str(provider.data),
           "CCMSEC_HOST": settings.host, "CCMSEC_GRPC_PORT": str(grpc_port), "CCMSEC_METRICS_PORT": "0",
           "CCMSEC_NATS_URL": nats_server, "CCMSEC_CTL_PROVIDER_PORT": str(free_port(settings.host)),
           "CCMSEC_PEERS": json.dumps(settings.peers)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ccmsec_ctl_provider", env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    channel = secure_channel(client_identity(provider.data), settings.host, grpc_port, "ctl-provider")
    try:
        stub = ctl_provider_pb2_grpc.CtlProviderStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                await stub.Status(common_pb2.Empty(), timeout=1)
                break
            except grpc.aio.AioRpcError:
                assert proc.returncode is None and time.monotonic() < deadline, "ctl-provider did not start"
                await asyncio.sleep(0.1)
        signer.hold, signer.arrived = asyncio.Event(), asyncio.Event()
        commit = asyncio.ensure_future(stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=ctl), timeout=30))
        await asyncio.wait_for(signer.arrived.wait(), 10)
        crashed = signer.requests[-1]
        # write-ahead: its generation was stored, as a publish in flight, before it was sent
        assert _sqlite_rows(provider.data, "SELECT generation, kind FROM ctl_take_backs") == \
            [(crashed.generation, "publish")]
        proc.send_signal(signal.SIGKILL)  # by its PID: the process this test started
        await asyncio.wait_for(proc.wait(), 10)
        with pytest.raises(grpc.aio.AioRpcError):
            await commit
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await channel.close()
        signer.hold.set()
        signer.hold = None
    assert crashed.content == ctl and signer.live == ctl  # the defect's state: live, unrecorded
    assert _sqlite_rows(provider.data, "SELECT max(version) FROM ctl_files") == [(recorded,)]
    return crashed


async def _restart(provider, nats_server):
    settings = provider.svc.settings
    svc, task, channel, stub = await _start(provider.data, nats_server, settings.host, free_port(settings.host),
                                            free_port(settings.host), peer_host=settings.peers["tftp-signer"])
    provider.svc, provider.task, provider.stub = svc, task, stub
    return channel


async def test_chk6_a_ctl_published_when_ctl_provider_crashed_before_its_record_is_taken_back_at_start(
        provider_with_signer, tokens, nats_server, caplog):
    """CHK-6 / CTL-2: ctl-provider killed (SIGKILL, power loss) after its PublishFile reached the
    signer and before the record committed: no clean-up ran, the unrecorded CTL stayed live at the
    TFTP server — phones downloaded a CTL the cluster never recorded — and nothing took it back
    after the restart. Now the publish's generation is stored before it is sent (write-ahead
    intent, `ctl_take_backs` kind `publish`, cleared by the record: a normal commit leaves none);
    the next start, before serving commits, publishes the recorded CTL again naming it, so the
    signer serves the recorded CTL and refuses that publish if it arrives late."""
    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))).version == 1
    assert await _stored_in_flight(provider.svc) == [] and signer.live == first  # normal: no intent left
    second = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t3"])
    crashed = await _crash_between_publish_and_record(provider, signer, nats_server, second)

    caplog.set_level(logging.WARNING, logger="ccmsec.ctl-provider")
    before = len(signer.requests)
    channel = await _restart(provider, nats_server)
    try:
        # taken back during start-up, before its first answer: the recorded CTL served again
        (recovered,) = signer.requests[before:]
        assert recovered.content == first and list(recovered.takes_back) == [crashed.generation]
        assert recovered.generation not in (0, crashed.generation)
        assert signer.live == first
        assert await _stored_in_flight(provider.svc) == [] and await _stored_take_backs(provider.svc) == []
        assert f"CTL publish generation(s) {crashed.generation} sent but never recorded" in caplog.text
        status = await provider.stub.Status(common_pb2.Empty())
        assert status.state == "serving" and "ctl_publishes_unrecorded" not in status.details
        current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
        assert (current.version, current.ctl) == (1, first)
        # the crashed publish arriving late (still on its way) is refused: the recorded CTL stays
        late = tftp_signer_pb2_grpc.TftpSignerStub(provider.svc.peer_channel("tftp-signer"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.PublishFile(crashed, timeout=5)
        assert refused.value.code() == grpc.StatusCode.ABORTED and signer.live == first
        # and the cluster goes on: the next commit names nothing left over
        assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))).version == 2
        assert list(signer.requests[-1].takes_back) == [] and signer.live == second
        assert await _stored_in_flight(provider.svc) == []
    finally:
        await channel.close()


async def test_chk6_the_first_ctl_published_when_ctl_provider_crashed_is_withdrawn_at_start(
        provider_with_signer, tokens, nats_server):
    """CHK-6: the crash came during the cluster's first commit — no CTL recorded to put back: the
    start withdraws CTLFile.tlv naming the crashed publish, so the TFTP server serves none (as the
    record says) and refuses that publish if it arrives late."""
    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    crashed = await _crash_between_publish_and_record(provider, signer, nats_server, first, recorded=None)
    before = len(signer.requests)
    channel = await _restart(provider, nats_server)
    try:
        (withdrawn,) = signer.requests[before:]
        assert withdrawn.withdraw and list(withdrawn.takes_back) == [crashed.generation]
        assert signer.live is None and await _stored_in_flight(provider.svc) == []
        assert not (await provider.stub.GetCurrentCtl(common_pb2.Empty())).present
        late = tftp_signer_pb2_grpc.TftpSignerStub(provider.svc.peer_channel("tftp-signer"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await late.PublishFile(crashed, timeout=5)
        assert refused.value.code() == grpc.StatusCode.ABORTED and signer.live is None
    finally:
        await channel.close()


async def test_chk6_signer_down_at_restart_keeps_the_crashed_publish_pending_until_it_is_taken_back(
        provider_with_signer, tokens, nats_server, monkeypatch):
    """CHK-6, bad case: the tftp-signer cannot be reached when ctl-provider starts after the crash.
    The start is not blocked: the service comes up DEGRADED, its Status naming the generation
    not taken back, the intent is kept; once the signer is back the take-back is retried and
    done (the recorded CTL served again, the crashed generation named) and it is SERVING."""
    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    crashed = await _crash_between_publish_and_record(provider, signer, nats_server, second)
    await signer.server.stop(None)  # the tftp-signer is down
    signer.server = None
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 0.3)
    started = time.monotonic()
    channel = await _restart(provider, nats_server)
    try:
        assert time.monotonic() - started < 15  # one bounded try, not a wait for the signer
        status = await provider.stub.Status(common_pb2.Empty())
        assert status.state == "degraded"
        assert "CHK-6" in status.details["degraded"] and str(crashed.generation) in status.details["degraded"]
        assert status.details["ctl_publishes_unrecorded"] == str(crashed.generation)
        await asyncio.sleep(1.0)  # a few retries, still unreachable: kept
        assert await _stored_in_flight(provider.svc) == [crashed.generation]
        assert signer.live == second
        before = len(signer.requests)
        await _serve_signer(signer, provider.data)  # back
        async with asyncio.timeout(15):
            while (await provider.stub.Status(common_pb2.Empty())).state != "serving":
                await asyncio.sleep(0.1)
        recovered = signer.requests[before]
        assert recovered.content == first and crashed.generation in recovered.takes_back
        assert signer.live == first and await _stored_in_flight(provider.svc) == []
        status = await provider.stub.Status(common_pb2.Empty())
        assert "degraded" not in status.details and "ctl_publishes_unrecorded" not in status.details
    finally:
        await channel.close()


async def test_chk6_a_crashed_publish_settled_by_a_commit_is_not_blamed_on_a_later_unanswered_one(
        provider_with_signer, tokens, nats_server, monkeypatch):
    """CHK-6, bad case: the start-up take-back failed (signer down: DEGRADED), then a commit's
    answered publish named the crashed generation and so settled it. The start-up's error was kept
    all the same, so a later commit whose publish and take-back both got no answer (an ordinary
    unanswered publish, no crash) made ctl-provider DEGRADED again claiming a publish "sent before
    ctl-provider stopped" was never recorded — with no retry running to clear it. Once nothing the
    start left is pending, the start-up's problem is over."""
    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    crashed = await _crash_between_publish_and_record(provider, signer, nats_server, second)
    await signer.server.stop(None)  # the tftp-signer is down at the restart
    signer.server = None
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 60.0)  # no retry during the test: a commit settles it
    channel = await _restart(provider, nats_server)
    try:
        assert (await provider.stub.Status(common_pb2.Empty())).state == "degraded"
        await _serve_signer(signer, provider.data)
        await asyncio.wait_for(provider.svc.peer_channel("tftp-signer").channel_ready(), 30)
        assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))).version == 2
        assert crashed.generation in signer.requests[-1].takes_back
        assert provider.svc.trust.recovery_problem == ""
        # an unanswered publish whose take-back got no answer either: no crash, nothing from the start
        third = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
        monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
        signer.delays = [3.0, 3.0]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=third))
        assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert provider.svc.trust.unrecorded_publishes()  # listed in Status, as before
        problem = provider.svc.trust.recovery_problem  # and retried in the background (DEGRADED)
        assert "whose take-back got no answer" in problem  # but not blamed on a crash
        assert "stopped" not in problem and str(crashed.generation) not in problem
        await provider.svc._set_degraded("")  # what the bus watchdog does at its next check
        status = await provider.stub.Status(common_pb2.Empty())
        assert status.state == "degraded" and "stopped" not in status.details["degraded"]
    finally:
        await channel.close()


async def test_chk6_a_publish_left_unanswered_while_running_is_taken_back_in_the_background(
        provider_with_signer, tokens, monkeypatch, caplog):
    """CHK-6 / CTL-2: a commit's publish and its take-back both got no answer while ctl-provider ran
    (no crash). Status listed it in `ctl_publishes_unrecorded`, but nothing took it back until the
    next commit or a restart — the unrecorded CTL could stay live at the TFTP server. Now the
    start-up's retry loop takes it back in the background (every RECOVERY_RETRY seconds, under the
    commits' lock), DEGRADED meanwhile. Bad case first: the signer still not answering — DEGRADED
    stays, the take-back is tried again, and one warning is logged, not one per try. Once the
    signer answers: the recorded CTL is published again naming that publish, SERVING again."""
    import logging

    from ccmsec_ctl_provider import trust as trust_mod

    provider, signer = provider_with_signer
    first, second = await _committed_and_next(provider, tokens)
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    monkeypatch.setattr(trust_mod, "RECOVERY_RETRY", 0.3)
    caplog.set_level(logging.WARNING, logger="ccmsec")
    signer.delays = [3.0] * 50  # the publish, its take-back and the retries: none answered in time
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "putting back version 1 (so that publish cannot land later) failed" in refused.value.details()
    publish, take_back = signer.requests[-2:]
    assert publish.content == second and take_back.content == first
    async with asyncio.timeout(5):
        while (await provider.stub.Status(common_pb2.Empty())).state != "degraded":
            await asyncio.sleep(0.1)
    await asyncio.sleep(3.5)  # a few retries (1 s deadline each), the signer still not answering
    status = await provider.stub.Status(common_pb2.Empty())
    assert status.state == "degraded" and str(publish.generation) in status.details["ctl_publishes_unrecorded"]
    assert "whose take-back got no answer" in status.details["degraded"]
    assert "stopped" not in status.details["degraded"]
    retries = signer.requests[3:]
    assert len(retries) >= 2
    assert all(r.content == first and r.takes_back[-1] == publish.generation for r in retries)
    warned = [r for r in caplog.records if f"generation(s) {publish.generation} not taken back yet" in r.getMessage()]
    assert len(warned) == 1
    assert len([r for r in caplog.records if r.getMessage().startswith("DEGRADED")]) <= 2

    signer.delays = []  # the signer answers again
    async with asyncio.timeout(15):
        while (await provider.stub.Status(common_pb2.Empty())).state != "serving":
            await asyncio.sleep(0.1)
    status = await provider.stub.Status(common_pb2.Empty())
    assert "degraded" not in status.details and "ctl_publishes_unrecorded" not in status.details
    assert await _stored_in_flight(provider.svc) == [] and await _stored_take_backs(provider.svc) == []
    assert f"CTL publish generation(s) {publish.generation} taken back: version 1 published again" in caplog.text
    await asyncio.sleep(3.5)  # every request held back has landed by now
    assert signer.live == first  # the recorded CTL is what the TFTP server serves
    current = await provider.stub.GetCurrentCtl(common_pb2.Empty())
    assert (current.version, current.ctl) == (1, first)


def _sqlite_execute(data: Path, sql: str) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(data / "ccmsec.db")) as db:
        db.execute(sql)
        db.commit()


async def test_chk6_a_take_back_after_a_failed_read_never_deletes_rows_stored_earlier(
        provider_with_signer, tokens, monkeypatch, caplog):
    """CHK-6: `_remember` could not read `ctl_take_backs` (here the table is really gone for a
    while: renamed in the database) and went on from an empty set; the next store wrote that set,
    deleting every row stored earlier — take-backs and publishes the signer may still write, no
    longer named by any publish nor taken back at a restart. Now the take-back still goes out, and
    every later write reads and merges the stored rows first: none is lost, and the next take-back
    names them. Bad case kept in view: the store while the table is gone fails, logged."""
    import logging

    from ccmsec.db.cluster import save_publishes_in_flight, save_unsettled_take_backs
    from ccmsec_ctl_provider import trust as trust_mod
    from ccmsec_ctl_provider.trust import TrustOperations

    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))).version == 1
    async with provider.svc.db() as session, session.begin():  # stored earlier, by an earlier process
        await save_unsettled_take_backs(session, [111])
        await save_publishes_in_flight(session, [222])
    ops = TrustOperations(provider.svc)  # this state has read nothing yet
    monkeypatch.setattr(trust_mod, "RPC_TIMEOUT", 1.0)
    caplog.set_level(logging.WARNING, logger="ccmsec.ctl-provider")
    stub = tftp_signer_pb2_grpc.TftpSignerStub(provider.svc.peer_channel("tftp-signer"))
    signer.delays = [3.0, 3.0]  # neither take-back answered: both stay unsettled
    _sqlite_execute(provider.data, "ALTER TABLE ctl_take_backs RENAME TO ctl_take_backs_away")
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await ops._publish_back(stub, first, 333)
        if ops._store is not None:
            await asyncio.wait({ops._store})
    finally:
        _sqlite_execute(provider.data, "ALTER TABLE ctl_take_backs_away RENAME TO ctl_take_backs")
    sent = signer.requests[-1]
    assert sent.content == first and list(sent.takes_back) == [333]  # sent all the same
    assert "the unanswered take-backs could not be read" in caplog.text
    assert "could not be saved" in caplog.text
    with pytest.raises(grpc.aio.AioRpcError):
        await ops._publish_back(stub, first, 333)  # the next change is written: merged, not replaced
    if ops._store is not None:
        await asyncio.wait({ops._store})
    again = signer.requests[-1]
    rows = set(_sqlite_rows(provider.data, "SELECT generation, kind FROM ctl_take_backs"))
    assert {(111, "take_back"), (222, "publish"), (sent.generation, "take_back"),
            (again.generation, "take_back")} <= rows
    assert {111, 222, sent.generation} <= set(again.takes_back) and again.takes_back[-1] == 333


async def test_chk6_a_cancellation_during_a_take_back_that_then_fails_is_not_lost():
    """CHK-6: `_to_the_end` runs a take-back to its end whatever cancellations arrive, then raises
    the cancellation. When the take-back then failed (the signer gone: no answer, the channel
    closed at shutdown) that failure was raised instead and the cancellation lost — the start-up
    retry (`recover` catches the signer's error) went on trying every RECOVERY_RETRY seconds after
    the shutdown had cancelled it. The cancellation now goes on, whatever the step ended with."""
    from ccmsec_ctl_provider.trust import _to_the_end

    async def take_back_then_fail():
        await asyncio.sleep(0.2)
        raise RuntimeError("the signer did not answer")

    runner = asyncio.ensure_future(_to_the_end(take_back_then_fail()))
    await asyncio.sleep(0.05)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert runner.cancelled()
    # not cancelled: the step's own outcome, error or result
    with pytest.raises(RuntimeError):
        await _to_the_end(take_back_then_fail())


async def test_chk6_a_commit_refused_by_its_checks_sends_nothing_and_leaves_no_intent(
        provider_with_signer, tokens):
    """CHK-6 / CTL-1 / CTL-2, bad cases: a commit the CTL checks refuse is refused before its
    write-ahead intent is stored — nothing reaches the signer, `ctl_take_backs` keeps no row of
    either kind, Status lists nothing unrecorded — and the next commit names nothing."""
    provider, signer = provider_with_signer
    first = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=first))).version == 1
    sent = len(signer.requests)
    refused_ones = [(await _ctl(provider, tokens["t1"], tokens["t1"]), "CTL-1"),  # one token
                    (await _ctl(provider, tokens["t3"], tokens["t3"], tokens["t2"]), "CTL-2"),  # untrusted signer
                    (b"not a CTL", "not a valid signed CTL")]
    for ctl, rule in refused_ones:
        with pytest.raises(grpc.aio.AioRpcError, match=rule):
            await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=ctl))
    assert len(signer.requests) == sent
    assert _sqlite_rows(provider.data, "SELECT generation, kind FROM ctl_take_backs") == []
    assert provider.svc.trust.publishes_in_flight() == [] and provider.svc.trust.unsettled_take_backs() == []
    assert "ctl_publishes_unrecorded" not in (await provider.stub.Status(common_pb2.Empty())).details
    second = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t3"])
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=second))).version == 2
    assert list(signer.requests[-1].takes_back) == []


async def test_metrics_ctl_version_mixed_mode_and_token_expiry(provider, tokens):
    """Issue 16: the CTL version (0 while none exists), the cluster mode and each security token's
    certificate expiry (DATA/tokens), as sampled for the metrics endpoint."""
    from ccmsec.runtime.metrics import REGISTRY

    def gauge(metric, **labels):
        return REGISTRY.get_sample_value(metric, labels)

    await provider.svc.sample_metrics()
    assert gauge("ccmsec_ctl_version", node="ctl-provider") == 0
    assert gauge("ccmsec_cluster_mixed_mode", node="ctl-provider") == 0
    # A token in the cluster's token folder: its expiry appears (a token elsewhere does not count).
    ca = ensure_manufacturer_ca(provider.data / "pki")
    token = create_software_token(provider.data / "tokens", "opsmetric", "pw", ca)
    ctl = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    async with provider.svc.db() as session, session.begin():
        version = await record_ctl(session, content=ctl, sha256="0" * 64, signer="t1", signer_serial="01",
                                   records=5, tftp_path="cluster1")
    await provider.svc.sample_metrics()
    assert gauge("ccmsec_ctl_version", node="ctl-provider") == version >= 1
    assert gauge("ccmsec_certificate_expiry_timestamp_seconds", kind="token", name="opsmetric") == \
        token.certificate.not_valid_after_utc.timestamp()
    assert gauge("ccmsec_certificate_expiry_timestamp_seconds", kind="identity", name="ctl-provider") > time.time()


async def test_commit_never_writes_into_the_tftp_signers_folder(provider_with_signer, tokens):
    """Issue 9 §5: the signed files are tftp-signer's. A tftp-signer without PublishFile used to
    make ctl-provider write DATA/tftp/<path>/CTLFile.tlv itself; now the commit is refused with the
    signer's answer, nothing is recorded and nothing appears in tftp-signer's folder."""
    provider, signer = provider_with_signer
    signer.unimplemented = True
    ctl = await _ctl(provider, tokens["t1"], tokens["t1"], tokens["t2"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=ctl))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "tftp-signer did not publish CTLFile.tlv" in refused.value.details()
    assert not (await provider.stub.GetCurrentCtl(common_pb2.Empty())).present
    tftp = provider.data / "tftp"
    assert not tftp.exists() or not any(tftp.rglob("*"))
    signer.unimplemented = False
    assert (await provider.stub.CommitCtl(ctl_provider_pb2.CommitCtlRequest(ctl=ctl))).version == 1
    assert signer.published == [ctl]
