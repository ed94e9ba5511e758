from ccmsec_proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallKeysRequest(_message.Message):
    __slots__ = ("call_id", "suite", "caller_suites", "callee_suites", "calls")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    CALLER_SUITES_FIELD_NUMBER: _ClassVar[int]
    CALLEE_SUITES_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    suite: _common_pb2.CryptoSuite
    caller_suites: _containers.RepeatedScalarFieldContainer[_common_pb2.CryptoSuite]
    callee_suites: _containers.RepeatedScalarFieldContainer[_common_pb2.CryptoSuite]
    calls: int
    def __init__(self, call_id: _Optional[str] = ..., suite: _Optional[_Union[_common_pb2.CryptoSuite, str]] = ..., caller_suites: _Optional[_Iterable[_Union[_common_pb2.CryptoSuite, str]]] = ..., callee_suites: _Optional[_Iterable[_Union[_common_pb2.CryptoSuite, str]]] = ..., calls: _Optional[int] = ...) -> None: ...

class CallKeysReply(_message.Message):
    __slots__ = ("call_id", "a_to_b", "b_to_a", "more")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    A_TO_B_FIELD_NUMBER: _ClassVar[int]
    B_TO_A_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    a_to_b: _common_pb2.KeyMaterial
    b_to_a: _common_pb2.KeyMaterial
    more: _containers.RepeatedCompositeFieldContainer[CallKeysReply]
    def __init__(self, call_id: _Optional[str] = ..., a_to_b: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., b_to_a: _Optional[_Union[_common_pb2.KeyMaterial, _Mapping]] = ..., more: _Optional[_Iterable[_Union[CallKeysReply, _Mapping]]] = ...) -> None: ...
