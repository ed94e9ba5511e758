"""tshark decodes our SCCP: plain on port 2000, and TLS on 2443 with the NSS key log."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from ccmsec.aio.sccp import SccpServer, connect_phone
from ccmsec.pki import ca, tls
from ccmsec.wire import sccp as s

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

TSHARK = shutil.which("tshark")
if TSHARK is None:
    pytest.skip("tshark binary not installed", allow_module_level=True)


def _start_capture(path, host: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [TSHARK, "-i", "lo", "-w", str(path), "-f", f"host {host} and tcp port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # Wait until tshark reports the capture has started (bounded).
    deadline = time.monotonic() + 10
    line = b""
    while time.monotonic() < deadline and b"Capturing on" not in line:
        line = proc.stderr.readline()
    if b"Capturing on" not in line:
        proc.kill()
        pytest.skip("cannot capture on lo (no permission?)")
    time.sleep(0.3)
    return proc


def _stop_capture(proc: subprocess.Popen) -> None:
    time.sleep(0.5)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _fields(path, *args: str) -> list[str]:
    out = subprocess.run([TSHARK, "-r", str(path), *args], capture_output=True, text=True,
                         timeout=30, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


async def _register_cycle(host: str, port: int, name: str, **phone_kw) -> None:
    phone = await connect_phone(host, port, s.Register(name, host), **phone_kw)
    await phone.wait_registered()
    await phone.next_event(s.KeepAliveAcked, timeout=5)
    await phone.unregister()
    await phone.close()


def _port_free(host: str, port: int) -> bool:
    import socket
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listener does
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def test_tshark_decodes_plain_registration_on_2000(tmp_path):
    host, port = "127.0.0.45", 2000
    if not _port_free(host, port):
        pytest.skip(f"{host}:{port} busy")
    pcap = tmp_path / "sccp.pcap"
    proc = _start_capture(pcap, host, port)
    try:
        async with SccpServer(lambda r: s.RegistrationDecision.accept(), host=host, port=port,
                              keepalive_interval=1):
            await _register_cycle(host, port, "SEP00AABBCCDDEE")
    finally:
        _stop_capture(proc)
    names = _fields(pcap, "-Y", "skinny", "-T", "fields", "-e", "skinny.messageId")
    ids = {int(v, 0) for line in names for v in line.split(",")}
    assert {0x0001, 0x0081, 0x009B, 0x0010, 0x0000, 0x0100, 0x0027, 0x0118} <= ids
    assert _fields(pcap, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == []
    device = _fields(pcap, "-Y", "skinny.messageId == 1", "-T", "fields", "-e", "skinny.DeviceName")
    assert device == ["SEP00AABBCCDDEE"]


async def test_tshark_decrypts_encrypted_sccp_on_2443_with_keylog(tmp_path):
    host, port = "127.0.0.46", 2443
    if not _port_free(host, port):
        pytest.skip(f"{host}:{port} busy")
    capf = ca.create_ca(ca.name("CAPF"))
    key = ca.new_key()
    ccm = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    lsc = ca.issue_with_new_key(capf, ca.name("SEP00AABBCCDDEF"), server=False)
    keylog = tmp_path / "keys.log"
    phone_ctx = tls.enable_keylog(
        tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), keylog)
    pcap = tmp_path / "sccp-tls.pcap"
    proc = _start_capture(pcap, host, port)
    try:
        async with SccpServer(lambda r: s.RegistrationDecision.accept(), host=host, port=port,
                              ssl_context=tls.sccp_server_context(ccm, [capf.cert]),
                              keepalive_interval=1):
            await _register_cycle(host, port, "SEP00AABBCCDDEF", ssl_context=phone_ctx)
    finally:
        _stop_capture(proc)
    # Skinny registers itself on TLS port 2443, so decoding TCP 2443 as TLS is enough.
    tls_opts = ["-o", f"tls.keylog_file:{keylog}", "-d", f"tcp.port=={port},tls"]
    ciphers = _fields(pcap, *tls_opts, "-Y", "tls.handshake.type == 2", "-T", "fields",
                      "-e", "tls.handshake.ciphersuite")
    assert ciphers, "no ServerHello captured"
    # Without keys: no skinny visible (ENC-1).
    assert _fields(pcap, "-d", f"tcp.port=={port},tls", "-Y", "skinny") == []
    # With the key log the SCCP inside decodes, without malformed packets.
    names = _fields(pcap, *tls_opts, "-Y", "skinny", "-T", "fields", "-e", "skinny.messageId")
    ids = {int(v, 0) for line in names for v in line.split(",")}
    assert {0x0001, 0x0081, 0x009B, 0x0010} <= ids
    assert _fields(pcap, *tls_opts, "-Y", "_ws.malformed") == []
    device = _fields(pcap, *tls_opts, "-Y", "skinny.messageId == 1", "-T", "fields",
                     "-e", "skinny.DeviceName")
    assert device == ["SEP00AABBCCDDEF"]
