"""gRPC server reflection `grpc.reflection.v1` next to the older `grpc.reflection.v1alpha`.

grpcio-reflection ships only the v1alpha messages and servicer. The v1 protocol is the same
protocol under a new package name: every message and field (names, numbers, types) is identical,
so one servicer answers both and the bytes on the wire are the same. What v1 needs of its own is a
descriptor (so `guard_servicer` finds and authorizes its method, and reflection can describe
itself) and a registration under `/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`.

The v1 descriptor is derived from the installed v1alpha one (file, package and type references
renamed) and added to the default descriptor pool once; if a later grpcio-reflection already put
`grpc/reflection/v1/reflection.proto` there, that one is used.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
FILE_NAME = "grpc/reflection/v1/reflection.proto"
METHOD = "ServerReflectionInfo"

_ALPHA = "grpc.reflection.v1alpha"
_V1 = "grpc.reflection.v1"


def v1_file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """The v1 reflection.proto as a FileDescriptorProto, built from the v1alpha one."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = FILE_NAME
    proto.package = _V1
    proto.ClearField("options")
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_multiple_files = True
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"

    def rename(type_name: str) -> str:
        prefix = f".{_ALPHA}."
        return f".{_V1}." + type_name[len(prefix):] if type_name.startswith(prefix) else type_name

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    return proto


def ensure_registered() -> None:
    """Put the v1 descriptor in the default pool (once per process)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(SERVICE_NAME)
        return
    except KeyError:
        pass
    pool.Add(v1_file_descriptor_proto())
    pool.FindServiceByName(SERVICE_NAME)  # fails loudly if the pool refused it


def add_v1_servicer(servicer, server: grpc.aio.Server) -> None:
    """Serve `servicer.ServerReflectionInfo` (a v1alpha servicer) as grpc.reflection.v1 too.

    Requests and responses use the v1alpha message classes: v1 is the same wire format.
    """
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD: handler}),))
