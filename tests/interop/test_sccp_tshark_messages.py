"""tshark decodes every SCCP message we speak (issue 10), each as its own named message and
without a malformed or error mark. Frames go to tshark in a pcap file (no capture rights needed);
the live captures of a whole call are in `test_calls_tshark.py`."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ccmsec.calls.mobility import EM_APPLICATION_ID
from ccmsec.wire import sccp as s
from ccmsec.wire.sccp_userdata import DeviceToUserData, UserToDeviceData
from tests.interop.pcapfile import write_sccp_pcap
from tests.unit.test_sccp_call_messages import SAMPLES as CALL_SAMPLES
from tests.unit.test_sccp_codec import SAMPLES as BASE_SAMPLES

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

TSHARK = shutil.which("tshark")
if TSHARK is None:
    pytest.skip("tshark binary not installed", allow_module_level=True)

FROM_PHONE = {0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0008, 0x0009,
              0x000A, 0x000B, 0x000C, 0x000D, 0x000E, 0x000F, 0x0010, 0x0012, 0x0022, 0x0025,
              0x0026, 0x0027, 0x0028, 0x002D, 0x002E, 0x0154}


def _tshark(path, *args: str) -> list[str]:
    out = subprocess.run([TSHARK, "-r", str(path), *args], capture_output=True, text=True,
                         timeout=30, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_every_message_decodes_by_name_without_malformed(tmp_path):
    # extension mobility's user data (the phone's login request, call control's answer)
    user_data = [DeviceToUserData(EM_APPLICATION_ID, 0, 0, 1, b'<emLogin user="alice" pin="4711"/>'),
                 UserToDeviceData(EM_APPLICATION_ID, 0, 0, 1, b'<emResult ok="1" user="alice"/>')]
    messages = [*BASE_SAMPLES, *CALL_SAMPLES, *user_data]
    assert {type(m) for m in messages} == set(s.all_message_types())
    pcap = tmp_path / "all.pcap"
    write_sccp_pcap(pcap, [(m.MESSAGE_ID in FROM_PHONE, m.serialize()) for m in messages])
    ids = _tshark(pcap, "-Y", "skinny", "-T", "fields", "-e", "skinny.messageId")
    assert [int(v, 0) for v in ids] == [m.MESSAGE_ID for m in messages]
    names = _tshark(pcap, "-Y", "skinny", "-T", "fields", "-e", "_ws.col.Info")
    assert not [n for n in names if "Unknown" in n], names
    assert _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []


def test_field_values_reach_the_dissector(tmp_path):
    from ccmsec.wire import sccp_calls as c
    from ccmsec.wire import sccp_setup as u
    pcap = tmp_path / "fields.pcap"
    write_sccp_pcap(pcap, [
        (False, u.LineStat(1, "1001", "Alice", "Alice 1001").serialize()),
        (False, s.CallInfo(calling_party="1001", called_party="1002", call_reference=7,
                           call_security_status=2).serialize()),
        (True, c.SoftKeyEvent(c.SoftKey.BARGE, 2, 7).serialize()),
        (False, c.DialedNumber("1002", 1, 7).serialize()),
    ])
    row = _tshark(pcap, "-Y", "skinny.messageId == 0x92", "-T", "fields", "-e", "skinny.lineDirNumber")
    assert row == ["1001"]
    row = _tshark(pcap, "-Y", "skinny.messageId == 0x8f", "-T", "fields",
                  "-e", "skinny.callSecurityStatus")
    assert [int(v, 0) for v in row] == [2]
    row = _tshark(pcap, "-Y", "skinny.messageId == 0x26", "-T", "fields", "-e", "skinny.softKeyEvent")
    assert [int(v, 0) for v in row] == [21]
    row = _tshark(pcap, "-Y", "skinny.messageId == 0x11d", "-T", "fields", "-e", "skinny.dialedNumber")
    assert row == ["1002"]


def test_a_24_digit_number_fills_callinfos_field_and_the_dissector_reads_it_whole(tmp_path):
    # CallInfo's party number fields are 24 bytes; a 24-digit number leaves no room for a NUL,
    # and the dissector reads a fixed field to its first NUL or its end: the whole number, no
    # malformed mark. A shorter one still ends at its NUL.
    number = "1" * 23 + "2"
    pcap = tmp_path / "number.pcap"
    write_sccp_pcap(pcap, [
        (False, s.CallInfo(calling_party=number, called_party="1002", call_reference=7).serialize()),
    ])
    row = _tshark(pcap, "-Y", "skinny.messageId == 0x8f", "-T", "fields",
                  "-e", "skinny.callingParty", "-e", "skinny.calledParty")
    assert row == [f"{number}\t1002"]
    assert _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []


def test_a_40_character_name_fills_callinfos_field_and_the_dissector_reads_it_whole(tmp_path):
    # CallInfo's party name fields are 40 bytes; a 40-character display name leaves no room for a
    # NUL, and the dissector reads it whole, the number after it untouched, no malformed mark.
    name = "N" * 39 + "e"
    pcap = tmp_path / "name.pcap"
    write_sccp_pcap(pcap, [
        (False, s.CallInfo(calling_party_name=name, calling_party="1001", called_party_name="Bob",
                           called_party="1002", call_reference=7).serialize()),
    ])
    row = _tshark(pcap, "-Y", "skinny.messageId == 0x8f", "-T", "fields",
                  "-e", "skinny.callingPartyName", "-e", "skinny.callingParty",
                  "-e", "skinny.calledPartyName")
    assert row == [f"{name}\t1001\tBob"]
    assert _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []
