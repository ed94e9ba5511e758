from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerCertificatesReply(_message.Message):
    __slots__ = ("server", "certificates")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    server: str
    certificates: _containers.RepeatedCompositeFieldContainer[_common_pb2.Certificate]
    def __init__(self, server: _Optional[str] = ..., certificates: _Optional[_Iterable[_Union[_common_pb2.Certificate, _Mapping]]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("active",)
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    active: bool
    def __init__(self, active: _Optional[bool] = ...) -> None: ...

class ProviderSettingsReply(_message.Message):
    __slots__ = ("activated", "configured_port", "listening_port", "host")
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_PORT_FIELD_NUMBER: _ClassVar[int]
    LISTENING_PORT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    activated: bool
    configured_port: int
    listening_port: int
    host: str
    def __init__(self, activated: _Optional[bool] = ..., configured_port: _Optional[int] = ..., listening_port: _Optional[int] = ..., host: _Optional[str] = ...) -> None: ...

class SetProviderPortRequest(_message.Message):
    __slots__ = ("port",)
    PORT_FIELD_NUMBER: _ClassVar[int]
    port: int
    def __init__(self, port: _Optional[int] = ...) -> None: ...

class SetProviderPortReply(_message.Message):
    __slots__ = ("port", "listening_port", "restart_required", "events", "delivery_pending")
    PORT_FIELD_NUMBER: _ClassVar[int]
    LISTENING_PORT_FIELD_NUMBER: _ClassVar[int]
    RESTART_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    port: int
    listening_port: int
    restart_required: bool
    events: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, port: _Optional[int] = ..., listening_port: _Optional[int] = ..., restart_required: _Optional[bool] = ..., events: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class CommitCtlRequest(_message.Message):
    __slots__ = ("ctl", "mode", "new_trust")
    CTL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NEW_TRUST_FIELD_NUMBER: _ClassVar[int]
    ctl: bytes
    mode: _common_pb2.ClusterSecurityMode
    new_trust: bool
    def __init__(self, ctl: _Optional[bytes] = ..., mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., new_trust: _Optional[bool] = ...) -> None: ...

class CommitCtlReply(_message.Message):
    __slots__ = ("version", "sha256", "tftp_path", "published_path", "mode", "previous_mode", "events", "delivery_pending")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TFTP_PATH_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    version: int
    sha256: str
    tftp_path: str
    published_path: str
    mode: _common_pb2.ClusterSecurityMode
    previous_mode: _common_pb2.ClusterSecurityMode
    events: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, version: _Optional[int] = ..., sha256: _Optional[str] = ..., tftp_path: _Optional[str] = ..., published_path: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., previous_mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., events: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class CurrentCtlReply(_message.Message):
    __slots__ = ("present", "version", "sha256", "ctl", "records", "created_unix_ms")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CTL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    present: bool
    version: int
    sha256: str
    ctl: bytes
    records: int
    created_unix_ms: int
    def __init__(self, present: _Optional[bool] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., ctl: _Optional[bytes] = ..., records: _Optional[int] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class SecurityModeRequest(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: _common_pb2.ClusterSecurityMode
    def __init__(self, mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ...) -> None: ...

class SecurityModeReply(_message.Message):
    __slots__ = ("mode", "previous", "ctl_present", "ctl_version", "events", "delivery_pending")
    MODE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CTL_PRESENT_FIELD_NUMBER: _ClassVar[int]
    CTL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    mode: _common_pb2.ClusterSecurityMode
    previous: _common_pb2.ClusterSecurityMode
    ctl_present: bool
    ctl_version: int
    events: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., previous: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., ctl_present: _Optional[bool] = ..., ctl_version: _Optional[int] = ..., events: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class TftpCluster(_message.Message):
    __slots__ = ("cluster_id", "tftp_path", "alternate_path", "mode")
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    TFTP_PATH_FIELD_NUMBER: _ClassVar[int]
    ALTERNATE_PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    tftp_path: str
    alternate_path: str
    mode: _common_pb2.ClusterSecurityMode
    def __init__(self, cluster_id: _Optional[str] = ..., tftp_path: _Optional[str] = ..., alternate_path: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ...) -> None: ...

class TftpClustersReply(_message.Message):
    __slots__ = ("clusters", "local_cluster_id")
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    clusters: _containers.RepeatedCompositeFieldContainer[TftpCluster]
    local_cluster_id: str
    def __init__(self, clusters: _Optional[_Iterable[_Union[TftpCluster, _Mapping]]] = ..., local_cluster_id: _Optional[str] = ...) -> None: ...

class RemoveTftpClusterRequest(_message.Message):
    __slots__ = ("cluster_id",)
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    cluster_id: str
    def __init__(self, cluster_id: _Optional[str] = ...) -> None: ...

class ClusterTlsSettings(_message.Message):
    __slots__ = ("legacy_tls", "events", "delivery_pending")
    LEGACY_TLS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    legacy_tls: bool
    events: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, legacy_tls: _Optional[bool] = ..., events: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...
