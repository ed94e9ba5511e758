from ccmsec_proto import common_pb2 as _common_pb2
from ccmsec_proto import ctl_provider_pb2 as _ctl_provider_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CapfOperation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPF_OPERATION_UNSPECIFIED: _ClassVar[CapfOperation]
    CAPF_INSTALL: _ClassVar[CapfOperation]
    CAPF_UPGRADE: _ClassVar[CapfOperation]
    CAPF_DELETE: _ClassVar[CapfOperation]
    CAPF_TROUBLESHOOT: _ClassVar[CapfOperation]

class CapfAuthMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPF_AUTH_MODE_UNSPECIFIED: _ClassVar[CapfAuthMode]
    CAPF_AUTH_STRING: _ClassVar[CapfAuthMode]
    CAPF_AUTH_NULL: _ClassVar[CapfAuthMode]
    CAPF_AUTH_LSC_THEN_MIC: _ClassVar[CapfAuthMode]
    CAPF_AUTH_MIC: _ClassVar[CapfAuthMode]
    CAPF_AUTH_LSC: _ClassVar[CapfAuthMode]
CAPF_OPERATION_UNSPECIFIED: CapfOperation
CAPF_INSTALL: CapfOperation
CAPF_UPGRADE: CapfOperation
CAPF_DELETE: CapfOperation
CAPF_TROUBLESHOOT: CapfOperation
CAPF_AUTH_MODE_UNSPECIFIED: CapfAuthMode
CAPF_AUTH_STRING: CapfAuthMode
CAPF_AUTH_NULL: CapfAuthMode
CAPF_AUTH_LSC_THEN_MIC: CapfAuthMode
CAPF_AUTH_MIC: CapfAuthMode
CAPF_AUTH_LSC: CapfAuthMode

class CapfSchedule(_message.Message):
    __slots__ = ("device", "operation", "auth_mode", "auth_string", "key_type", "deadline_unix")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    AUTH_MODE_FIELD_NUMBER: _ClassVar[int]
    AUTH_STRING_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    device: str
    operation: CapfOperation
    auth_mode: CapfAuthMode
    auth_string: str
    key_type: str
    deadline_unix: int
    def __init__(self, device: _Optional[str] = ..., operation: _Optional[_Union[CapfOperation, str]] = ..., auth_mode: _Optional[_Union[CapfAuthMode, str]] = ..., auth_string: _Optional[str] = ..., key_type: _Optional[str] = ..., deadline_unix: _Optional[int] = ...) -> None: ...

class CapfOperationState(_message.Message):
    __slots__ = ("id", "schedule", "state", "reason", "failed_attempts", "updated_unix")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    id: int
    schedule: CapfSchedule
    state: str
    reason: str
    failed_attempts: int
    updated_unix: int
    def __init__(self, id: _Optional[int] = ..., schedule: _Optional[_Union[CapfSchedule, _Mapping]] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., failed_attempts: _Optional[int] = ..., updated_unix: _Optional[int] = ...) -> None: ...

class CapfStatusRequest(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class CapfStatusReply(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[CapfOperationState]
    def __init__(self, operations: _Optional[_Iterable[_Union[CapfOperationState, _Mapping]]] = ...) -> None: ...

class IssuedCertificate(_message.Message):
    __slots__ = ("device", "certificate", "operation", "at_unix", "outcome")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    device: str
    certificate: _common_pb2.Certificate
    operation: str
    at_unix: int
    outcome: str
    def __init__(self, device: _Optional[str] = ..., certificate: _Optional[_Union[_common_pb2.Certificate, _Mapping]] = ..., operation: _Optional[str] = ..., at_unix: _Optional[int] = ..., outcome: _Optional[str] = ...) -> None: ...

class IssuedLogReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[IssuedCertificate]
    def __init__(self, entries: _Optional[_Iterable[_Union[IssuedCertificate, _Mapping]]] = ...) -> None: ...
