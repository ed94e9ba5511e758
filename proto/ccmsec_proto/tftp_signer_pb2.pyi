from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PublishFileRequest(_message.Message):
    __slots__ = ("cluster_path", "name", "content", "sha256")
    CLUSTER_PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    cluster_path: str
    name: str
    content: bytes
    sha256: str
    def __init__(self, cluster_path: _Optional[str] = ..., name: _Optional[str] = ..., content: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class PublishFileReply(_message.Message):
    __slots__ = ("path", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ResignRequest(_message.Message):
    __slots__ = ("devices", "all")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class ResignReply(_message.Message):
    __slots__ = ("signed", "seconds")
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    signed: int
    seconds: float
    def __init__(self, signed: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
