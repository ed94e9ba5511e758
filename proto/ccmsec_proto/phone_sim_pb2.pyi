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

class PhoneActionRequest(_message.Message):
    __slots__ = ("name", "action", "number", "call_reference", "line", "wait_seconds", "pin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    CALL_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    number: str
    call_reference: int
    line: int
    wait_seconds: float
    pin: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ..., number: _Optional[str] = ..., call_reference: _Optional[int] = ..., line: _Optional[int] = ..., wait_seconds: _Optional[float] = ..., pin: _Optional[str] = ...) -> None: ...

class PhoneLineState(_message.Message):
    __slots__ = ("instance", "number", "label")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    instance: int
    number: str
    label: str
    def __init__(self, instance: _Optional[int] = ..., number: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class PhoneCallState(_message.Message):
    __slots__ = ("reference", "line", "state", "calling", "called", "icon", "softkeys", "prompt", "ringing", "tone")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CALLING_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    ICON_FIELD_NUMBER: _ClassVar[int]
    SOFTKEYS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RINGING_FIELD_NUMBER: _ClassVar[int]
    TONE_FIELD_NUMBER: _ClassVar[int]
    reference: int
    line: int
    state: str
    calling: str
    called: str
    icon: str
    softkeys: _containers.RepeatedScalarFieldContainer[str]
    prompt: str
    ringing: bool
    tone: str
    def __init__(self, reference: _Optional[int] = ..., line: _Optional[int] = ..., state: _Optional[str] = ..., calling: _Optional[str] = ..., called: _Optional[str] = ..., icon: _Optional[str] = ..., softkeys: _Optional[_Iterable[str]] = ..., prompt: _Optional[str] = ..., ringing: _Optional[bool] = ..., tone: _Optional[str] = ...) -> None: ...

class PhoneMediaCounters(_message.Message):
    __slots__ = ("sent", "received", "lost", "refused_authentication", "refused_replay", "malformed", "streams", "srtp_both_ways")
    SENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    REFUSED_AUTHENTICATION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REPLAY_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    SRTP_BOTH_WAYS_FIELD_NUMBER: _ClassVar[int]
    sent: int
    received: int
    lost: int
    refused_authentication: int
    refused_replay: int
    malformed: int
    streams: int
    srtp_both_ways: bool
    def __init__(self, sent: _Optional[int] = ..., received: _Optional[int] = ..., lost: _Optional[int] = ..., refused_authentication: _Optional[int] = ..., refused_replay: _Optional[int] = ..., malformed: _Optional[int] = ..., streams: _Optional[int] = ..., srtp_both_ways: _Optional[bool] = ...) -> None: ...

class PhoneCallsReply(_message.Message):
    __slots__ = ("name", "ready", "lines", "calls", "media", "notifications", "registered_with", "transport", "ended")
    NAME_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    MEDIA_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_WITH_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    name: str
    ready: bool
    lines: _containers.RepeatedCompositeFieldContainer[PhoneLineState]
    calls: _containers.RepeatedCompositeFieldContainer[PhoneCallState]
    media: PhoneMediaCounters
    notifications: _containers.RepeatedScalarFieldContainer[str]
    registered_with: str
    transport: str
    ended: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., ready: _Optional[bool] = ..., lines: _Optional[_Iterable[_Union[PhoneLineState, _Mapping]]] = ..., calls: _Optional[_Iterable[_Union[PhoneCallState, _Mapping]]] = ..., media: _Optional[_Union[PhoneMediaCounters, _Mapping]] = ..., notifications: _Optional[_Iterable[str]] = ..., registered_with: _Optional[str] = ..., transport: _Optional[str] = ..., ended: _Optional[_Iterable[str]] = ...) -> None: ...
