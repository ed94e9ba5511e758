"""The capf service: the CAPF port (TLS 3804) that installs, upgrades, deletes and fetches LSCs,
and the gRPC `Capf` API that activates it (CHK-2), schedules operations and sets its parameters.

On start: the CAPF certificate `DATA/pki/capf.{crt,key}` (created once), the parameters and the
activation flag from the publisher database, then the CAPF TLS server over the SQL operations
store (CHK-7) and the LSC issuer. While not activated, every phone session is refused at once
with REASON_INFO "CAPF service is not activated on the publisher (CHK-2)". On `ctl.updated`
the CAPF certificate is copied to every server (CERT-3).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cryptography import x509

from ccmsec.aio.capf import CapfServer, capf_server_ssl_context
from ccmsec.clustertls import follow_legacy_tls
from ccmsec.db.capf import SqlCapfStore
from ccmsec.db.devices import ctl_exists
from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.lsc import (
    CAPF_CERT, CAPF_KEY, LscIssuer, ensure_capf_ca, issuing_pool, load_third_party_ca, third_party_ca_path,
)
from ccmsec.pki.tls import enable_legacy_tls
from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime.service import Service, run_service
from ccmsec.wire.capf import CertType
from ccmsec_proto import capf_pb2_grpc, events_pb2

from .activation import NOT_ACTIVATED, read_activated
from .certcopy import copy_capf_certificate
from .parameters import CapfParameters, load_parameters
from .scheduling import device_exists
from .servicer import CapfServicer

log = logging.getLogger("ccmsec.capf")
MANUFACTURER_CA = "manufacturer-ca.crt"


class ServiceLscIssuer(LscIssuer):
    """LscIssuer whose manufacturer CA (for MIC authentication) is read from DATA/pki when it
    appears or changes: the factory CA may be created after CAPF started."""

    def __init__(self, capf_ca: Issued, manufacturer_ca_path: Path, **kw):
        super().__init__(capf_ca, (), **kw)
        self._mfr_path = manufacturer_ca_path
        self._mfr_stamp: tuple[int, int] | None = None
        self._third_path = third_party_ca_path(manufacturer_ca_path.parent)
        self._third_stamp: tuple[int, int] | None = None

    def _refresh_third_party(self) -> None:
        # Offline CA: an LSC signed by the imported third-party CA authenticates like a CAPF one.
        try:
            st = self._third_path.stat()
        except FileNotFoundError:
            self.third_party_roots, self._third_stamp = [], None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._third_stamp:
            ca = load_third_party_ca(self._third_path.parent)
            self.third_party_roots = [ca] if ca is not None else []
            self._third_stamp = stamp

    def _refresh_manufacturer(self) -> None:
        try:
            st = self._mfr_path.stat()
        except FileNotFoundError:
            self.manufacturer_roots, self._mfr_stamp = [], None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._mfr_stamp:
            self.manufacturer_roots = x509.load_pem_x509_certificates(self._mfr_path.read_bytes())
            self._mfr_stamp = stamp

    def verify_device_certificate(self, device_name: str, cert_type: CertType, cert: x509.Certificate) -> None:
        if cert_type is CertType.MIC:
            self._refresh_manufacturer()
        else:
            self._refresh_third_party()
        super().verify_device_certificate(device_name, cert_type, cert)


class CapfService(Service):
    role = "capf"

    def __init__(self, settings):
        super().__init__(settings)
        self.activated = False  # CHK-2: off until the database says otherwise
        self.legacy_tls = "unknown"  # LATER-8: until the CTL Provider answered
        self.capf_ca: Issued | None = None
        self.params: CapfParameters | None = None
        self.store: SqlCapfStore | None = None
        self.issuer: ServiceLscIssuer | None = None
        self.capf_server: CapfServer | None = None

    @property
    def pki_dir(self) -> Path:
        return Path(self.settings.data_dir) / "pki"

    async def setup(self) -> None:
        hosts = tuple(dict.fromkeys((self.settings.host, "127.0.0.1")))
        self.capf_ca = await asyncio.to_thread(ensure_capf_ca, self.pki_dir, ip_addresses=hosts)
        self.params = await load_parameters(self.db)
        self.activated = await read_activated(self.db)
        p = self.params
        executor = None
        if p.int("issuing_workers"):  # sign in worker processes, each holding the CAPF key
            executor = issuing_pool(self.capf_ca, p.int("issuing_workers"), p.int("certificate_validity_days"))
        self.issuer = ServiceLscIssuer(self.capf_ca, self.pki_dir / MANUFACTURER_CA,
                                       days=p.int("certificate_validity_days"), executor=executor)
        self.store = SqlCapfStore(self.db, max_failures=p.int("max_auth_failures"),
                                  device_exists=self.device_exists)
        ssl_ctx = capf_server_ssl_context(self.pki_dir / CAPF_CERT, self.pki_dir / CAPF_KEY)
        self.capf_server = CapfServer(self.settings.host, self.settings.capf_port, ssl_ctx, self.store, self.issuer,
                                      session_timeout=p.int("session_timeout"),
                                      max_connections=p.int("max_connections"),
                                      max_per_source=p.int("max_connections_per_source"), admit=self._admit,
                                      issuer_mode=self.issuer_mode, retry_delay=p.int("retry_delay"))
        await self.capf_server.start()
        await self._follow_legacy_tls(ssl_ctx)  # LATER-8, from the CTL Provider
        self.grpc.add(capf_pb2_grpc.add_CapfServicer_to_server, CapfServicer(self), "ccmsec.v1.Capf")
        await self.subscribe(bus_mod.subject_for("ctl.updated"), "ctl-updated", self.on_ctl_updated)
        # CERT-3 also after a restart: the CTL may have been built while CAPF was down.
        async with self.db() as s:
            if await ctl_exists(s):
                await asyncio.to_thread(copy_capf_certificate, self.settings.data_dir, self.capf_ca.cert)
        log.info("CAPF listening", extra={"port": self.capf_server.port, "activated": self.activated})

    async def teardown(self) -> None:
        if self.capf_server is not None:
            await self.capf_server.close()
        if self.issuer is not None:
            await asyncio.to_thread(self.issuer.close)

    async def _follow_legacy_tls(self, ssl_ctx) -> None:
        """LATER-8: with the cluster's legacy TLS on, 3804 also takes TLS 1.0 (AES128-SHA,
        NULL-SHA). The listening context is changed in place: new handshakes follow it."""
        def apply(enabled: bool) -> None:
            if enabled:
                enable_legacy_tls(ssl_ctx)
            self.legacy_tls = "on" if enabled else "off"

        await follow_legacy_tls(self.spawn, lambda: self.peer_channel("ctl-provider"), apply,
                                who="CAPF 3804")

    def issuer_mode(self) -> str:
        """Enterprise parameter `issuer`: capf (CAPF signs) or offline (third-party CA)."""
        return self.params.get("issuer") if self.params is not None else "capf"

    def _admit(self) -> str | None:
        return None if self.activated else NOT_ACTIVATED

    async def device_exists(self, device: str) -> bool:
        return await device_exists(self.db, device)

    def apply_enterprise(self, fresh: CapfParameters) -> None:
        """Enterprise values take effect at once (new LSCs, new schedules); service values stay
        as they were read on start until the RST-8 restart."""
        self.params = CapfParameters({**self.params.values, **fresh.scope("enterprise")})
        if self.issuer is not None:
            self.issuer.days = self.params.int("certificate_validity_days")

    async def announce_schedule(self, device: str, operation: str) -> None:
        """The device's cnf.xml must now carry the CAPF operation: tell the TFTP signer."""
        try:
            await self.publish("config.changed", device, config_changed=events_pb2.ConfigChanged(
                devices=[device], what=f"capf {operation} scheduled"))
        except Exception:  # the schedule is committed; a bus outage must not undo it
            log.exception("CAPF operation scheduled but config.changed not published", extra={"device": device})

    async def on_ctl_updated(self, event: events_pb2.Event) -> None:
        written = await asyncio.to_thread(copy_capf_certificate, self.settings.data_dir, self.capf_ca.cert)
        log.info("CERT-3: CAPF certificate copied to the servers", extra={
            "event_id": event.id, "files": ",".join(str(p) for p in written)})

    def status_details(self) -> dict[str, str]:
        details = {"capf_port": str(self.capf_server.port if self.capf_server else self.settings.capf_port),
                   "legacy_tls": self.legacy_tls}
        if self.capf_ca is not None:
            details["capf_certificate_sha256"] = fingerprint_sha256(self.capf_ca.cert)
        if self.capf_server is not None:
            details["capf_sessions"] = str(len(self.capf_server.sessions))
        return details


def main() -> None:
    run_service(CapfService)


if __name__ == "__main__":
    main()
