from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SrstStatusReply(_message.Message):
    __slots__ = ("status", "active", "registered")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.ServiceStatus
    active: bool
    registered: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[_common_pb2.ServiceStatus, _Mapping]] = ..., active: _Optional[bool] = ..., registered: _Optional[_Iterable[str]] = ...) -> None: ...
