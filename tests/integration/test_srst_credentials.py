"""The SRST credentials service on TLS (SRST-2, CERT-6): a real TLS server on loopback and the
client call control uses, with its bad cases (unreachable, changed certificate, a refused
address, a server whose answer is not the certificate it presented, garbage)."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from ccmsec.aio.srstcreds import (
    CredentialsServer,
    SrstCertificateChanged,
    SrstCredentialsError,
    SrstUnreachable,
    fetch_srst_certificate,
)
from ccmsec.pki.ca import fingerprint_sha256
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.wire import srstcreds as w
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def router(tmp_path):
    return ensure_server_certificate(tmp_path / "srst", "srst-router", ip="127.0.0.1")


async def test_fetch_returns_the_routers_self_signed_certificate_SRST_2(router):
    server = CredentialsServer(router)
    await server.start("127.0.0.1", 0)
    try:
        got = await fetch_srst_certificate("127.0.0.1", server.port)
        assert got.certificate == router.cert and got.fingerprint == fingerprint_sha256(router.cert)
        # The stored fingerprint matches: the same certificate again.
        again = await fetch_srst_certificate("127.0.0.1", server.port, expected=got.fingerprint)
        assert again.der == got.der
        assert server.answered == 2
    finally:
        await server.close()


async def test_a_changed_certificate_is_refused_CERT_6(router, tmp_path):
    other = ensure_server_certificate(tmp_path / "other", "srst-router", ip="127.0.0.1")
    server = CredentialsServer(other)
    await server.start("127.0.0.1", 0)
    try:
        with pytest.raises(SrstCertificateChanged) as caught:
            await fetch_srst_certificate("127.0.0.1", server.port, expected=fingerprint_sha256(router.cert))
        assert caught.value.fingerprint == fingerprint_sha256(other.cert)
        assert "confirm" in str(caught.value)
    finally:
        await server.close()


async def test_unreachable_router_is_a_clear_error():
    with pytest.raises(SrstUnreachable, match="unreachable"):
        await fetch_srst_certificate("127.0.0.1", free_port(), timeout=3)


async def test_an_address_not_allowed_is_refused(router):
    server = CredentialsServer(router, allow=("10.99.0.0/16",))
    await server.start("127.0.0.1", 0)
    try:
        with pytest.raises(SrstCredentialsError, match="may not ask"):
            await fetch_srst_certificate("127.0.0.1", server.port)
        assert server.refused == 1
    finally:
        await server.close()


async def _serve_once(identity, answer: bytes) -> tuple[asyncio.base_events.Server, int]:
    """A TLS server that presents `identity` and answers `answer` whatever is asked."""
    from ccmsec.aio.srstcreds import _server_context

    async def handle(reader, writer):
        await reader.read(4096)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_server_context(identity))
    return server, server.sockets[0].getsockname()[1]


async def test_an_answer_other_than_the_presented_certificate_is_refused(router, tmp_path):
    other = ensure_server_certificate(tmp_path / "other", "intruder", ip="127.0.0.1")
    from cryptography.hazmat.primitives import serialization
    server, port = await _serve_once(router, w.encode(w.Certificate(
        other.cert.public_bytes(serialization.Encoding.DER))))
    try:
        with pytest.raises(SrstCredentialsError, match="other than the one its TLS server presented"):
            await fetch_srst_certificate("127.0.0.1", port)
    finally:
        server.close()


async def test_garbage_from_the_router_is_a_clear_error(router):
    server, port = await _serve_once(router, b"HTTP/1.0 200 OK\r\n\r\n")
    try:
        with pytest.raises(SrstCredentialsError, match="garbage"):
            await fetch_srst_certificate("127.0.0.1", port)
    finally:
        server.close()


async def test_a_silent_or_plain_client_does_not_hold_the_server(router):
    server = CredentialsServer(router, read_timeout=0.5)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # no TLS at all
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)  # the server drops it (handshake fails)
        writer.close()
        got = await fetch_srst_certificate("127.0.0.1", server.port)  # still serving
        assert got.certificate == router.cert
    finally:
        await server.close()


async def test_a_client_dribbling_its_request_is_dropped_within_the_read_timeout(router):
    """The read timeout bounds the whole request, not each read: a peer sending one byte at a
    time must not keep one of the server's few connection slots."""
    server = CredentialsServer(router, read_timeout=0.5, max_connections=1)
    await server.start("127.0.0.1", 0)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        request = w.CredentialsClientSession("slow").request()
        loop = asyncio.get_running_loop()
        started, dropped_after = loop.time(), None
        for i in range(len(request) - 1):          # never the last byte, 0.15 s apart
            try:
                writer.write(request[i:i + 1])
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), 0.15) == b"":
                    dropped_after = loop.time() - started
                    break
            except asyncio.TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                dropped_after = loop.time() - started
                break
        writer.close()
        assert dropped_after is not None and dropped_after < 1.5, \
            "the server kept a connection that sent a byte every 0.15 s for ever"
        assert server._open == 0
        got = await fetch_srst_certificate("127.0.0.1", server.port)  # the slot is free again
        assert got.certificate == router.cert
    finally:
        await server.close()
