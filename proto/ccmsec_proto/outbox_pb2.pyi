from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListSetAsideRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class SetAsideRow(_message.Message):
    __slots__ = ("id", "event_id", "kind", "subject", "created_unix_ms", "reason", "payload_bytes", "attempts")
    ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    id: int
    event_id: str
    kind: str
    subject: str
    created_unix_ms: int
    reason: str
    payload_bytes: int
    attempts: int
    def __init__(self, id: _Optional[int] = ..., event_id: _Optional[str] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., reason: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...

class ListSetAsideReply(_message.Message):
    __slots__ = ("role", "node", "rows", "total")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    role: str
    node: str
    rows: _containers.RepeatedCompositeFieldContainer[SetAsideRow]
    total: int
    def __init__(self, role: _Optional[str] = ..., node: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[SetAsideRow, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ResendRequest(_message.Message):
    __slots__ = ("ids", "all")
    IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    all: bool
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., all: _Optional[bool] = ...) -> None: ...

class ResendReply(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...
