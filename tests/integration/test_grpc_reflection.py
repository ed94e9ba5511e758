"""gRPC server reflection, current version (grpc.reflection.v1) and the older v1alpha, on the
runtime's mutual-TLS server, asked by real reflection clients.

* v1alpha: grpcio-reflection's own client (`ProtoReflectionDescriptorDatabase`) builds a descriptor
  pool from the server's answers and finds the role's service and its methods.
* v1: the same client logic pointed at `/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`,
  and a client whose message classes come from the v1 descriptor the server itself returned (so
  nothing local about v1 is assumed).
* Both are authorized like every method: a client certificate from another CA is refused.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ccmsec.cluster import pki
from ccmsec.runtime.grpcio import GrpcServer, channel_credentials
from ccmsec_proto import capf_pb2_grpc
from tests.conftest import free_port

HOST = "127.0.0.1"
V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture
async def capf_server(tmp_path):
    server_id = pki.issue_service_identity(tmp_path, "capf", "capf", HOST)
    client_id = pki.issue_client_identity(tmp_path, "reflector")
    server = GrpcServer(server_id, HOST, free_port(HOST))
    server.add(capf_pb2_grpc.add_CapfServicer_to_server, capf_pb2_grpc.CapfServicer(), "ccmsec.v1.Capf")
    await server.start()
    await server.set_serving(True)
    try:
        yield server, client_id, tmp_path
    finally:
        await server.stop(0)


def _channel(identity, server) -> grpc.Channel:
    return grpc.secure_channel(server.address, channel_credentials(identity),
                               options=[("grpc.ssl_target_name_override", "capf")])


class _V1Stub:
    """The v1 method as a stub the grpcio-reflection client can drive (same wire messages)."""

    def __init__(self, channel: grpc.Channel):
        self.ServerReflectionInfo = channel.stream_stream(
            V1, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)


def _describe(channel: grpc.Channel, version: str) -> tuple[list[str], list[str]]:
    db = ProtoReflectionDescriptorDatabase(channel)
    if version == "v1":
        db._stub = _V1Stub(channel)  # the library's client, asking the v1 service
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    capf = pool.FindServiceByName("ccmsec.v1.Capf")
    return services, [m.name for m in capf.methods]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_a_reflection_client_lists_and_describes_the_services(capf_server, version):
    server, client_id, _ = capf_server

    def ask():
        with _channel(client_id, server) as channel:
            return _describe(channel, version)

    services, methods = await asyncio.to_thread(ask)
    assert services == ["ccmsec.v1.Capf", "grpc.health.v1.Health",
                        "grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection"]
    assert "ScheduleOperation" in methods and "GetOperations" in methods


async def test_v1_described_by_itself(capf_server):
    """Fetch the v1 reflection.proto through v1, build its message classes from that answer alone,
    and list the services with them."""
    server, client_id, _ = capf_server

    def ask():
        with _channel(client_id, server) as channel:
            raw = channel.stream_stream(V1, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
            request = reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="grpc.reflection.v1.ServerReflection")
            (answer,) = list(raw(iter([request.SerializeToString()]), timeout=10))
            reply = reflection_pb2.ServerReflectionResponse.FromString(answer)
            assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
            protos = [descriptor_pb2.FileDescriptorProto.FromString(b)
                      for b in reply.file_descriptor_response.file_descriptor_proto]
            pool = descriptor_pool.DescriptorPool()
            for proto in protos:
                pool.Add(proto)
            (file,) = [p for p in protos if p.package == "grpc.reflection.v1"]
            assert file.name == "grpc/reflection/v1/reflection.proto"
            service = pool.FindServiceByName("grpc.reflection.v1.ServerReflection")
            method = service.methods_by_name["ServerReflectionInfo"]
            assert method.input_type.full_name == "grpc.reflection.v1.ServerReflectionRequest"
            request_cls = message_factory.GetMessageClass(method.input_type)
            response_cls = message_factory.GetMessageClass(method.output_type)
            call = channel.stream_stream(V1, request_serializer=request_cls.SerializeToString,
                                         response_deserializer=response_cls.FromString)
            (listed,) = list(call(iter([request_cls(list_services="")]), timeout=10))
            return [s.name for s in listed.list_services_response.service]

    names = await asyncio.to_thread(ask)
    assert "grpc.reflection.v1.ServerReflection" in names and "ccmsec.v1.Capf" in names


@pytest.mark.parametrize("method", [V1, V1ALPHA])
async def test_reflection_refuses_a_certificate_from_another_ca(capf_server, tmp_path_factory, method):
    server, _, _ = capf_server
    stranger = pki.issue_client_identity(tmp_path_factory.mktemp("other-ca"), "stranger")

    def ask():
        with _channel(stranger, server) as channel:
            call = channel.stream_stream(method, request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            return list(call(iter([request.SerializeToString()]), timeout=10))

    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(ask)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
