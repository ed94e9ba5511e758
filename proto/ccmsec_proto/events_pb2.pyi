from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESET_KIND_UNSPECIFIED: _ClassVar[ResetKind]
    RESET: _ClassVar[ResetKind]
    RESTART: _ClassVar[ResetKind]
RESET_KIND_UNSPECIFIED: ResetKind
RESET: ResetKind
RESTART: ResetKind

class DeviceReset(_message.Message):
    __slots__ = ("devices", "all", "server", "kind", "rule", "reason", "request_id")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    server: str
    kind: ResetKind
    rule: str
    reason: str
    request_id: str
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., server: _Optional[str] = ..., kind: _Optional[_Union[ResetKind, str]] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ServiceRestart(_message.Message):
    __slots__ = ("role", "nodes", "rule", "reason")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    role: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    rule: str
    reason: str
    def __init__(self, role: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CtlUpdated(_message.Message):
    __slots__ = ("sha256", "version", "tftp_path", "actor")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TFTP_PATH_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    version: int
    tftp_path: str
    actor: str
    def __init__(self, sha256: _Optional[str] = ..., version: _Optional[int] = ..., tftp_path: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ConfigChanged(_message.Message):
    __slots__ = ("devices", "all", "what")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    what: str
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., what: _Optional[str] = ...) -> None: ...

class SecurityModeChanged(_message.Message):
    __slots__ = ("mode", "previous", "actor", "rule")
    MODE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    mode: _common_pb2.ClusterSecurityMode
    previous: _common_pb2.ClusterSecurityMode
    actor: str
    rule: str
    def __init__(self, mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., previous: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., actor: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class AccessDenied(_message.Message):
    __slots__ = ("caller_role", "caller_node", "method", "refused_by", "reason", "suppressed")
    CALLER_ROLE_FIELD_NUMBER: _ClassVar[int]
    CALLER_NODE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REFUSED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    caller_role: str
    caller_node: str
    method: str
    refused_by: str
    reason: str
    suppressed: int
    def __init__(self, caller_role: _Optional[str] = ..., caller_node: _Optional[str] = ..., method: _Optional[str] = ..., refused_by: _Optional[str] = ..., reason: _Optional[str] = ..., suppressed: _Optional[int] = ...) -> None: ...

class OwnerChange(_message.Message):
    __slots__ = ("actor", "action", "target", "detail", "rule", "status", "door", "remote")
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DOOR_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    actor: str
    action: str
    target: str
    detail: str
    rule: str
    status: int
    door: str
    remote: str
    def __init__(self, actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., detail: _Optional[str] = ..., rule: _Optional[str] = ..., status: _Optional[int] = ..., door: _Optional[str] = ..., remote: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "kind", "occurred_unix_ms", "origin", "trace_id", "device_reset", "service_restart", "ctl_updated", "config_changed", "mode_changed", "text", "access_denied", "owner_change")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_RESET_FIELD_NUMBER: _ClassVar[int]
    SERVICE_RESTART_FIELD_NUMBER: _ClassVar[int]
    CTL_UPDATED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_CHANGED_FIELD_NUMBER: _ClassVar[int]
    MODE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ACCESS_DENIED_FIELD_NUMBER: _ClassVar[int]
    OWNER_CHANGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    occurred_unix_ms: int
    origin: str
    trace_id: str
    device_reset: DeviceReset
    service_restart: ServiceRestart
    ctl_updated: CtlUpdated
    config_changed: ConfigChanged
    mode_changed: SecurityModeChanged
    text: str
    access_denied: AccessDenied
    owner_change: OwnerChange
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., occurred_unix_ms: _Optional[int] = ..., origin: _Optional[str] = ..., trace_id: _Optional[str] = ..., device_reset: _Optional[_Union[DeviceReset, _Mapping]] = ..., service_restart: _Optional[_Union[ServiceRestart, _Mapping]] = ..., ctl_updated: _Optional[_Union[CtlUpdated, _Mapping]] = ..., config_changed: _Optional[_Union[ConfigChanged, _Mapping]] = ..., mode_changed: _Optional[_Union[SecurityModeChanged, _Mapping]] = ..., text: _Optional[str] = ..., access_denied: _Optional[_Union[AccessDenied, _Mapping]] = ..., owner_change: _Optional[_Union[OwnerChange, _Mapping]] = ...) -> None: ...
