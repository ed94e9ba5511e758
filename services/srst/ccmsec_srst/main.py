"""Entry point of the srst service: the SRST reference of the cluster (SRST-1, SRST-2, CERT-6).

* The router's own certificate: self-signed, created once in `DATA/srst/<node>/` and never
  re-issued (phones pin it through their configuration files, CERT-6).
* The credentials service on TLS `CCMSEC_SRST_CERT_PORT` (2445): hands that certificate to call
  control when an administrator configures security on the SRST reference (SRST-2).
* Fallback call processing on SCCP 2000 and SCCP/TLS 2443 (`fallback.py`): see the README.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import Field

from ccmsec.aio.srstcreds import CredentialsServer
from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec.runtime.settings import ServiceSettings
from ccmsec_proto import common_pb2, srst_pb2, srst_pb2_grpc


class SrstSettings(ServiceSettings):
    # Addresses (CIDR) allowed to fetch the credentials; empty = any (the certificate is public:
    # every dependent phone receives it in its configuration file).
    srst_credentials_allow: tuple[str, ...] = ()
    sccp_keepalive: int = Field(30, ge=1, le=600)   # seconds, sent to phones in RegisterAck


def router_certificate(data_dir: Path, node: str, host: str) -> Issued:
    """The SRST router's self-signed certificate (created on first start, then always the same)."""
    return ensure_server_certificate(Path(data_dir) / "srst" / node, node, ip=host)


def certificate_message(issued: Issued) -> common_pb2.Certificate:
    from cryptography.hazmat.primitives import serialization

    cert = issued.cert
    return common_pb2.Certificate(
        der=cert.public_bytes(serialization.Encoding.DER), serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        role=common_pb2.ROLE_SRST, not_before_unix=int(cert.not_valid_before_utc.timestamp()),
        not_after_unix=int(cert.not_valid_after_utc.timestamp()),
        fingerprint_sha256=fingerprint_sha256(cert))


class SrstServicer(StatusServicerMixin, srst_pb2_grpc.SrstServicer):
    service: "SrstService"

    async def GetCertificate(self, request, context):  # noqa: N802
        return certificate_message(self.service.certificate)

    async def GetSrstStatus(self, request, context):  # noqa: N802
        fallback = self.service.fallback
        registered = sorted(fallback.registered()) if fallback is not None else []
        return srst_pb2.SrstStatusReply(status=self.service.status_message(), active=bool(registered),
                                        registered=registered)


class SrstService(Service):
    role = "srst"
    settings_class = SrstSettings

    def __init__(self, settings: SrstSettings) -> None:
        super().__init__(settings)
        self.certificate: Issued | None = None
        self.credentials: CredentialsServer | None = None
        self.fallback = None

    async def setup(self) -> None:
        s = self.settings
        self.certificate = await asyncio.to_thread(router_certificate, s.data_dir, self.node, s.host)
        self.credentials = CredentialsServer(self.certificate, allow=tuple(s.srst_credentials_allow))
        await self.credentials.start(s.host, s.srst_cert_port)
        self.grpc.add(srst_pb2_grpc.add_SrstServicer_to_server, SrstServicer(self), "ccmsec.v1.Srst")
        self.log.info("SRST credentials service listening", extra={
            "port": self.credentials.port, "sha256": fingerprint_sha256(self.certificate.cert)})

    async def teardown(self) -> None:
        if self.credentials is not None:
            await self.credentials.close()

    def status_details(self) -> dict[str, str]:
        details = {"credentials_port": str(self.credentials.port if self.credentials else 0)}
        if self.certificate is not None:
            details["certificate_sha256"] = fingerprint_sha256(self.certificate.cert)
        if self.credentials is not None:
            details["credentials_served"] = str(self.credentials.answered)
        return details


def main() -> None:
    run_service(SrstService)


if __name__ == "__main__":
    main()
