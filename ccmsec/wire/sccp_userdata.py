"""Application data between a phone and call control (the Wireshark skinny dissector's
DeviceToUserDataMessage 0x002E, phone → call control, and UserToDeviceDataMessage 0x011E, call
control → phone): an application id, the line and call it is about, a transaction id, and up to
2,000 bytes of data (XML, as the phone's services speak). Extension mobility's login and logout
from the phone travel in them (`ccmsec.calls.mobility`), so they arrive over the device's own
registered — for secure phones, TLS-authenticated — connection.

Layout (little-endian u32s): applicationId, lineInstance, callReference, transactionId,
dataLength, then the data in a fixed 2,000-byte field (NUL-padded), as the dissector reads it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ccmsec.wire.sccp import Message, SccpProtocolError

DATA_SIZE = 2000
_HEAD = struct.Struct("<IIIII")


def _check(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise SccpProtocolError(f"{what} {value} is not a 32-bit unsigned value")
    return value


@dataclass(frozen=True)
class _UserData(Message):
    application_id: int = 0
    line_instance: int = 0
    call_reference: int = 0
    transaction_id: int = 0
    data: bytes = b""

    def payload(self) -> bytes:
        if len(self.data) > DATA_SIZE:
            raise SccpProtocolError(f"{self.name}: {len(self.data)} bytes of data exceed {DATA_SIZE}")
        head = _HEAD.pack(_check(self.application_id, "applicationId"),
                          _check(self.line_instance, "lineInstance"),
                          _check(self.call_reference, "callReference"),
                          _check(self.transaction_id, "transactionId"), len(self.data))
        return head + self.data + bytes(DATA_SIZE - len(self.data))

    @classmethod
    def parse(cls, payload: bytes) -> "_UserData":
        if len(payload) < _HEAD.size:
            raise SccpProtocolError(f"{cls.__name__}: {len(payload)} bytes, need {_HEAD.size}")
        app, line, ref, txn, length = _HEAD.unpack_from(payload, 0)
        if length > DATA_SIZE or len(payload) < _HEAD.size + length:
            raise SccpProtocolError(f"{cls.__name__}: dataLength {length} does not fit the message")
        return cls(app, line, ref, txn, bytes(payload[_HEAD.size:_HEAD.size + length]))


@dataclass(frozen=True)
class DeviceToUserData(_UserData):
    MESSAGE_ID: ClassVar[int] = 0x002E


@dataclass(frozen=True)
class UserToDeviceData(_UserData):
    MESSAGE_ID: ClassVar[int] = 0x011E
