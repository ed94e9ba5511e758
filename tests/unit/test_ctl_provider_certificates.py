"""The CTL Provider's certificate gathering (CHK-1, CERT-5): a service that does not answer falls
back to its certificate file; whatever goes wrong ends in CertificateUnavailable naming the role and
the path — the TLS listener answers it as an UNAVAILABLE refusal, gRPC as UNAVAILABLE — never a bare
OSError (the listener closed the connection without a word, gRPC answered UNKNOWN)."""

from __future__ import annotations

import grpc
import pytest

from ccmsec.formats.ctl import Role
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec_ctl_provider.certificates import SOURCES, CertificateUnavailable, gather
from ccmsec_proto import common_pb2


class _Channel:
    """A channel whose every call fails as a service that is down, or answers `der`."""

    def __init__(self, der: bytes | None = None):
        self.der = der

    def unary_unary(self, method, request_serializer=None, response_deserializer=None):
        async def call(request, timeout=None):
            if self.der is None:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                           grpc.aio.Metadata(), "connection refused")
            return common_pb2.Certificate(der=self.der)
        return call


TFTP = tuple(s for s in SOURCES if s.role is Role.TFTP)


async def test_an_unreadable_fallback_file_is_certificate_unavailable_naming_it(tmp_path):
    (tmp_path / "servers" / "tftp-signer" / "ccmserver.cer").mkdir(parents=True)  # not a file
    with pytest.raises(CertificateUnavailable, match=r"TFTP certificate .* cannot be read") as info:
        await gather(tmp_path, lambda _role: _Channel(), lambda _role: "127.0.0.1", TFTP)
    assert "servers/tftp-signer/ccmserver.cer" in str(info.value)


async def test_a_service_answering_garbage_falls_back_to_its_certificate_file(tmp_path):
    issued = ensure_server_certificate(tmp_path / "servers" / "tftp-signer", "tftp-signer")
    entries, origins = await gather(tmp_path, lambda _role: _Channel(b"not a certificate"),
                                    lambda _role: "127.0.0.1", TFTP)
    from cryptography.hazmat.primitives import serialization
    assert entries[0].der == issued.cert.public_bytes(serialization.Encoding.DER)
    assert origins == {"TFTP": "file"}
