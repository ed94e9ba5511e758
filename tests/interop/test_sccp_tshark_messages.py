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


def _hint_rows(tmp_path, name: str, forward: bool) -> list[list[str]]:
    """A (1001) calls 1002; with `forward`, 1002 forwards all to 5000 (else A dials 5000). 5000 is
    B's line and X's second: both ring, B answers, X shows the call "in use remote"; B then
    conferences C in and C leaves (the call's parties change twice: X's hint is re-sent each
    time). Every CallInfo X's line 2 received for that call (not for B's consultation, also on
    5000), as tshark decodes it from a pcap of them: [called party, original called party]."""
    from tests.unit.calls_harness import Harness, conference_in
    h = Harness()
    h.add("SEP0000000000A1", "1001")
    h.add("SEP0000000000A2", "1002")
    pb, pc = h.add("SEP0000000000B1", "5000"), h.add("SEP0000000000C1", "1003")
    h.add("SEP0000000000D1", "1004", "5000")
    if forward:
        h.agent.forward_all["1002"] = "5000"
    h.call("SEP0000000000A1", "1002" if forward else "5000")
    pb.answer()
    h.pump()
    conference_in(h, pb, pc)
    pc.hang_up()
    h.pump()
    infos = [m for m in h.sent_to("SEP0000000000D1", s.CallInfo) if m.line_instance == 2]
    infos = [m for m in infos if m.call_reference == infos[0].call_reference]
    pcap = tmp_path / f"{name}.pcap"
    write_sccp_pcap(pcap, [(False, m.serialize()) for m in infos])
    rows = _tshark(pcap, "-Y", "skinny.messageId == 0x8f", "-T", "fields", "-e", "skinny.callReference",
                   "-e", "skinny.calledParty", "-e", "skinny.originalCalledParty")
    assert _tshark(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []
    assert len({row.split("\t")[0] for row in rows}) == 1   # one hint, the same reference
    return [(row.split("\t") + [""])[1:3] for row in rows]


def test_call4_a_shared_lines_resent_hint_keeps_the_forwarded_calls_original_called_number(tmp_path):
    """CALL-4 is pressed from the "in use remote" hint: the appearance must keep reading which
    call it is. A forwarded call's hint, sent again when its parties change (conference, down to
    two again), decodes with the original called number the ring-time CallInfo carried — it went
    out empty before (the phone then lost "forwarded for 1002")."""
    rows = _hint_rows(tmp_path, "forwarded", forward=True)
    assert rows == [["5000", "1002"],           # as it rang: called 5000, originally 1002
                    ["Conference", "1002"],     # re-sent: the conference
                    ["5000", "1002"]]           # re-sent: down to two again
    # bad case: a call not forwarded never decodes an original called number, not even while its
    # called number reads "Conference" (the number dialled differs from it then)
    assert _hint_rows(tmp_path, "plain", forward=False) == [["5000", ""], ["Conference", ""],
                                                            ["5000", ""]]
