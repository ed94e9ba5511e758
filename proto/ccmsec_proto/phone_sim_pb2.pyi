from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddPhonesRequest(_message.Message):
    __slots__ = ("count", "model", "name_prefix")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    count: int
    model: str
    name_prefix: str
    def __init__(self, count: _Optional[int] = ..., model: _Optional[str] = ..., name_prefix: _Optional[str] = ...) -> None: ...

class PhoneSelector(_message.Message):
    __slots__ = ("names", "all")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    all: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., all: _Optional[bool] = ...) -> None: ...

class PhoneName(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SetAuthStringRequest(_message.Message):
    __slots__ = ("name", "auth_string")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUTH_STRING_FIELD_NUMBER: _ClassVar[int]
    name: str
    auth_string: str
    def __init__(self, name: _Optional[str] = ..., auth_string: _Optional[str] = ...) -> None: ...

class SetServersRequest(_message.Message):
    __slots__ = ("phones", "tftp", "capf", "call_control", "clear")
    PHONES_FIELD_NUMBER: _ClassVar[int]
    TFTP_FIELD_NUMBER: _ClassVar[int]
    CAPF_FIELD_NUMBER: _ClassVar[int]
    CALL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    phones: PhoneSelector
    tftp: str
    capf: str
    call_control: _containers.RepeatedScalarFieldContainer[str]
    clear: bool
    def __init__(self, phones: _Optional[_Union[PhoneSelector, _Mapping]] = ..., tftp: _Optional[str] = ..., capf: _Optional[str] = ..., call_control: _Optional[_Iterable[str]] = ..., clear: _Optional[bool] = ...) -> None: ...

class PhoneState(_message.Message):
    __slots__ = ("name", "model", "mac", "state", "files", "ctl_sha256", "trust_list", "mic", "lsc", "last_failure", "last_failure_reason", "firmware", "security_mode", "settings", "boots", "web_address", "registered_with", "transport", "history", "booting", "certificate_in_use", "pc_port", "garp", "tftp_server", "capf_server", "call_control")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CTL_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRUST_LIST_FIELD_NUMBER: _ClassVar[int]
    MIC_FIELD_NUMBER: _ClassVar[int]
    LSC_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_FIELD_NUMBER: _ClassVar[int]
    SECURITY_MODE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    BOOTS_FIELD_NUMBER: _ClassVar[int]
    WEB_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_WITH_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BOOTING_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_IN_USE_FIELD_NUMBER: _ClassVar[int]
    PC_PORT_FIELD_NUMBER: _ClassVar[int]
    GARP_FIELD_NUMBER: _ClassVar[int]
    TFTP_SERVER_FIELD_NUMBER: _ClassVar[int]
    CAPF_SERVER_FIELD_NUMBER: _ClassVar[int]
    CALL_CONTROL_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    mac: str
    state: str
    files: _containers.RepeatedScalarFieldContainer[str]
    ctl_sha256: str
    trust_list: _containers.RepeatedCompositeFieldContainer[_common_pb2.Certificate]
    mic: _common_pb2.Certificate
    lsc: _common_pb2.Certificate
    last_failure: str
    last_failure_reason: str
    firmware: str
    security_mode: _common_pb2.DeviceSecurityMode
    settings: _containers.ScalarMap[str, str]
    boots: int
    web_address: str
    registered_with: str
    transport: str
    history: _containers.RepeatedScalarFieldContainer[str]
    booting: bool
    certificate_in_use: str
    pc_port: str
    garp: str
    tftp_server: str
    capf_server: str
    call_control: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., mac: _Optional[str] = ..., state: _Optional[str] = ..., files: _Optional[_Iterable[str]] = ..., ctl_sha256: _Optional[str] = ..., trust_list: _Optional[_Iterable[_Union[_common_pb2.Certificate, _Mapping]]] = ..., mic: _Optional[_Union[_common_pb2.Certificate, _Mapping]] = ..., lsc: _Optional[_Union[_common_pb2.Certificate, _Mapping]] = ..., last_failure: _Optional[str] = ..., last_failure_reason: _Optional[str] = ..., firmware: _Optional[str] = ..., security_mode: _Optional[_Union[_common_pb2.DeviceSecurityMode, str]] = ..., settings: _Optional[_Mapping[str, str]] = ..., boots: _Optional[int] = ..., web_address: _Optional[str] = ..., registered_with: _Optional[str] = ..., transport: _Optional[str] = ..., history: _Optional[_Iterable[str]] = ..., booting: _Optional[bool] = ..., certificate_in_use: _Optional[str] = ..., pc_port: _Optional[str] = ..., garp: _Optional[str] = ..., tftp_server: _Optional[str] = ..., capf_server: _Optional[str] = ..., call_control: _Optional[_Iterable[str]] = ...) -> None: ...

class PhonesReply(_message.Message):
    __slots__ = ("phones",)
    PHONES_FIELD_NUMBER: _ClassVar[int]
    phones: _containers.RepeatedCompositeFieldContainer[PhoneState]
    def __init__(self, phones: _Optional[_Iterable[_Union[PhoneState, _Mapping]]] = ...) -> None: ...

class SettingsEntry(_message.Message):
    __slots__ = ("label", "value")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    label: str
    value: str
    def __init__(self, label: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class PhoneSettingsMenu(_message.Message):
    __slots__ = ("name", "entries")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    name: str
    entries: _containers.RepeatedCompositeFieldContainer[SettingsEntry]
    def __init__(self, name: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[SettingsEntry, _Mapping]]] = ...) -> None: ...
