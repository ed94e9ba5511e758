"""tshark decodes every SCCP message of complete calls (issue 10's check), captured live on
loopback from the real call agent (`CallControl`, SCCP on 2000 and TLS on 2443): the set-up
exchange after RegisterAck, dialling, ringing, answer, media channels, hold and resume, an ad hoc
conference, a consultative transfer and hang-up. A non-secure phone on 2000 is decoded as is; the
encrypted phones on 2443 only with the TLS key log (without it, no SCCP is visible: ENC-1) — in
both, every message by name and no malformed packet or error mark."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from ccmsec.aio.sccp import connect_phone
from ccmsec.aio.sccp_calling import CallingPhone
from ccmsec.calls.config import AgentSettings
from ccmsec.db.devices import Device
from ccmsec_callmanager.cluster_state import ClusterState, ClusterStateFollower
from ccmsec.db.lines import Line
from ccmsec.pki.ca import Issued, load_pair, new_key
from ccmsec.pki.lsc import issue_lsc
from ccmsec.pki.tls import enable_keylog, sccp_phone_context
from ccmsec.runtime.database import open_database
from ccmsec.wire import sccp as s
from ccmsec.wire import sccp_calls as c
from ccmsec.wire import sccp_setup as u
from ccmsec.wire.sccp_calls import CallStateCode as CS
from ccmsec_callmanager.callcontrol import CallControl, CallControlConfig
from tests.interop.test_sccp_tshark import _fields, _port_free, _stop_capture

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

if shutil.which("tshark") is None:
    pytest.skip("tshark binary not installed", allow_module_level=True)

HOST = "127.0.0.48"
KEY = new_key()
PLAIN = "SEP0000000CA001"     # non-secure, port 2000
ENC_A = "SEP0000000CA002"     # encrypted, 2443
ENC_B = "SEP0000000CA003"     # encrypted, 2443
DN = {PLAIN: "3001", ENC_A: "3002", ENC_B: "3003"}
MODES = {PLAIN: "non-secure", ENC_A: "encrypted", ENC_B: "encrypted"}

# Messages every complete call here must show on the wire (both directions).
CALL_MESSAGES = {
    s.Register, s.RegisterAck, s.CapabilitiesReq, s.CapabilitiesRes, u.ButtonTemplate,
    u.SoftKeyTemplateRes, u.SoftKeySetRes, u.LineStat, u.ConfigStat, s.DefineTimeDate, u.ServerRes,
    c.SelectSoftKeys, s.CallState, s.CallInfo, s.StartTone, s.StopTone, c.SetRinger,
    c.SoftKeyEvent, s.OpenReceiveChannel, s.StartMediaTransmission, s.StopMediaTransmission,
    s.CloseReceiveChannel,
}


async def _phone(cc: CallControl, name: str, keylog) -> CallingPhone:
    mode = MODES[name]
    if mode == "non-secure":
        conn = await connect_phone(HOST, 2000, s.Register(name, HOST, device_type=7))
    else:
        capf = load_pair(cc.config.data_dir / "pki" / "capf.crt", cc.config.data_dir / "pki" / "capf.key")
        lsc = Issued(issue_lsc(capf, name, KEY.public_key()), KEY)
        ctx = enable_keylog(sccp_phone_context(mode, [cc.server_certificate], lsc=lsc), keylog)
        conn = await connect_phone(HOST, 2443, s.Register(name, HOST, device_type=30006), ssl_context=ctx,
                                   pinned_ccm_certificates=[cc.server_certificate])
    conn.session.capabilities = s.CapabilitiesRes((s.MediaCapability(4),), encryption_capable=mode == "encrypted")
    phone = CallingPhone(conn, bind_host=HOST)
    await phone.wait_ready()
    return phone


def _state(phone: CallingPhone, state: CS):
    return lambda d: any(call.state == state for call in d.calls.values())


async def _connected(phone: CallingPhone):
    await phone.wait_for(lambda d: any(call.state == CS.CONNECTED for call in d.calls.values())
                         and d.channels and all(ch.tx for ch in d.channels.values()),
                         what="a connected call with media")


async def _complete_calls(cc: CallControl, keylog) -> None:
    p = await _phone(cc, PLAIN, keylog)
    a = await _phone(cc, ENC_A, keylog)
    b = await _phone(cc, ENC_B, keylog)
    try:
        # PLAIN calls A: dial, ring-back / ringing, answer, connected with media
        p.act(p.display.off_hook)
        await p.wait_for(_state(p, CS.OFF_HOOK), what="dial tone")
        p.act(p.display.keypad, DN[ENC_A])
        await a.wait_for(_state(a, CS.RING_IN), what="ringing")
        a.act(a.display.answer)
        await _connected(p)
        # hold and resume (music on hold for A)
        p.act(p.display.hold)
        await p.wait_for(_state(p, CS.HOLD), what="hold")
        p.act(p.display.resume)
        await _connected(p)
        # ad hoc conference: PLAIN consults B, then joins everyone through the bridge
        p.act(p.display.conference)
        await p.wait_for(_state(p, CS.OFF_HOOK), what="the consultation's dial tone")
        p.act(p.display.keypad, DN[ENC_B])
        await b.wait_for(_state(b, CS.RING_IN), what="B ringing")
        b.act(b.display.answer)
        await b.wait_for(_state(b, CS.CONNECTED), what="B connected")
        consult = p.display.active_call()
        p.act(p.display.conference, consult.reference)
        await p.wait_for(lambda d: len(d.calls) == 1 and _state(p, CS.CONNECTED)(d), what="the conference")
        # B leaves, then everyone hangs up
        b.act(b.display.hang_up)
        await b.wait_for(lambda d: not d.calls, what="B cleared")
        p.act(p.display.hang_up)
        await a.wait_for(lambda d: not d.calls, what="A cleared")
        # consultative transfer: A calls PLAIN, PLAIN transfers A to B
        a.act(a.display.dial, DN[PLAIN])
        await p.wait_for(_state(p, CS.RING_IN), what="PLAIN ringing")
        p.act(p.display.answer)
        await _connected(p)
        p.act(p.display.transfer)
        await p.wait_for(_state(p, CS.OFF_HOOK), what="the consultation's dial tone")
        p.act(p.display.keypad, DN[ENC_B])
        await b.wait_for(_state(b, CS.RING_IN), what="B ringing")
        b.act(b.display.answer)
        await b.wait_for(_state(b, CS.CONNECTED), what="B connected")
        p.act(p.display.transfer, p.display.active_call().reference)
        await p.wait_for(lambda d: not d.calls, what="PLAIN out of the call")
        await _connected(a)
        a.act(a.display.hang_up)
        await b.wait_for(lambda d: not d.calls, what="B cleared")
    finally:
        for phone in (p, a, b):
            await phone.close()


def _capture(path, bpf: str) -> subprocess.Popen:
    proc = subprocess.Popen(["tshark", "-i", "lo", "-w", str(path), "-f", bpf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    line = b""
    while time.monotonic() < deadline and b"Capturing on" not in line:
        line = proc.stderr.readline()
    if b"Capturing on" not in line:
        proc.kill()
        pytest.skip("cannot capture on lo (no permission?)")
    time.sleep(0.3)
    return proc


def _ids(path, display_filter: str, *opts: str) -> set[int]:
    lines = _fields(path, *opts, "-Y", display_filter, "-T", "fields", "-e", "skinny.messageId")
    return {int(v, 0) for line in lines for v in line.split(",") if v}


async def test_tshark_decodes_every_sccp_message_of_complete_calls_on_2000_and_2443(tmp_path):
    for port in (2000, 2443):
        if not _port_free(HOST, port):
            pytest.skip(f"{HOST}:{port} busy")
    engine, sm = await open_database(f"sqlite:///{tmp_path / 'ccmsec.db'}")
    async with sm() as session, session.begin():
        for name, mode in MODES.items():
            session.add(Device(name=name, model="7960" if mode == "non-secure" else "7970", security_mode=mode))
        await session.flush()
        for name, dn in DN.items():
            session.add(Line(dn=dn, device=name, line_index=1, label=""))
    cc = CallControl(CallControlConfig("callmanager", HOST, 2000, 2443, tmp_path, agent=AgentSettings(
        inter_digit_timeout=0.3, server_name="callmanager")), sm,
        cluster_state=ClusterStateFollower.fixed(ClusterState("mixed", True, 1)))  # mixed with a CTL, as the CTL Provider would say
    await cc.start()
    keylog = tmp_path / "keys.log"
    pcap = tmp_path / "calls.pcap"
    proc = _capture(pcap, f"host {HOST} and (tcp port 2000 or tcp port 2443)")
    try:
        await _complete_calls(cc, keylog)
    finally:
        _stop_capture(proc)
        await cc.close()
        await engine.dispose()

    wanted = {m.MESSAGE_ID for m in CALL_MESSAGES}
    # 2000: plain SCCP, every message of the call decodes
    plain = _ids(pcap, "tcp.port == 2000 && skinny")
    assert wanted <= plain, f"missing on 2000: {sorted(hex(i) for i in wanted - plain)}"
    assert _fields(pcap, "-Y", "tcp.port == 2000 && (_ws.malformed || _ws.expert.severity >= 8388608)") == []
    # 2443: nothing readable without the TLS secrets (ENC-1) …
    assert _fields(pcap, "-d", "tcp.port==2443,tls", "-Y", "tcp.port == 2443 && skinny") == []
    # … and every message of the call with them
    tls_opts = ["-o", f"tls.keylog_file:{keylog}", "-d", "tcp.port==2443,tls"]
    secure = _ids(pcap, "tcp.port == 2443 && skinny", *tls_opts)
    assert wanted <= secure, f"missing on 2443: {sorted(hex(i) for i in wanted - secure)}"
    assert _fields(pcap, *tls_opts, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []
    # the conference and the transfer are in the calls' state changes on the wire
    states = {int(v, 0) for ln in _fields(pcap, "-Y", "skinny.messageId == 0x0111", "-T", "fields",
                                          "-e", "skinny.callState") for v in ln.split(",") if v}
    assert {int(CS.OFF_HOOK), int(CS.RING_OUT), int(CS.CONNECTED), int(CS.HOLD), int(CS.ON_HOOK)} <= states
