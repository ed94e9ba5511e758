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


async def test_enc4_media_verify_decrypts_captured_srtp_with_the_keys_from_the_tls_sccp(tmp_path):
    """`ccmsec media verify`: keys read from decrypted SCCP (StartMediaTransmission) authenticate
    and decrypt the captured SRTP sent to that address; a tampered packet is reported; a stream no
    key was signalled for is called plain RTP."""
    import socket
    from ccmsec.media.keys import from_encryption_info
    from ccmsec.media.stream import MediaStream
    from tests.conftest import run_cli

    host, port = f"127.{secrets.randbelow(200) + 20}.0.63", 2443
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    plain_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain_rx.bind((host, 0))
    block = s.EncryptionInfo(2, secrets.token_bytes(16), secrets.token_bytes(14))
    smt = s.StartMediaTransmission(remote_ip=host, remote_port=rx.getsockname()[1], call_reference=5,
                                   encryption=block)
    capf = ca.create_ca(ca.name("CAPF"))
    key = ca.new_key()
    ccm = ca.Issued(ca.self_signed(ca.name("ccm1"), key), key)
    lsc = ca.issue_with_new_key(capf, ca.name("SEP00AABBCC0E06"), server=False)
    keylog = tmp_path / "keys.log"
    phone_ctx = tls.enable_keylog(tls.sccp_phone_context("encrypted", [ccm.cert], lsc=lsc), keylog)

    def on_event(conn, event):
        if isinstance(event, s.DeviceRegistered):
            conn.session.send(smt)
            conn.flush()
    cap = LoopbackCapture(bpf=f"host {host} and (tcp port {port} or udp)", directory=tmp_path)
    try:
        await asyncio.to_thread(cap.start)
    except CaptureError as exc:
        pytest.skip(str(exc))
    try:
        async with SccpServer(lambda r: s.RegistrationDecision.accept(), host=host, port=port,
                              ssl_context=tls.sccp_server_context(ccm, [capf.cert]), keepalive_interval=1,
                              on_event=on_event):
            phone = await connect_phone(host, port, s.Register("SEP00AABBCC0E06", host), ssl_context=phone_ctx,
                                        pinned_ccm_certificates=[ccm.cert])
            await phone.wait_registered()
            got = await phone.next_event(s.MessageReceived, timeout=5)
            told = got.message.encryption
            # the phone sends what it was told, with the key it was given
            stream = MediaStream(0, send_key=from_encryption_info(told))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.bind((host, 0))
                for n in range(20):
                    wire = bytearray(stream.packet_for(bytes(320)))
                    if n == 7:
                        wire[20] ^= 1  # tampered in transit
                    tx.sendto(bytes(wire), (host, rx.getsockname()[1]))
                plain = MediaStream(0)
                for _ in range(5):
                    tx.sendto(plain.packet_for(bytes(320)), plain_rx.getsockname())
            await asyncio.sleep(0.3)
            await phone.close()
    finally:
        await asyncio.to_thread(cap.stop)
        rx.close()
        plain_rx.close()
    res = await asyncio.to_thread(run_cli, "media", "verify", str(cap.path), "--keylog", str(keylog),
                                  "--sccp-port", str(port))
    assert res.returncode == 1, res.stdout + res.stderr  # one packet was tampered with
    assert "20 SRTP packets; 19 authenticate and decrypt under the AES_CM_128_HMAC_SHA1_80 key" in res.stdout
    assert "5 packets, no key was signalled for it: plain RTP" in res.stdout
    assert "1 of 2 streams SRTP under signalled keys; 1 with refused packets" in res.stdout
    # without the key log the SCCP cannot be read, so no stream has a key
    res = await asyncio.to_thread(run_cli, "media", "verify", str(cap.path), "--sccp-port", str(port))
    assert "0 of 2 streams SRTP" in res.stdout
