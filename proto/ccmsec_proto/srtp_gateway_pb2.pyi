from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateConnectionRequest(_message.Message):
    __slots__ = ("call_id", "endpoint", "remote_host", "remote_port", "send_key", "receive_key", "srtp")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_HOST_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    SEND_KEY_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_KEY_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    endpoint: str
    remote_host: str
    remote_port: int
    send_key: _common_pb2.KeyMaterial
    receive_key: _common_pb2.KeyMaterial
    srtp: bool
    def __init__(self, call_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., remote_host: _Optional[str] = ..., remote_port: _Optional[int] = ..., send_key: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., receive_key: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., srtp: _Optional[bool] = ...) -> None: ...

class ConnectionReply(_message.Message):
    __slots__ = ("connection_id", "local_host", "local_port", "srtp")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_HOST_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    local_host: str
    local_port: int
    srtp: bool
    def __init__(self, connection_id: _Optional[str] = ..., local_host: _Optional[str] = ..., local_port: _Optional[int] = ..., srtp: _Optional[bool] = ...) -> None: ...

class ModifyConnectionRequest(_message.Message):
    __slots__ = ("connection_id", "remote_host", "remote_port", "send_key", "receive_key", "srtp")
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_HOST_FIELD_NUMBER: _ClassVar[int]
    REMOTE_PORT_FIELD_NUMBER: _ClassVar[int]
    SEND_KEY_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_KEY_FIELD_NUMBER: _ClassVar[int]
    SRTP_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    remote_host: str
    remote_port: int
    send_key: _common_pb2.KeyMaterial
    receive_key: _common_pb2.KeyMaterial
    srtp: bool
    def __init__(self, connection_id: _Optional[str] = ..., remote_host: _Optional[str] = ..., remote_port: _Optional[int] = ..., send_key: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., receive_key: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., srtp: _Optional[bool] = ...) -> None: ...

class DeleteConnectionRequest(_message.Message):
    __slots__ = ("connection_id",)
    CONNECTION_ID_FIELD_NUMBER: _ClassVar[int]
    connection_id: str
    def __init__(self, connection_id: _Optional[str] = ...) -> None: ...

class DeleteConnectionReply(_message.Message):
    __slots__ = ("packets_sent", "packets_received", "auth_failures", "replays")
    PACKETS_SENT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    AUTH_FAILURES_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    packets_sent: int
    packets_received: int
    auth_failures: int
    replays: int
    def __init__(self, packets_sent: _Optional[int] = ..., packets_received: _Optional[int] = ..., auth_failures: _Optional[int] = ..., replays: _Optional[int] = ...) -> None: ...
