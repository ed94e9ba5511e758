from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SrstRegistration(_message.Message):
    __slots__ = ("device", "mode", "transport_port", "cipher", "certificate_kind", "since_unix")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_PORT_FIELD_NUMBER: _ClassVar[int]
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_KIND_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    device: str
    mode: _common_pb2.DeviceSecurityMode
    transport_port: int
    cipher: str
    certificate_kind: str
    since_unix: int
    def __init__(self, device: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.DeviceSecurityMode, str]] = ..., transport_port: _Optional[int] = ..., cipher: _Optional[str] = ..., certificate_kind: _Optional[str] = ..., since_unix: _Optional[int] = ...) -> None: ...

class SrstStatusReply(_message.Message):
    __slots__ = ("status", "active", "registered", "registrations", "known_phones", "directory_unix_ms", "active_calls", "calls_total")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_PHONES_FIELD_NUMBER: _ClassVar[int]
    DIRECTORY_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CALLS_FIELD_NUMBER: _ClassVar[int]
    CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.ServiceStatus
    active: bool
    registered: _containers.RepeatedScalarFieldContainer[str]
    registrations: _containers.RepeatedCompositeFieldContainer[SrstRegistration]
    known_phones: int
    directory_unix_ms: int
    active_calls: int
    calls_total: int
    def __init__(self, status: _Optional[_Union[_common_pb2.ServiceStatus, _Mapping]] = ..., active: _Optional[bool] = ..., registered: _Optional[_Iterable[str]] = ..., registrations: _Optional[_Iterable[_Union[SrstRegistration, _Mapping]]] = ..., known_phones: _Optional[int] = ..., directory_unix_ms: _Optional[int] = ..., active_calls: _Optional[int] = ..., calls_total: _Optional[int] = ...) -> None: ...
