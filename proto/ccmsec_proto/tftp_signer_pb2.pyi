from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishFileRequest(_message.Message):
    __slots__ = ("cluster_path", "name", "content", "sha256", "generation", "takes_back", "withdraw")
    CLUSTER_PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    TAKES_BACK_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FIELD_NUMBER: _ClassVar[int]
    cluster_path: str
    name: str
    content: bytes
    sha256: str
    generation: int
    takes_back: _containers.RepeatedScalarFieldContainer[int]
    withdraw: bool
    def __init__(self, cluster_path: _Optional[str] = ..., name: _Optional[str] = ..., content: _Optional[bytes] = ..., sha256: _Optional[str] = ..., generation: _Optional[int] = ..., takes_back: _Optional[_Iterable[int]] = ..., withdraw: _Optional[bool] = ...) -> None: ...

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

class ListFilesRequest(_message.Message):
    __slots__ = ("cluster_path", "include_devices")
    CLUSTER_PATH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEVICES_FIELD_NUMBER: _ClassVar[int]
    cluster_path: str
    include_devices: bool
    def __init__(self, cluster_path: _Optional[str] = ..., include_devices: _Optional[bool] = ...) -> None: ...

class FileEntry(_message.Message):
    __slots__ = ("name", "size", "signed", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    signed: bool
    kind: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., signed: _Optional[bool] = ..., kind: _Optional[str] = ...) -> None: ...

class ListFilesReply(_message.Message):
    __slots__ = ("cluster_path", "mode", "caching", "files")
    CLUSTER_PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CACHING_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    cluster_path: str
    mode: _common_pb2.ClusterSecurityMode
    caching: bool
    files: _containers.RepeatedCompositeFieldContainer[FileEntry]
    def __init__(self, cluster_path: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., caching: _Optional[bool] = ..., files: _Optional[_Iterable[_Union[FileEntry, _Mapping]]] = ...) -> None: ...

class SharedCluster(_message.Message):
    __slots__ = ("name", "tftp_path", "alternate_path", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TFTP_PATH_FIELD_NUMBER: _ClassVar[int]
    ALTERNATE_PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    tftp_path: str
    alternate_path: str
    mode: _common_pb2.ClusterSecurityMode
    def __init__(self, name: _Optional[str] = ..., tftp_path: _Optional[str] = ..., alternate_path: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ...) -> None: ...

class SharedClusters(_message.Message):
    __slots__ = ("clusters",)
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[SharedCluster]
    def __init__(self, clusters: _Optional[_Iterable[_Union[SharedCluster, _Mapping]]] = ...) -> None: ...
