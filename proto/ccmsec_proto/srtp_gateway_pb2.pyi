from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectionMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECTION_MODE_UNSPECIFIED: _ClassVar[ConnectionMode]
    SENDRECV: _ClassVar[ConnectionMode]
    RECVONLY: _ClassVar[ConnectionMode]
    SENDONLY: _ClassVar[ConnectionMode]
    INACTIVE: _ClassVar[ConnectionMode]
CONNECTION_MODE_UNSPECIFIED: ConnectionMode
SENDRECV: ConnectionMode
RECVONLY: ConnectionMode
SENDONLY: ConnectionMode
INACTIVE: ConnectionMode

class CreateConnectionRequest(_message.Message):
    __slots__ = ("endpoint", "call_id", "dialled_number", "mode", "remote_sdp", "srtp", "send_key", "local_connection_options")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    DIALLED_NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_SDP_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    SEND_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CONNECTION_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    call_id: str
    dialled_number: str
    mode: ConnectionMode
    remote_sdp: str
    srtp: bool
    send_key: _common_pb2.KeyMaterial
    local_connection_options: str
    def __init__(self, endpoint: _Optional[str] = ..., call_id: _Optional[str] = ..., dialled_number: _Optional[str] = ..., mode: _Optional[_Union[ConnectionMode, str]] = ..., remote_sdp: _Optional[str] = ..., srtp: _Optional[bool] = ..., send_key: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., local_connection_options: _Optional[str] = ...) -> None: ...

class ConnectionReply(_message.Message):
    __slots__ = ("connection_id", "endpoint", "local_sdp", "srtp", "mode")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SDP_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    endpoint: str
    local_sdp: str
    srtp: bool
    mode: ConnectionMode
    def __init__(self, connection_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., local_sdp: _Optional[str] = ..., srtp: _Optional[bool] = ..., mode: _Optional[_Union[ConnectionMode, str]] = ...) -> None: ...

class ModifyConnectionRequest(_message.Message):
    __slots__ = ("endpoint", "call_id", "connection_id", "mode", "remote_sdp", "change_security", "srtp", "send_key", "local_connection_options")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_SDP_FIELD_NUMBER: _ClassVar[int]
    CHANGE_SECURITY_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    SEND_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CONNECTION_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    call_id: str
    connection_id: str
    mode: ConnectionMode
    remote_sdp: str
    change_security: bool
    srtp: bool
    send_key: _common_pb2.KeyMaterial
    local_connection_options: str
    def __init__(self, endpoint: _Optional[str] = ..., call_id: _Optional[str] = ..., connection_id: _Optional[str] = ..., mode: _Optional[_Union[ConnectionMode, str]] = ..., remote_sdp: _Optional[str] = ..., change_security: _Optional[bool] = ..., srtp: _Optional[bool] = ..., send_key: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., local_connection_options: _Optional[str] = ...) -> None: ...

class DeleteConnectionRequest(_message.Message):
    __slots__ = ("endpoint", "call_id", "connection_id")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    call_id: str
    connection_id: str
    def __init__(self, endpoint: _Optional[str] = ..., call_id: _Optional[str] = ..., connection_id: _Optional[str] = ...) -> None: ...

class ConnectionStats(_message.Message):
    __slots__ = ("connection_id", "endpoint", "call_id", "packets_sent", "octets_sent", "packets_received", "octets_received", "packets_lost", "refused_authentication", "refused_replay", "malformed", "srtp", "mode", "remote", "local", "dialled_number")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SENT_FIELD_NUMBER: _ClassVar[int]
    OCTETS_SENT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    OCTETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_LOST_FIELD_NUMBER: _ClassVar[int]
    REFUSED_AUTHENTICATION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REPLAY_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    DIALLED_NUMBER_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    endpoint: str
    call_id: str
    packets_sent: int
    octets_sent: int
    packets_received: int
    octets_received: int
    packets_lost: int
    refused_authentication: int
    refused_replay: int
    malformed: int
    srtp: bool
    mode: ConnectionMode
    remote: str
    local: str
    dialled_number: str
    def __init__(self, connection_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., call_id: _Optional[str] = ..., packets_sent: _Optional[int] = ..., octets_sent: _Optional[int] = ..., packets_received: _Optional[int] = ..., octets_received: _Optional[int] = ..., packets_lost: _Optional[int] = ..., refused_authentication: _Optional[int] = ..., refused_replay: _Optional[int] = ..., malformed: _Optional[int] = ..., srtp: _Optional[bool] = ..., mode: _Optional[_Union[ConnectionMode, str]] = ..., remote: _Optional[str] = ..., local: _Optional[str] = ..., dialled_number: _Optional[str] = ...) -> None: ...

class DeleteConnectionReply(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedCompositeFieldContainer[ConnectionStats]
    def __init__(self, deleted: _Optional[_Iterable[_Union[ConnectionStats, _Mapping]]] = ...) -> None: ...

class AuditEndpointRequest(_message.Message):
    __slots__ = ("endpoint",)
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    def __init__(self, endpoint: _Optional[str] = ...) -> None: ...

class EndpointInfo(_message.Message):
    __slots__ = ("endpoint", "connections")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    connections: _containers.RepeatedCompositeFieldContainer[ConnectionStats]
    def __init__(self, endpoint: _Optional[str] = ..., connections: _Optional[_Iterable[_Union[ConnectionStats, _Mapping]]] = ...) -> None: ...

class AuditEndpointReply(_message.Message):
    __slots__ = ("endpoints", "srtp_capable", "suites", "numbers")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SRTP_CAPABLE_FIELD_NUMBER: _ClassVar[int]
    SUITES_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointInfo]
    srtp_capable: bool
    suites: _containers.RepeatedScalarFieldContainer[_common_pb2.CryptoSuite]
    numbers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[EndpointInfo, _Mapping]]] = ..., srtp_capable: _Optional[bool] = ..., suites: _Optional[_Iterable[_Union[_common_pb2.CryptoSuite, str]]] = ..., numbers: _Optional[_Iterable[str]] = ...) -> None: ...
