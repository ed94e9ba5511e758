"""Authorization of every RPC (issue 9 §1, §2) over real mutual TLS with a certificate per role.

One runtime server per proto service (the service's own identity, as `ccmsec up` issues it); the
walk calls every method of every `ccmsec.v1` service as every role and checks that each role outside
the method's allowed set gets PERMISSION_DENIED naming the caller and the method, and that an
allowed role gets through to the handler (here the generated base servicer: UNIMPLEMENTED). Then
the certificate rules: forged, missing or duplicate identity URIs, another CA, a client-only
certificate used as a server.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil

import grpc
import pytest
from google.protobuf import message_factory

import ccmsec_proto
from ccmsec.cluster import pki
from ccmsec.pki import ca as ca_mod
from ccmsec.runtime import rpc_policy
from ccmsec.runtime.authz import Gate
from ccmsec.runtime.grpcio import GrpcServer, check_health, secure_channel
from ccmsec.runtime.identity import IDENTITY_ROLES, TlsIdentity
from ccmsec.runtime.metrics import GRPC_DENIED
from tests.conftest import free_port

HOST = "127.0.0.1"
SERVICE_ROLE = {
    "ccmsec.v1.CallManager": "callmanager", "ccmsec.v1.Capf": "capf",
    "ccmsec.v1.CtlProvider": "ctl-provider", "ccmsec.v1.KeyManager": "keymanager",
    "ccmsec.v1.PhoneSim": "phone-sim", "ccmsec.v1.Srst": "srst",
    "ccmsec.v1.SrtpGateway": "srtp-gateway", "ccmsec.v1.TftpSigner": "tftp-signer",
    "ccmsec.v1.Outbox": "keymanager",  # every role serves its own outbox; one is enough here
}


def _services():
    """(service descriptor, generated module) for every ccmsec.v1 service."""
    out = []
    for info in pkgutil.iter_modules(ccmsec_proto.__path__):
        if info.name.endswith("_pb2"):
            pb2 = importlib.import_module(f"ccmsec_proto.{info.name}")
            grpc_mod = importlib.import_module(f"ccmsec_proto.{info.name}_grpc")
            out += [(s, grpc_mod) for s in pb2.DESCRIPTOR.services_by_name.values()]
    return out


def _identity_for(data, role: str) -> TlsIdentity:
    if role == "cli":
        return pki.issue_client_identity(data, "walker")
    if role == "admin-api":
        return pki.issue_identity(data, "admin-api", "callmanager", data / "admin", dns=["admin"], ips=[HOST])
    return pki.issue_service_identity(data, role, role, HOST)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    """Identities for every role and one running server per proto service, in one event loop."""
    data = tmp_path_factory.mktemp("authz")
    identities = {role: _identity_for(data, role) for role in IDENTITY_ROLES}
    return data, identities


async def _start_servers(identities, refusals):
    servers = {}
    for desc, grpc_mod in _services():
        role = SERVICE_ROLE[desc.full_name]
        server = GrpcServer(identities[role], HOST, free_port(HOST), metrics=True)
        base = getattr(grpc_mod, f"{desc.name}Servicer")()
        server.add(getattr(grpc_mod, f"add_{desc.name}Servicer_to_server"), base, desc.full_name)
        server.gate.on_denied = refusals.append
        await server.start()
        await server.set_serving(True)
        servers[desc.full_name] = server
    return servers


async def _call(channel, method: str, input_desc):
    request = message_factory.GetMessageClass(input_desc)()
    call = channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=lambda b: b)
    try:
        await call(request, timeout=10)
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


async def test_every_rpc_refuses_every_role_outside_its_policy(plane):
    """Walk all RPCs × all roles: PERMISSION_DENIED exactly outside the allowed set (issue 9 §2)."""
    _, identities = plane
    refusals = []
    servers = await _start_servers(identities, refusals)
    checked = denied = 0
    try:
        for desc, _ in _services():
            server = servers[desc.full_name]
            port = int(server.address.rsplit(":", 1)[1])
            for role in IDENTITY_ROLES:
                async with secure_channel(identities[role], HOST, port, SERVICE_ROLE[desc.full_name]) as ch:
                    for m in desc.methods:
                        method = f"/{desc.full_name}/{m.name}"
                        code, details = await _call(ch, method, m.input_type)
                        checked += 1
                        if rpc_policy.is_allowed(method, role):
                            assert code is grpc.StatusCode.UNIMPLEMENTED, (method, role, code, details)
                        else:
                            denied += 1
                            assert code is grpc.StatusCode.PERMISSION_DENIED, (method, role, code, details)
                            caller = identities[role].identity
                            assert f"{caller} ({caller.uri}) may not call {method}" in details
    finally:
        for server in servers.values():
            await server.stop(0)
    assert checked == len(rpc_policy.POLICY) * len(IDENTITY_ROLES) - 4 * len(IDENTITY_ROLES)  # health, reflection x2
    assert denied > checked // 2
    assert len(refusals) > 0 and all(r.caller is not None for r in refusals)


async def test_a_method_without_policy_entry_is_refused_for_every_role(plane):
    """Default deny: drop one entry from the table the gate enforces and nobody may call it."""
    _, identities = plane
    policy = dict(rpc_policy.POLICY)
    del policy["/ccmsec.v1.KeyManager/GenerateCallKeys"]
    from ccmsec_proto import keymanager_pb2, keymanager_pb2_grpc

    server = GrpcServer(identities["keymanager"], HOST, free_port(HOST))
    server.gate = Gate("keymanager/keymanager", policy=policy)
    server.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, keymanager_pb2_grpc.KeyManagerServicer(),
               "ccmsec.v1.KeyManager")
    await server.start()
    port = int(server.address.rsplit(":", 1)[1])
    try:
        for role in IDENTITY_ROLES:
            async with secure_channel(identities[role], HOST, port, "keymanager") as ch:
                code, details = await _call(ch, "/ccmsec.v1.KeyManager/GenerateCallKeys",
                                            keymanager_pb2.CallKeysRequest.DESCRIPTOR)
                assert code is grpc.StatusCode.PERMISSION_DENIED, role
                assert "no policy entry" in details and "default deny" in details
    finally:
        await server.stop(0)


async def test_refusals_are_counted_logged_once_each_and_rate_limited(plane, caplog):
    _, identities = plane
    from ccmsec_proto import keymanager_pb2, keymanager_pb2_grpc

    refusals = []
    server = GrpcServer(identities["keymanager"], HOST, free_port(HOST))
    server.gate.on_denied = refusals.append
    server.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, keymanager_pb2_grpc.KeyManagerServicer(),
               "ccmsec.v1.KeyManager")
    await server.start()
    port = int(server.address.rsplit(":", 1)[1])
    method = "/ccmsec.v1.KeyManager/GenerateCallKeys"
    before = GRPC_DENIED.labels(method, "phone-sim")._value.get()
    try:
        with caplog.at_level(logging.WARNING, logger="ccmsec.authz"):
            async with secure_channel(identities["phone-sim"], HOST, port, "keymanager") as ch:
                codes = await asyncio.gather(*(_call(ch, method, keymanager_pb2.CallKeysRequest.DESCRIPTOR)
                                               for _ in range(60)))
    finally:
        await server.stop(0)
    assert {c for c, _ in codes} == {grpc.StatusCode.PERMISSION_DENIED}
    assert GRPC_DENIED.labels(method, "phone-sim")._value.get() - before == 60  # every one counted
    lines = [r for r in caplog.records if r.name == "ccmsec.authz"]
    assert 1 <= len(lines) <= 30 and len(lines) == len(refusals)  # bounded, one line per report
    assert "refused /ccmsec.v1.KeyManager/GenerateCallKeys for phone-sim/phone-sim" in lines[0].getMessage()
    assert server.gate.denied == 60
    # What was not reported one by one is carried by the next report.
    assert sum(r.suppressed for r in refusals) + len(refusals) <= 60


def _forged(data, name: str, *, uris, ca=None, server=True, client=True) -> TlsIdentity:
    """A certificate made by hand (from the cluster CA unless `ca` is given)."""
    cluster_ca = ca or pki.ensure_cluster_ca(data)
    issued = ca_mod.issue_with_new_key(cluster_ca, ca_mod.name(name), "ec256", dns_names=[name, "keymanager"],
                                       ip_addresses=[HOST], uris=uris, server=server, client=client)
    folder = data / "forged" / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname, body in (("tls.crt", issued.pem), ("tls.key", issued.key_pem),
                        ("ca.crt", (data / "pki" / "cluster-ca.crt").read_bytes())):
        (folder / fname).write_bytes(body)
    return TlsIdentity(issued.pem, issued.key_pem, (data / "pki" / "cluster-ca.crt").read_bytes(),
                       folder / "tls.crt", folder / "tls.key", folder / "ca.crt")


async def test_a_certificate_never_passes_for_another_role(plane):
    """Issue 9 §1: forged / missing / duplicate role URIs, another CA's certificate, and a
    client-only certificate posing as a server are all refused."""
    data, identities = plane
    from ccmsec_proto import keymanager_pb2, keymanager_pb2_grpc

    server = GrpcServer(identities["keymanager"], HOST, free_port(HOST))
    server.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, keymanager_pb2_grpc.KeyManagerServicer(),
               "ccmsec.v1.KeyManager")
    await server.start()
    await server.set_serving(True)
    port = int(server.address.rsplit(":", 1)[1])
    method = "/ccmsec.v1.KeyManager/GenerateCallKeys"
    req = keymanager_pb2.CallKeysRequest.DESCRIPTOR
    try:
        # Only callmanager's real identity gets through.
        async with secure_channel(identities["callmanager"], HOST, port, "keymanager") as ch:
            assert (await _call(ch, method, req))[0] is grpc.StatusCode.UNIMPLEMENTED
        cases = {
            "no-uri": dict(uris=[]),
            "two-uris": dict(uris=["spiffe://ccmsec/phone-sim/x", "spiffe://ccmsec/callmanager/x"]),
            "foreign-domain": dict(uris=["spiffe://evil/callmanager/callmanager"]),
            "unknown-role": dict(uris=["spiffe://ccmsec/root/callmanager"]),
            "path-trick": dict(uris=["spiffe://ccmsec/callmanager/x/../../cli"]),
        }
        for name, kw in cases.items():
            forged = _forged(data, name, **kw)
            async with secure_channel(forged, HOST, port, "keymanager") as ch:
                code, details = await _call(ch, method, req)
                assert code is grpc.StatusCode.UNAUTHENTICATED, (name, code, details)
                assert "states no ccmsec identity" in details, name
                # Health is open to any *identity* of the cluster, not to any certificate.
                code, _ = await _call(ch, "/grpc.health.v1.Health/Check",
                                      importlib.import_module("grpc_health.v1.health_pb2").HealthCheckRequest.DESCRIPTOR)
                assert code is grpc.StatusCode.UNAUTHENTICATED, name
        # A perfect "callmanager" certificate from another CA fails the handshake.
        stranger = ca_mod.create_ca(ca_mod.name("stranger CA"), ca_mod.new_key("ec256"))
        impostor = _forged(data, "impostor", uris=["spiffe://ccmsec/callmanager/callmanager"], ca=stranger)
        denied_before = server.gate.denied
        async with secure_channel(impostor, HOST, port, "keymanager") as ch:
            code, details = await _call(ch, method, req)
            assert code is grpc.StatusCode.UNAVAILABLE, details  # TLS closed it: never reached a handler
        assert server.gate.denied == denied_before
        # Health itself is open to every identity of the cluster.
        assert await check_health(identities["phone-sim"], HOST, port, "keymanager") == "SERVING"
    finally:
        await server.stop(0)

    # A client-only certificate (cli) cannot serve: callers refuse it in the handshake.
    fake = GrpcServer(identities["cli"], HOST, free_port(HOST))
    fake.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, keymanager_pb2_grpc.KeyManagerServicer(),
             "ccmsec.v1.KeyManager")
    await fake.start()
    fport = int(fake.address.rsplit(":", 1)[1])
    try:
        async with secure_channel(identities["callmanager"], HOST, fport, "walker") as ch:
            code, details = await _call(ch, method, req)
            assert code is grpc.StatusCode.UNAVAILABLE, (code, details)
    finally:
        await fake.stop(0)


async def test_the_callers_trace_id_reaches_the_handler_and_each_call_gets_its_own(plane):
    """The per-call trace id (read from the call's metadata only when something asks): a handler
    sees the caller's `x-ccmsec-trace-id`, logs it, and passes it on; a call without one gets a
    fresh id of its own, and a second caller on another certificate is still told apart."""
    import json

    from ccmsec.runtime.logs import JsonFormatter, bind_trace_id, current_trace_id
    from ccmsec_proto import common_pb2, keymanager_pb2, keymanager_pb2_grpc

    _data, identities = plane
    seen: list[str] = []

    class Recorder(keymanager_pb2_grpc.KeyManagerServicer):
        async def Status(self, request, context):  # noqa: N802
            line = json.loads(JsonFormatter("keymanager", "k").format(logging.makeLogRecord({"msg": "asked"})))
            seen.append(current_trace_id())
            assert line["trace_id"] == seen[-1]   # a log line carries the same id
            return common_pb2.ServiceStatus(role="keymanager")

    server = GrpcServer(identities["keymanager"], HOST, free_port(HOST))
    server.add(keymanager_pb2_grpc.add_KeyManagerServicer_to_server, Recorder(), "ccmsec.v1.KeyManager")
    await server.start()
    try:
        async with secure_channel(identities["callmanager"], HOST, int(server.address.split(":")[1]),
                                  "keymanager") as ch:
            stub = keymanager_pb2_grpc.KeyManagerStub(ch)
            with bind_trace_id("trace-from-the-caller"):
                await stub.Status(common_pb2.Empty(), timeout=10)
            await stub.Status(common_pb2.Empty(), timeout=10)
            await stub.Status(common_pb2.Empty(), timeout=10)
        async with secure_channel(identities["srtp-gateway"], HOST, int(server.address.split(":")[1]),
                                  "keymanager") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await keymanager_pb2_grpc.KeyManagerStub(ch).GenerateCallKeys(
                    keymanager_pb2.CallKeysRequest(call_id="x"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "srtp-gateway/srtp-gateway" in refused.value.details()
    finally:
        await server.stop(0)
    assert seen[0] == "trace-from-the-caller"
    assert len(seen[1]) == 32 and len(seen[2]) == 32 and seen[1] != seen[2], seen


async def test_failed_and_streaming_calls_are_counted_with_their_code_and_timed(plane):
    """Metrics of the gRPC wrappers (issue 16): a failed unary call is counted under its status
    code and its latency observed like a successful one; a server-streaming call is timed until
    its stream ends (not until its first message) and counted with the code it ended with."""
    from ccmsec.runtime.metrics import REGISTRY
    from ccmsec_proto import callmanager_pb2, callmanager_pb2_grpc, common_pb2

    _data, identities = plane
    unary, stream = "/ccmsec.v1.CallManager/ListCalls", "/ccmsec.v1.CallManager/WatchCalls"

    def sample(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    class Failing(callmanager_pb2_grpc.CallManagerServicer):
        async def ListCalls(self, request, context):  # noqa: N802
            await asyncio.sleep(0.05)
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such call")

        async def WatchCalls(self, request, context):  # noqa: N802
            yield callmanager_pb2.CallEventMessage(kind="existing")
            await asyncio.sleep(0.4)                  # the stream stays open after its first message
            yield callmanager_pb2.CallEventMessage(kind="created")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "call control went away")

    before = {
        "unary_failed": sample("ccmsec_grpc_requests_total", method=unary, code="NOT_FOUND"),
        "unary_timed": sample("ccmsec_grpc_request_seconds_count", method=unary),
        "unary_seconds": sample("ccmsec_grpc_request_seconds_sum", method=unary),
        "stream_ended": sample("ccmsec_grpc_requests_total", method=stream, code="UNAVAILABLE"),
        "stream_timed": sample("ccmsec_grpc_request_seconds_count", method=stream),
        "stream_seconds": sample("ccmsec_grpc_request_seconds_sum", method=stream),
    }
    server = GrpcServer(identities["callmanager"], HOST, free_port(HOST), metrics=True)
    server.add(callmanager_pb2_grpc.add_CallManagerServicer_to_server, Failing(), "ccmsec.v1.CallManager")
    await server.start()
    try:
        async with secure_channel(identities["cli"], HOST, int(server.address.split(":")[1]),
                                  "callmanager") as ch:
            stub = callmanager_pb2_grpc.CallManagerStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ListCalls(common_pb2.Empty(), timeout=10)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            kinds = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                async for event in stub.WatchCalls(common_pb2.Empty(), timeout=10):
                    kinds.append(event.kind)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and kinds == ["existing", "created"]
    finally:
        await server.stop(0)
    assert sample("ccmsec_grpc_requests_total", method=unary, code="NOT_FOUND") == before["unary_failed"] + 1
    assert sample("ccmsec_grpc_request_seconds_count", method=unary) == before["unary_timed"] + 1
    assert sample("ccmsec_grpc_request_seconds_sum", method=unary) - before["unary_seconds"] >= 0.05
    assert sample("ccmsec_grpc_requests_total", method=stream, code="UNAVAILABLE") == before["stream_ended"] + 1
    assert sample("ccmsec_grpc_request_seconds_count", method=stream) == before["stream_timed"] + 1
    assert sample("ccmsec_grpc_request_seconds_sum", method=stream) - before["stream_seconds"] >= 0.4
