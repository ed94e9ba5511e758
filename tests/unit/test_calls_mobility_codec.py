"""Extension mobility's messages between phone and call control (issue 10, DEV-2):
DeviceToUserData 0x002E / UserToDeviceData 0x011E frames as the Wireshark skinny dissector lays
them out (five u32s, then a 2,000-byte data field), and the small XML vocabulary in them. Bad
input — a short frame, a dataLength beyond the frame, another application, a DTD, unknown
elements, malformed user ids or PINs — is refused with a clear error."""

from __future__ import annotations

import struct

import pytest

from ccmsec.calls.mobility import (
    EM_APPLICATION_ID,
    LoginRequest,
    LogoutRequest,
    MobilityRequestError,
    MobilityResult,
    login_message,
    logout_message,
    parse_request,
    parse_result,
    result_message,
)
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_userdata import DATA_SIZE, DeviceToUserData, UserToDeviceData


def test_frames_round_trip_with_the_dissectors_layout():
    message = login_message("alice", "4711", 7)
    frame = message.serialize()
    length, _, message_id = struct.unpack_from("<III", frame)
    assert message_id == 0x002E and length == 4 + 20 + DATA_SIZE
    app, line, ref, txn, data_len = struct.unpack_from("<IIIII", frame, 12)
    assert (app, line, ref, txn) == (EM_APPLICATION_ID, 0, 0, 7)
    assert frame[32:32 + data_len] == b'<emLogin user="alice" pin="4711" />'
    assert s.parse_frame(frame) == message
    assert parse_request(message) == LoginRequest("alice", "4711")
    assert parse_request(logout_message(8)) == LogoutRequest()
    answer = result_message(MobilityResult(True, "login", "alice", "logged in: line 5190"), 7)
    assert answer.MESSAGE_ID == 0x011E and s.parse_frame(answer.serialize()) == answer
    assert parse_result(answer) == MobilityResult(True, "login", "alice", "logged in: line 5190")


@pytest.mark.parametrize("payload, text", [
    (b"", "need 20"),
    (struct.pack("<IIIII", 1, 0, 0, 0, 3000), "does not fit"),
    (struct.pack("<IIIII", 1, 0, 0, 0, 10) + b"short", "does not fit"),
])
def test_bad_frames_are_refused(payload, text):
    with pytest.raises(s.SccpProtocolError, match=text):
        s.decode_message(0x002E, payload)


@pytest.mark.parametrize("message, text", [
    (DeviceToUserData(0x1234, 0, 0, 1, b"<emLogout/>"), "not extension mobility"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b'<!DOCTYPE a [<!ENTITY x "y">]><emLogout/>'), "DTD"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b"<emLogin"), "not an extension-mobility document"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b"<emReboot/>"), "unknown extension-mobility request"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b'<emLogin user="a b" pin="1234"/>'), "malformed"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b'<emLogin user="alice" pin="12"/>'), "malformed"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b'<emLogin user="alice" pin="1234" x="1"/>'), "unknown"),
    (DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, "<emLogout>é</emLogout>".encode()), "not an extension"),
])
def test_bad_requests_are_refused(message, text):
    with pytest.raises(MobilityRequestError, match=text):
        parse_request(message)


def test_the_phone_refuses_to_send_malformed_credentials():
    with pytest.raises(MobilityRequestError, match="4-16 digits"):
        login_message("alice", "12ab", 1)
    with pytest.raises(MobilityRequestError, match="user id"):
        login_message("", "1234", 1)
    with pytest.raises(s.SccpProtocolError, match="exceed"):
        UserToDeviceData(EM_APPLICATION_ID, 0, 0, 1, b"x" * (DATA_SIZE + 1)).serialize()
