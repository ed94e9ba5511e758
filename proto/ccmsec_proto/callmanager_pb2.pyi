from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Registration(_message.Message):
    __slots__ = ("device", "model", "mode", "server", "address", "reported_address", "nat_suspected", "since_unix", "certificate_fingerprint", "certificate_kind", "state", "cipher", "transport_port")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NAT_SUSPECTED_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_PORT_FIELD_NUMBER: _ClassVar[int]
    device: str
    model: str
    mode: _common_pb2.DeviceSecurityMode
    server: str
    address: str
    reported_address: str
    nat_suspected: bool
    since_unix: int
    certificate_fingerprint: str
    certificate_kind: str
    state: str
    cipher: str
    transport_port: int
    def __init__(self, device: _Optional[str] = ..., model: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.DeviceSecurityMode, str]] = ..., server: _Optional[str] = ..., address: _Optional[str] = ..., reported_address: _Optional[str] = ..., nat_suspected: _Optional[bool] = ..., since_unix: _Optional[int] = ..., certificate_fingerprint: _Optional[str] = ..., certificate_kind: _Optional[str] = ..., state: _Optional[str] = ..., cipher: _Optional[str] = ..., transport_port: _Optional[int] = ...) -> None: ...

class RegistrationsRequest(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class RegistrationsReply(_message.Message):
    __slots__ = ("registrations",)
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    registrations: _containers.RepeatedCompositeFieldContainer[Registration]
    def __init__(self, registrations: _Optional[_Iterable[_Union[Registration, _Mapping]]] = ...) -> None: ...

class ResetDevicesRequest(_message.Message):
    __slots__ = ("devices", "all", "server", "restart")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    server: str
    restart: bool
    def __init__(self, devices: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ..., server: _Optional[str] = ..., restart: _Optional[bool] = ...) -> None: ...

class ResetDevicesReply(_message.Message):
    __slots__ = ("request_id", "targeted", "delivery_pending")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGETED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    targeted: int
    delivery_pending: bool
    def __init__(self, request_id: _Optional[str] = ..., targeted: _Optional[int] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class ResetProgressRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ResetProgressReply(_message.Message):
    __slots__ = ("request_id", "targeted", "reset_sent", "back", "not_back", "complete")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TARGETED_FIELD_NUMBER: _ClassVar[int]
    RESET_SENT_FIELD_NUMBER: _ClassVar[int]
    BACK_FIELD_NUMBER: _ClassVar[int]
    NOT_BACK_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    targeted: int
    reset_sent: int
    back: int
    not_back: _containers.RepeatedScalarFieldContainer[str]
    complete: bool
    def __init__(self, request_id: _Optional[str] = ..., targeted: _Optional[int] = ..., reset_sent: _Optional[int] = ..., back: _Optional[int] = ..., not_back: _Optional[_Iterable[str]] = ..., complete: _Optional[bool] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("device", "address", "reason", "at_unix")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    device: str
    address: str
    reason: str
    at_unix: int
    def __init__(self, device: _Optional[str] = ..., address: _Optional[str] = ..., reason: _Optional[str] = ..., at_unix: _Optional[int] = ...) -> None: ...

class RefusalsReply(_message.Message):
    __slots__ = ("refusals",)
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    refusals: _containers.RepeatedCompositeFieldContainer[Refusal]
    def __init__(self, refusals: _Optional[_Iterable[_Union[Refusal, _Mapping]]] = ...) -> None: ...

class Line(_message.Message):
    __slots__ = ("dn", "device", "line_index", "label")
    DN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LINE_INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    dn: str
    device: str
    line_index: int
    label: str
    def __init__(self, dn: _Optional[str] = ..., device: _Optional[str] = ..., line_index: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class LinesRequest(_message.Message):
    __slots__ = ("device", "dn")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DN_FIELD_NUMBER: _ClassVar[int]
    device: str
    dn: str
    def __init__(self, device: _Optional[str] = ..., dn: _Optional[str] = ...) -> None: ...

class LinesReply(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    def __init__(self, lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ...) -> None: ...

class DevicePool(_message.Message):
    __slots__ = ("name", "cm_group", "srst")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CM_GROUP_FIELD_NUMBER: _ClassVar[int]
    SRST_FIELD_NUMBER: _ClassVar[int]
    name: str
    cm_group: _containers.RepeatedScalarFieldContainer[str]
    srst: str
    def __init__(self, name: _Optional[str] = ..., cm_group: _Optional[_Iterable[str]] = ..., srst: _Optional[str] = ...) -> None: ...

class DevicePoolsReply(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[DevicePool]
    def __init__(self, pools: _Optional[_Iterable[_Union[DevicePool, _Mapping]]] = ...) -> None: ...

class SetDevicePoolRequest(_message.Message):
    __slots__ = ("device", "pool")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    device: str
    pool: str
    def __init__(self, device: _Optional[str] = ..., pool: _Optional[str] = ...) -> None: ...

class SrstDirectoryRequest(_message.Message):
    __slots__ = ("host", "include_default")
    HOST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    host: str
    include_default: bool
    def __init__(self, host: _Optional[str] = ..., include_default: _Optional[bool] = ...) -> None: ...

class SrstPhone(_message.Message):
    __slots__ = ("device", "model", "mode", "lines")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    device: str
    model: str
    mode: _common_pb2.DeviceSecurityMode
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    def __init__(self, device: _Optional[str] = ..., model: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.DeviceSecurityMode, str]] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ...) -> None: ...

class SrstDirectory(_message.Message):
    __slots__ = ("cluster_mode", "phones", "lsc_issuers", "manufacturer_ca", "generated_unix_ms", "reference", "secure")
    CLUSTER_MODE_FIELD_NUMBER: _ClassVar[int]
    PHONES_FIELD_NUMBER: _ClassVar[int]
    LSC_ISSUERS_FIELD_NUMBER: _ClassVar[int]
    MANUFACTURER_CA_FIELD_NUMBER: _ClassVar[int]
    GENERATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    cluster_mode: _common_pb2.ClusterSecurityMode
    phones: _containers.RepeatedCompositeFieldContainer[SrstPhone]
    lsc_issuers: _containers.RepeatedScalarFieldContainer[bytes]
    manufacturer_ca: bytes
    generated_unix_ms: int
    reference: str
    secure: bool
    def __init__(self, cluster_mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., phones: _Optional[_Iterable[_Union[SrstPhone, _Mapping]]] = ..., lsc_issuers: _Optional[_Iterable[bytes]] = ..., manufacturer_ca: _Optional[bytes] = ..., generated_unix_ms: _Optional[int] = ..., reference: _Optional[str] = ..., secure: _Optional[bool] = ...) -> None: ...

class ClusterModeReply(_message.Message):
    __slots__ = ("mode", "ctl_present")
    MODE_FIELD_NUMBER: _ClassVar[int]
    CTL_PRESENT_FIELD_NUMBER: _ClassVar[int]
    mode: _common_pb2.ClusterSecurityMode
    ctl_present: bool
    def __init__(self, mode: _Optional[_Union[_common_pb2.ClusterSecurityMode, str]] = ..., ctl_present: _Optional[bool] = ...) -> None: ...

class DeviceRequest(_message.Message):
    __slots__ = ("device",)
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    device: str
    def __init__(self, device: _Optional[str] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("device", "model", "mode")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    device: str
    model: str
    mode: _common_pb2.DeviceSecurityMode
    def __init__(self, device: _Optional[str] = ..., model: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.DeviceSecurityMode, str]] = ...) -> None: ...

class DevicesRequest(_message.Message):
    __slots__ = ("modes", "after", "limit")
    MODES_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    modes: _containers.RepeatedScalarFieldContainer[_common_pb2.DeviceSecurityMode]
    after: str
    limit: int
    def __init__(self, modes: _Optional[_Iterable[_Union[_common_pb2.DeviceSecurityMode, str]]] = ..., after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class DevicesReply(_message.Message):
    __slots__ = ("devices", "more")
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    more: bool
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...

class DeviceConfigsRequest(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, devices: _Optional[_Iterable[str]] = ...) -> None: ...

class SrstReferenceConfig(_message.Message):
    __slots__ = ("name", "host", "sccp_port", "sccp_tls_port", "secure", "certificate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SCCP_PORT_FIELD_NUMBER: _ClassVar[int]
    SCCP_TLS_PORT_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    host: str
    sccp_port: int
    sccp_tls_port: int
    secure: bool
    certificate: bytes
    def __init__(self, name: _Optional[str] = ..., host: _Optional[str] = ..., sccp_port: _Optional[int] = ..., sccp_tls_port: _Optional[int] = ..., secure: _Optional[bool] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class PoolConfig(_message.Message):
    __slots__ = ("name", "cm_group", "srst", "reference")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CM_GROUP_FIELD_NUMBER: _ClassVar[int]
    SRST_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    cm_group: _containers.RepeatedScalarFieldContainer[str]
    srst: str
    reference: SrstReferenceConfig
    def __init__(self, name: _Optional[str] = ..., cm_group: _Optional[_Iterable[str]] = ..., srst: _Optional[str] = ..., reference: _Optional[_Union[SrstReferenceConfig, _Mapping]] = ...) -> None: ...

class DeviceHardening(_message.Message):
    __slots__ = ("web_access", "pc_port", "settings_access", "garp", "voice_vlan_access", "span_to_pc_port")
    WEB_ACCESS_FIELD_NUMBER: _ClassVar[int]
    PC_PORT_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_ACCESS_FIELD_NUMBER: _ClassVar[int]
    GARP_FIELD_NUMBER: _ClassVar[int]
    VOICE_VLAN_ACCESS_FIELD_NUMBER: _ClassVar[int]
    SPAN_TO_PC_PORT_FIELD_NUMBER: _ClassVar[int]
    web_access: bool
    pc_port: bool
    settings_access: bool
    garp: bool
    voice_vlan_access: bool
    span_to_pc_port: bool
    def __init__(self, web_access: _Optional[bool] = ..., pc_port: _Optional[bool] = ..., settings_access: _Optional[bool] = ..., garp: _Optional[bool] = ..., voice_vlan_access: _Optional[bool] = ..., span_to_pc_port: _Optional[bool] = ...) -> None: ...

class DeviceConfigInput(_message.Message):
    __slots__ = ("name", "model", "mode", "device_pool", "config_version", "hardening", "pool")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_POOL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDENING_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    mode: _common_pb2.DeviceSecurityMode
    device_pool: str
    config_version: int
    hardening: DeviceHardening
    pool: PoolConfig
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.DeviceSecurityMode, str]] = ..., device_pool: _Optional[str] = ..., config_version: _Optional[int] = ..., hardening: _Optional[_Union[DeviceHardening, _Mapping]] = ..., pool: _Optional[_Union[PoolConfig, _Mapping]] = ...) -> None: ...

class DeviceConfigsPage(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceConfigInput]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceConfigInput, _Mapping]]] = ...) -> None: ...

class CallLeg(_message.Message):
    __slots__ = ("device", "model", "kind", "device_mode", "line", "dn", "call_reference", "state", "role", "shown", "rx", "tx", "user", "codec")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    DN_FIELD_NUMBER: _ClassVar[int]
    CALL_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SHOWN_FIELD_NUMBER: _ClassVar[int]
    RX_FIELD_NUMBER: _ClassVar[int]
    TX_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    device: str
    model: str
    kind: str
    device_mode: str
    line: int
    dn: str
    call_reference: int
    state: str
    role: str
    shown: str
    rx: str
    tx: str
    user: str
    codec: str
    def __init__(self, device: _Optional[str] = ..., model: _Optional[str] = ..., kind: _Optional[str] = ..., device_mode: _Optional[str] = ..., line: _Optional[int] = ..., dn: _Optional[str] = ..., call_reference: _Optional[int] = ..., state: _Optional[str] = ..., role: _Optional[str] = ..., shown: _Optional[str] = ..., rx: _Optional[str] = ..., tx: _Optional[str] = ..., user: _Optional[str] = ..., codec: _Optional[str] = ...) -> None: ...

class ActiveCall(_message.Message):
    __slots__ = ("id", "phase", "calling", "called", "original_called", "legs", "codec", "codec_rule", "status", "rule", "reasons", "resources", "barge", "barge_rule", "created_unix_ms", "connected_unix_ms", "node")
    ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_CALLED_FIELD_NUMBER: _ClassVar[int]
    LEGS_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_RULE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    BARGE_FIELD_NUMBER: _ClassVar[int]
    BARGE_RULE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    id: int
    phase: str
    calling: str
    called: str
    original_called: str
    legs: _containers.RepeatedCompositeFieldContainer[CallLeg]
    codec: str
    codec_rule: str
    status: str
    rule: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.RepeatedScalarFieldContainer[str]
    barge: str
    barge_rule: str
    created_unix_ms: int
    connected_unix_ms: int
    node: str
    def __init__(self, id: _Optional[int] = ..., phase: _Optional[str] = ..., calling: _Optional[str] = ..., called: _Optional[str] = ..., original_called: _Optional[str] = ..., legs: _Optional[_Iterable[_Union[CallLeg, _Mapping]]] = ..., codec: _Optional[str] = ..., codec_rule: _Optional[str] = ..., status: _Optional[str] = ..., rule: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., resources: _Optional[_Iterable[str]] = ..., barge: _Optional[str] = ..., barge_rule: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., connected_unix_ms: _Optional[int] = ..., node: _Optional[str] = ...) -> None: ...

class CallsReply(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[ActiveCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[ActiveCall, _Mapping]]] = ...) -> None: ...

class CallEventMessage(_message.Message):
    __slots__ = ("kind", "call", "at_unix_ms", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    call: ActiveCall
    at_unix_ms: int
    detail: str
    def __init__(self, kind: _Optional[str] = ..., call: _Optional[_Union[ActiveCall, _Mapping]] = ..., at_unix_ms: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class CtiRequest(_message.Message):
    __slots__ = ("port", "action", "number")
    PORT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    port: str
    action: str
    number: str
    def __init__(self, port: _Optional[str] = ..., action: _Optional[str] = ..., number: _Optional[str] = ...) -> None: ...

class CtiReply(_message.Message):
    __slots__ = ("port", "calls")
    PORT_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    port: str
    calls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, port: _Optional[str] = ..., calls: _Optional[_Iterable[str]] = ...) -> None: ...

class MobilityUser(_message.Message):
    __slots__ = ("user_id", "display_name", "dn", "label", "logged_in_to")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DN_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LOGGED_IN_TO_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    display_name: str
    dn: str
    label: str
    logged_in_to: str
    def __init__(self, user_id: _Optional[str] = ..., display_name: _Optional[str] = ..., dn: _Optional[str] = ..., label: _Optional[str] = ..., logged_in_to: _Optional[str] = ...) -> None: ...

class MobilityUsersReply(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[MobilityUser]
    def __init__(self, users: _Optional[_Iterable[_Union[MobilityUser, _Mapping]]] = ...) -> None: ...

class MobilityPinRequest(_message.Message):
    __slots__ = ("user_id", "pin")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    pin: str
    def __init__(self, user_id: _Optional[str] = ..., pin: _Optional[str] = ...) -> None: ...

class MobilityLoginRequest(_message.Message):
    __slots__ = ("device", "user_id")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    device: str
    user_id: str
    def __init__(self, device: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class MobilityLoginReply(_message.Message):
    __slots__ = ("device", "user_id", "dn", "request_id", "delivery_pending")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    device: str
    user_id: str
    dn: str
    request_id: str
    delivery_pending: bool
    def __init__(self, device: _Optional[str] = ..., user_id: _Optional[str] = ..., dn: _Optional[str] = ..., request_id: _Optional[str] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class SpeedDialSetting(_message.Message):
    __slots__ = ("device", "index", "number", "label", "delivery_pending")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    device: str
    index: int
    number: str
    label: str
    delivery_pending: bool
    def __init__(self, device: _Optional[str] = ..., index: _Optional[int] = ..., number: _Optional[str] = ..., label: _Optional[str] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class LineForwardSetting(_message.Message):
    __slots__ = ("dn", "busy", "no_answer", "devices", "delivery_pending")
    DN_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    NO_ANSWER_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    dn: str
    busy: str
    no_answer: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, dn: _Optional[str] = ..., busy: _Optional[str] = ..., no_answer: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class RegionSetting(_message.Message):
    __slots__ = ("name", "wideband", "devices", "delivery_pending")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDEBAND_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    name: str
    wideband: bool
    devices: _containers.RepeatedScalarFieldContainer[str]
    delivery_pending: bool
    def __init__(self, name: _Optional[str] = ..., wideband: _Optional[bool] = ..., devices: _Optional[_Iterable[str]] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...

class DeviceRegionSetting(_message.Message):
    __slots__ = ("device", "region", "delivery_pending")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_PENDING_FIELD_NUMBER: _ClassVar[int]
    device: str
    region: str
    delivery_pending: bool
    def __init__(self, device: _Optional[str] = ..., region: _Optional[str] = ..., delivery_pending: _Optional[bool] = ...) -> None: ...
