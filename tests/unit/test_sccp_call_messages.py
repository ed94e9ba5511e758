"""SCCP set-up and call-control messages (issue 10): round trips, layouts, bounds, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire import sccp_setup as u

SAMPLES: list[s.Message] = [
    u.ForwardStatReq(1), u.SpeedDialStatReq(2), u.LineStatReq(1), u.ConfigStatReq(),
    u.TimeDateReq(), u.ButtonTemplateReq(), u.VersionReq(), u.ServerReq(), u.SoftKeySetReq(),
    u.SoftKeyTemplateReq(), u.RegisterAvailableLines(2),
    u.ForwardStat(1, 1, 1, "2001", 0, "", 1, "3001"),
    u.SpeedDialStat(1, "2001", "Bob"),
    u.LineStat(1, "1001", "Alice", "Alice 1001", 0x0F),
    u.ConfigStat("SEP001122334455", 0, 1, "alice", "callmanager", 2, 1),
    u.Version("ccmsec"),
    u.ButtonTemplate((u.Button(1, u.ButtonType.LINE), u.Button(2, u.ButtonType.LINE),
                      u.Button(1, u.ButtonType.SPEED_DIAL))),
    u.SoftKeyTemplateRes((u.SoftKeyDefinition("Redial", 1), u.SoftKeyDefinition("Barge", 21))),
    u.SoftKeySetRes((u.SoftKeySet((1, 2)), u.SoftKeySet(()), u.SoftKeySet((9, 3, 4, 13)))),
    u.ServerRes((u.ServerEntry("callmanager", 2000, "127.0.0.1"),)),
    c.EnblocCall("1002", 1), c.Stimulus(c.StimulusType.LINE, 1, 0, 0), c.HookFlash(1, 7),
    c.SoftKeyEvent(c.SoftKey.BARGE, 2, 7),
    c.SetRinger(c.RingMode.INSIDE, 1, 1, 7), c.SelectSoftKeys(1, 7, c.SoftKeySetIndex.CONNECTED),
    c.DisplayPromptStatus(0, "Your current options", 1, 7), c.ClearPromptStatus(1, 7),
    c.DisplayNotify(10, "Barge failed"), c.ClearNotify(), c.DeactivateCallPlane(),
    c.BackSpaceReq(1, 7), c.DialedNumber("1002", 1, 7),
]


def test_every_new_module_message_has_a_sample():
    new = {cls for cls in s.all_message_types() if cls.__module__ in (u.__name__, c.__name__)}
    assert {type(m) for m in SAMPLES} == new


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.name)
def test_round_trip(message):
    frame = message.serialize()
    length, version, message_id = struct.unpack_from("<III", frame)
    assert length + 8 == len(frame) and version == 0 and message_id == message.MESSAGE_ID
    assert s.parse_frame(frame) == message


def test_fixed_arrays_are_always_sent_whole():
    """The dissector walks every slot: 42 buttons, 32 softkeys, 16 sets, 5 servers."""
    assert len(u.ButtonTemplate(()).payload()) == 12 + 42 * 2
    assert len(u.SoftKeyTemplateRes(()).payload()) == 12 + 32 * 20
    assert len(u.SoftKeySetRes(()).payload()) == 12 + 16 * 48
    assert len(u.ServerRes(()).payload()) == 48 * 5 + 4 * 5 + 4 * 5
    bt = u.ButtonTemplate((u.Button(1, u.ButtonType.LINE),)).payload()
    assert struct.unpack_from("<III", bt) == (0, 1, 1) and bt[12:16] == b"\x01\x09\x00\xff"


def test_softkey_set_carries_info_indexes():
    raw = u.SoftKeySetRes((u.SoftKeySet((9, 21)),)).payload()
    assert raw[12:14] == bytes((9, 21))
    assert struct.unpack_from("<2H", raw, 12 + 16) == (309, 321)


@pytest.mark.parametrize("cls, size, slots", [
    (u.ButtonTemplate, 12 + 84, 42), (u.SoftKeyTemplateRes, 12 + 640, 32),
    (u.SoftKeySetRes, 12 + 768, 16)])
def test_array_counts_are_bounded(cls, size, slots):
    payload = bytearray(cls(()).payload())
    struct.pack_into("<II", payload, 4, slots + 1, slots + 1)
    with pytest.raises(s.SccpProtocolError, match=f"exceed {slots}"):
        s.decode_message(cls.MESSAGE_ID, bytes(payload))
    with pytest.raises(s.SccpProtocolError, match="too short"):
        s.decode_message(cls.MESSAGE_ID, bytes(payload[: size - 1]))


def test_serialising_too_many_entries_is_refused():
    with pytest.raises(s.SccpProtocolError, match="exceed 42"):
        u.ButtonTemplate(tuple(u.Button(1, 9) for _ in range(43))).serialize()
    with pytest.raises(s.SccpProtocolError, match="at most 16"):
        u.SoftKeySetRes((u.SoftKeySet(tuple(range(1, 18))),)).serialize()
    with pytest.raises(s.SccpProtocolError, match="do not fit"):
        c.DialedNumber("1" * 25).serialize()


def test_optional_trailing_fields():
    assert s.decode_message(0x0004, b"1002" + bytes(20)) == c.EnblocCall("1002", 0)
    assert s.decode_message(0x0005, struct.pack("<II", 9, 1)) == c.Stimulus(9, 1)
    assert s.decode_message(0x0026, struct.pack("<I", 11)) == c.SoftKeyEvent(11)
    assert s.decode_message(0x0008, b"") == c.HookFlash()
    with pytest.raises(s.SccpProtocolError, match="EnblocCall: payload too short"):
        s.decode_message(0x0004, b"12")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted({m.MESSAGE_ID for m in SAMPLES})), st.binary(max_size=900))
def test_fuzz_each_new_parser(message_id, payload):
    try:
        message = s.decode_message(message_id, payload)
    except s.SccpProtocolError:
        return
    assert s.parse_frame(message.serialize()) == message


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SAMPLES), st.integers(0, 900), st.integers(0, 255))
def test_fuzz_mutated_valid_frames(message, index, value):
    frame = bytearray(message.serialize())
    frame[index % len(frame)] = value
    try:
        for parsed in s.SccpFramer().feed(bytes(frame)):
            assert s.parse_frame(parsed.serialize()) == parsed
    except s.SccpProtocolError:
        pass
