"""Outside check of the CTL Provider's TLS port: `openssl s_client` with the administrator's
cluster-CA certificate gets the server certificates; without a client certificate it gets nothing."""

from __future__ import annotations

import asyncio
import random
import shutil

import pytest

from ccmsec.runtime.identity import client_identity
from ccmsec.wire.ctlprovider import Certificates, FrameReader, GetCertificates, encode
from ccmsec_proto import ctl_provider_pb2
from tests.conftest import free_port
from tests.integration.test_ctl_provider_service import _prepare, _start

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl binary not installed"),
]


async def _s_client(host: str, port: int, *extra: str) -> tuple[list, bytes]:
    """Send one request through s_client and read until one whole answer (or s_client exits)."""
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "ctl-provider",
        "-verify_return_error", "-quiet", *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    proc.stdin.write(encode(GetCertificates("openssl")))
    await proc.stdin.drain()
    reader, messages = FrameReader(), []
    try:
        while not messages:
            chunk = await asyncio.wait_for(proc.stdout.read(65536), 10)
            if not chunk:
                break
            messages = reader.feed(chunk)
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    return messages, err


async def test_openssl_s_client_gets_the_certificates_only_with_a_cluster_client_certificate(
        tmp_path, nats_server):
    host = f"127.{random.randint(20, 250)}.{random.randint(0, 255)}.{random.randint(2, 250)}"
    await _prepare(tmp_path)
    svc, task, channel, stub = await _start(tmp_path, nats_server, host, free_port(host), free_port(host))
    try:
        await stub.Activate(ctl_provider_pb2.ActivateRequest(active=True))
        ident = client_identity(tmp_path)
        messages, err = await _s_client(host, svc.listening_port, "-CAfile", str(ident.ca_path),
                                        "-cert", str(ident.cert_path), "-key", str(ident.key_path))
        assert len(messages) == 1 and isinstance(messages[0], Certificates), err.decode()
        assert len(messages[0].entries) == 3
        messages, err = await _s_client(host, svc.listening_port, "-CAfile", str(ident.ca_path))
        assert messages == []  # no client certificate: the handshake fails, no answer
        # the server dropped the connection: reset, EOF or alert, depending on timing
        assert any(w in err.lower() for w in (b"error", b"errno", b"alert")), err.decode()
    finally:
        await channel.close()
        svc.request_stop()
        await asyncio.wait_for(task, 10)
