"""The wire-proof tools themselves, on real SCCP over TLS captured on loopback: an encryption-info
block sent over encrypted signalling cannot be read from the capture without the TLS secrets, and
reads back exactly with the NSS key log (ENC-1, ENC-5); over clear TCP anyone reads it."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from ccmsec.aio.sccp import SccpServer, connect_phone
from ccmsec.media.capture import CaptureError, LoopbackCapture, capture_available, sccp_from_capture
from ccmsec.pki import ca, tls
from ccmsec.wire import sccp as s

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

if capture_available():
    pytest.skip(capture_available(), allow_module_level=True)


async def _exchange(host, port, block, tmp_path, *, secure: bool):
    capf = ca.create_ca(ca.name("CAPF"))
    key = ca.new_key()
    ccm = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    lsc = ca.issue_with_new_key(capf, ca.name("SEP00AABBCC0E05"), server=False)
    keylog = tmp_path / "keys.log"
    phone_ctx = tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), keylog) if secure else None

    def on_event(conn, event):
        if isinstance(event, s.DeviceRegistered):
            conn.session.send(s.OpenReceiveChannel(call_reference=5, encryption=block))
            conn.flush()
    cap = LoopbackCapture(bpf=f"host {host} and tcp port {port}", directory=tmp_path)
    try:
        await asyncio.to_thread(cap.start)
    except CaptureError as exc:
        pytest.skip(str(exc))
    try:
        async with SccpServer(lambda r: s.RegistrationDecision.accept(), host=host, port=port,
                              ssl_context=tls.sccp_server_context(ccm, [capf.cert]) if secure else None,
                              keepalive_interval=1, on_event=on_event):
            phone = await connect_phone(host, port, s.Register("SEP00AABBCC0E05", host), ssl_context=phone_ctx,
                                        pinned_ccm_certificates=[ccm.cert] if secure else None)
            await phone.wait_registered()
            await phone.next_event(s.MessageReceived, timeout=5)
            await asyncio.sleep(0.3)
            await phone.close()
    finally:
        await asyncio.to_thread(cap.stop)
    return cap.path, keylog


def _blocks(messages):
    return [m.encryption for d, m in messages if isinstance(m, s.OpenReceiveChannel) and d == "to-phone"]


async def test_enc5_key_block_over_tls_needs_the_tls_secrets_to_be_read(tmp_path):
    host, port = f"127.{secrets.randbelow(200) + 20}.0.61", 2443
    block = s.EncryptionInfo(2, secrets.token_bytes(16), secrets.token_bytes(14))
    pcap, keylog = await _exchange(host, port, block, tmp_path, secure=True)
    raw = pcap.read_bytes()
    assert block.key not in raw and block.salt not in raw  # nothing in the clear on the wire
    assert _blocks(sccp_from_capture(pcap, port)) == []  # read as clear TCP: TLS records, no SCCP
    assert _blocks(sccp_from_capture(pcap, port, keylog=keylog)) == [block]


async def test_enc5_key_block_on_clear_tcp_is_readable_by_anyone(tmp_path):
    host, port = f"127.{secrets.randbelow(200) + 20}.0.62", 2000
    block = s.EncryptionInfo(2, secrets.token_bytes(16), secrets.token_bytes(14))
    pcap, _ = await _exchange(host, port, block, tmp_path, secure=False)
    assert block.key in pcap.read_bytes()
    assert _blocks(sccp_from_capture(pcap, port)) == [block]
