"""Entry point of the srst service: the SRST reference of the cluster (SRST-1, SRST-2, CERT-6).

* The router's own certificate: self-signed, created once in `DATA/srst/<node>/` and never
  re-issued (phones pin it through their configuration files, CERT-6).
* The credentials service on TLS `CCMSEC_SRST_CERT_PORT` (2445): hands that certificate to call
  control when an administrator configures security on the SRST reference (SRST-2).
* Fallback call processing on SCCP 2000 and SCCP/TLS 2443 (`fallback.py`): see the README.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from pydantic import Field, field_validator

from ccmsec.aio.srstcreds import CredentialsServer
from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec.runtime.settings import ServiceSettings
from ccmsec.runtime import bus as bus_mod
from ccmsec_proto import callmanager_pb2, callmanager_pb2_grpc, common_pb2, srst_pb2, srst_pb2_grpc

from ccmsec_srst.fallback import FallbackCallControl, SrstDirectory


class SrstSettings(ServiceSettings):
    srst_directory_refresh: float = Field(30.0, ge=1, le=3600)  # seconds between directory refreshes
    # Addresses (CIDR) allowed to fetch the credentials; empty = any (the certificate is public:
    # every dependent phone receives it in its configuration file).
    srst_credentials_allow: tuple[str, ...] = ()

    @field_validator("srst_credentials_allow")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Checked here, so a bad entry is a clear settings error, not a traceback at start."""
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or a CIDR network") from None
        return value


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def directory_host(host: str, node: str) -> str:
    """The host SRST references name this router by, for the directory (SRST-1): the address it
    listens on — or, listening on every address (a container: CCMSEC_HOST=0.0.0.0), its node name,
    which is the name compose's network resolves to it (`srst`). Asked with the wildcard, call
    control found no reference, so a pool whose reference names `srst` had no phone on SRST."""
    return node if host in WILDCARD_HOSTS else host


def router_certificate(data_dir: Path, node: str, host: str, key_dir: Path | None = None) -> Issued:
    """The SRST router's self-signed certificate (created on first start, then always the same)."""
    return ensure_server_certificate(Path(data_dir) / "srst" / node, node, ip=host, key_dir=key_dir)


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
        reply = srst_pb2.SrstStatusReply(status=self.service.status_message())
        if fallback is None:
            return reply
        for name in sorted(fallback.registrations):
            reg = fallback.registrations[name]
            reply.registrations.append(srst_pb2.SrstRegistration(
                device=name, mode=reg.mode.to_proto(), transport_port=reg.transport_port,
                cipher=reg.cipher, certificate_kind=reg.certificate_kind, since_unix=int(reg.since)))
            reply.registered.append(name)
        reply.active = bool(reply.registered)
        reply.known_phones = len(fallback.directory.phones)
        reply.directory_unix_ms = fallback.directory.current.generated_unix_ms
        reply.active_calls = len(fallback.agent.calls)
        reply.calls_total = fallback.agent.calls_total
        return reply


class SrstService(Service):
    role = "srst"
    settings_class = SrstSettings

    def __init__(self, settings: SrstSettings) -> None:
        super().__init__(settings)
        self.certificate: Issued | None = None
        self.credentials: CredentialsServer | None = None
        self.fallback: FallbackCallControl | None = None
        self._changed = asyncio.Event()

    async def setup(self) -> None:
        s = self.settings
        self.certificate = await asyncio.to_thread(router_certificate, s.data_dir, self.node, s.host,
                                                    s.key_dir)
        self.credentials = CredentialsServer(self.certificate, allow=tuple(s.srst_credentials_allow))
        await self.credentials.start(s.host, s.srst_cert_port)
        self.grpc.add(srst_pb2_grpc.add_SrstServicer_to_server, SrstServicer(self), "ccmsec.v1.Srst")
        self.log.info("SRST credentials service listening", extra={
            "port": self.credentials.port, "sha256": fingerprint_sha256(self.certificate.cert)})
        directory = SrstDirectory(Path(s.data_dir) / "srst" / self.node, self._fetch_directory)
        if directory.load_file():
            self.log.info("SRST directory from the last copy", extra={"phones": len(directory.phones)})
        self.fallback = FallbackCallControl(self.node, s.host, s.sccp_port, s.sccp_tls_port,
                                            self.certificate, directory,
                                            keepalive_interval=s.sccp_keepalive)
        await self.fallback.start()
        self.spawn(self._keep_directory())
        await self.subscribe(bus_mod.subject_for("config.changed"), "srst-config",
                             self._on_config_changed, deliver_new=True)

    async def teardown(self) -> None:
        if self.fallback is not None:
            await self.fallback.close()
        if self.credentials is not None:
            await self.credentials.close()

    # --- the directory of phones this reference serves (SRST-1) ------------------------------
    async def _fetch_directory(self) -> callmanager_pb2.SrstDirectory:
        stub = callmanager_pb2_grpc.CallManagerStub(self.peer_channel("callmanager"))
        return await stub.GetSrstDirectory(callmanager_pb2.SrstDirectoryRequest(
            host=directory_host(self.settings.host, self.node), include_default=True), timeout=5)

    async def _keep_directory(self) -> None:
        """Refresh at once, then every `srst_directory_refresh` s (sooner while it keeps failing
        and there is no copy at all)."""
        directory = self.fallback.directory
        while True:
            ok = await directory.refresh()
            if not ok:
                self.log.info("SRST directory not refreshed", extra={"error": directory.last_error})
            wait = self.settings.srst_directory_refresh
            if not ok and not directory.phones:
                wait = min(wait, 2.0)
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
                await asyncio.sleep(0.2)  # one refresh for a burst of changes
            except asyncio.TimeoutError:
                pass
            self._changed.clear()

    async def _on_config_changed(self, event) -> None:
        self._changed.set()   # the keeper refreshes (coalesced), the event is not held up

    def status_details(self) -> dict[str, str]:
        details = {"credentials_port": str(self.credentials.port if self.credentials else 0)}
        if self.certificate is not None:
            details["certificate_sha256"] = fingerprint_sha256(self.certificate.cert)
        if self.credentials is not None:
            details["credentials_served"] = str(self.credentials.answered)
        if self.fallback is not None:
            fb = self.fallback
            details.update({"sccp_port": str(fb.plain.port if fb.plain else 0),
                            "sccp_tls_port": str(fb.tls.port if fb.tls else 0),
                            "registered": str(len(fb.registrations)),
                            "known_phones": str(len(fb.directory.phones)),
                            "directory_error": fb.directory.last_error})
        return details


def main() -> None:
    run_service(SrstService)


if __name__ == "__main__":
    main()
