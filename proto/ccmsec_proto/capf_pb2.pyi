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
    __slots__ = ("id", "schedule", "state", "reason", "failed_attempts", "updated_unix", "created_unix", "issued_fingerprint")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FAILED_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ISSUED_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    id: int
    schedule: CapfSchedule
    state: str
    reason: str
    failed_attempts: int
    updated_unix: int
    created_unix: int
    issued_fingerprint: str
    def __init__(self, id: _Optional[int] = ..., schedule: _Optional[_Union[CapfSchedule, _Mapping]] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., failed_attempts: _Optional[int] = ..., updated_unix: _Optional[int] = ..., created_unix: _Optional[int] = ..., issued_fingerprint: _Optional[str] = ...) -> None: ...

class CapfStatusRequest(_message.Message):
    __slots__ = ("device", "limit")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    device: str
    limit: int
    def __init__(self, device: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class CapfStatusReply(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[CapfOperationState]
    def __init__(self, operations: _Optional[_Iterable[_Union[CapfOperationState, _Mapping]]] = ...) -> None: ...

class PendingOperationsRequest(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, devices: _Optional[_Iterable[str]] = ...) -> None: ...

class PendingOperation(_message.Message):
    __slots__ = ("device", "operation", "auth_mode", "key_type", "id")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    AUTH_MODE_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    device: str
    operation: CapfOperation
    auth_mode: CapfAuthMode
    key_type: str
    id: int
    def __init__(self, device: _Optional[str] = ..., operation: _Optional[_Union[CapfOperation, str]] = ..., auth_mode: _Optional[_Union[CapfAuthMode, str]] = ..., key_type: _Optional[str] = ..., id: _Optional[int] = ...) -> None: ...

class PendingOperationsPage(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[PendingOperation]
    def __init__(self, operations: _Optional[_Iterable[_Union[PendingOperation, _Mapping]]] = ...) -> None: ...

class IssuedCertificate(_message.Message):
    __slots__ = ("device", "certificate", "operation", "at_unix", "outcome", "operation_id")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    device: str
    certificate: _common_pb2.Certificate
    operation: str
    at_unix: int
    outcome: str
    operation_id: int
    def __init__(self, device: _Optional[str] = ..., certificate: _Optional[_Union[_common_pb2.Certificate, _Mapping]] = ..., operation: _Optional[str] = ..., at_unix: _Optional[int] = ..., outcome: _Optional[str] = ..., operation_id: _Optional[int] = ...) -> None: ...

class IssuedLogReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[IssuedCertificate]
    def __init__(self, entries: _Optional[_Iterable[_Union[IssuedCertificate, _Mapping]]] = ...) -> None: ...

class CapfParametersRequest(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CapfParametersReply(_message.Message):
    __slots__ = ("service", "enterprise", "events", "delivery_pending")
    class ServiceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnterpriseEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENTERPRISE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    service: _containers.ScalarMap[str, str]
    enterprise: _containers.ScalarMap[str, str]
    events: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, service: _Optional[_Mapping[str, str]] = ..., enterprise: _Optional[_Mapping[str, str]] = ..., events: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class LscCheckReply(_message.Message):
    __slots__ = ("missing", "installed")
    MISSING_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[str]
    installed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, missing: _Optional[_Iterable[str]] = ..., installed: _Optional[_Iterable[str]] = ...) -> None: ...

class CsrEntry(_message.Message):
    __slots__ = ("device", "operation_id", "csr_der", "requested_unix", "key_sha256")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    KEY_SHA256_FIELD_NUMBER: _ClassVar[int]
    device: str
    operation_id: int
    csr_der: bytes
    requested_unix: int
    key_sha256: str
    def __init__(self, device: _Optional[str] = ..., operation_id: _Optional[int] = ..., csr_der: _Optional[bytes] = ..., requested_unix: _Optional[int] = ..., key_sha256: _Optional[str] = ...) -> None: ...

class CsrExportReply(_message.Message):
    __slots__ = ("csrs",)
    CSRS_FIELD_NUMBER: _ClassVar[int]
    csrs: _containers.RepeatedCompositeFieldContainer[CsrEntry]
    def __init__(self, csrs: _Optional[_Iterable[_Union[CsrEntry, _Mapping]]] = ...) -> None: ...

class CertificateFile(_message.Message):
    __slots__ = ("name", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class CertificateImportRequest(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[CertificateFile]
    def __init__(self, files: _Optional[_Iterable[_Union[CertificateFile, _Mapping]]] = ...) -> None: ...

class CertificateImportResult(_message.Message):
    __slots__ = ("name", "accepted", "reason", "device", "operation_id", "certificate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    accepted: bool
    reason: str
    device: str
    operation_id: int
    certificate: _common_pb2.Certificate
    def __init__(self, name: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., device: _Optional[str] = ..., operation_id: _Optional[int] = ..., certificate: _Optional[_Union[_common_pb2.Certificate, _Mapping]] = ...) -> None: ...

class CertificateImportReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CertificateImportResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CertificateImportResult, _Mapping]]] = ...) -> None: ...

class ThirdPartyCaRequest(_message.Message):
    __slots__ = ("certificate",)
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    def __init__(self, certificate: _Optional[bytes] = ...) -> None: ...
