"""The capf service: the CAPF port (TLS 3804) that installs, upgrades, deletes and fetches LSCs,
and the gRPC `Capf` API that activates it (CHK-2), schedules operations and sets its parameters.

On start: the CAPF certificate `DATA/pki/capf.{crt,key}` (created once), the parameters and the
activation flag from the publisher database, then the CAPF port: served by
`acceptor_processes` acceptor processes (`ccmsec_capf.acceptors`: TLS, sessions and LSC signing
on every core, every look-up and write answered here), or by this process itself when that
parameter is 0. Either way the SQL operations store of this process is the only writer of CAPF
state (CHK-7). While not activated, every phone session is refused at once with REASON_INFO
"CAPF service is not activated on the publisher (CHK-2)…". On `ctl.updated` the CAPF
certificate is copied to every server (CERT-3).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

from cryptography import x509
import grpc
from sqlalchemy import func, select

from ccmsec.aio.capf import CapfServer, SessionRecord, capf_server_ssl_context
from ccmsec.clustertls import follow_legacy_tls
from ccmsec.db.capf import STATES as OPERATION_STATES
from ccmsec.db.capf import CapfCertificate, CapfOperation, SqlCapfStore
from ccmsec.domain import CapfOperation as CapfOperationKind
from ccmsec.pki.ca import Issued, fingerprint_sha256
from ccmsec.pki.lsc import CAPF_CERT, LEGACY_THIRD_PARTY_CA, capf_key_path, capf_state_dir, ensure_capf_ca
from ccmsec.pki.tls import enable_legacy_tls
from ccmsec.wire.capf.frames import Reason
from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime import metrics
from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import capf_pb2_grpc, common_pb2, ctl_provider_pb2_grpc, events_pb2

from .acceptors import AcceptorPool
from .activation import NOT_ACTIVATED, read_activated
from .certcopy import copy_capf_certificate
from .issuer import MANUFACTURER_CA, ServiceLscIssuer
from .parameters import CapfParameters, load_parameters
from .devices import CallManagerDevices, DevicesUnavailable
from .domain import CapfDomain
from .servicer import CapfServicer

log = logging.getLogger("ccmsec.capf")
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0
CTL_ASK_TIMEOUT = 3.0  # CtlProvider/GetCurrentCtl (CERT-3 after a restart)


class CapfService(Service):
    role = "capf"

    def __init__(self, settings):
        self.acceptors: AcceptorPool | None = None    # when acceptor processes serve the port
        super().__init__(settings)
        self._activated = False  # CHK-2: off until the database says otherwise
        self.legacy_tls = "unknown"  # LATER-8: until the CTL Provider answered
        self.ctl = "unknown"  # CERT-3: "present" / "absent" as the CTL Provider answered
        self.capf_ca: Issued | None = None
        self.params: CapfParameters | None = None
        # devices are call control's (issue 9 §5): looked up over gRPC, never read from its table
        self.devices = CallManagerDevices(lambda: self.peer_channel("callmanager"))
        self.store: SqlCapfStore | None = None
        self.issuer: ServiceLscIssuer | None = None
        self.capf_server: CapfServer | None = None   # when the port is served in this process
        self.sessions: collections.deque[SessionRecord] = collections.deque(maxlen=1000)
        self.sessions_total = 0
        self._lsc_expiry: dict[int, float] = {}   # capf_certificates.id -> notAfter (parsed once)

    @property
    def pki_dir(self) -> Path:
        return Path(self.settings.data_dir) / "pki"

    @property
    def state_dir(self) -> Path:
        """DATA/capf: CAPF's own files (the third-party CA); no other role writes or reads them."""
        return capf_state_dir(self.settings.data_dir)

    @property
    def manufacturer_ca_path(self) -> Path:
        return self.settings.manufacturer_folder / MANUFACTURER_CA

    @property
    def activated(self) -> bool:
        return self._activated

    @activated.setter
    def activated(self, value: bool) -> None:
        self._activated = bool(value)
        if self.acceptors is not None:
            self.acceptors.configure(refusal=self._admit())

    @property
    def capf_port(self) -> int:
        if self.acceptors is not None:
            return self.acceptors.port
        return self.capf_server.port if self.capf_server is not None else self.settings.capf_port

    async def setup(self) -> None:
        hosts = tuple(dict.fromkeys((self.settings.host, "127.0.0.1")))
        self.capf_ca = await asyncio.to_thread(ensure_capf_ca, self.pki_dir, ip_addresses=hosts,
                                                  key_dir=self.settings.key_dir)
        legacy = Path(self.settings.data_dir).joinpath(*LEGACY_THIRD_PARTY_CA)
        if legacy.exists():  # never trusted: any role could write that folder (issue 9 §1)
            log.warning("%s is ignored: the third-party CA is kept in CAPF's own folder now; "
                        "set it again with `ccmsec capf set-ca FILE`", legacy)
        self.params = await load_parameters(self.db)
        self._activated = await read_activated(self.db)
        p = self.params
        self.store = SqlCapfStore(self.db, max_failures=p.int("max_auth_failures"),
                                  device_exists=self.device_exists)
        limits = dict(handshake_timeout=HANDSHAKE_TIMEOUT, idle_timeout=IDLE_TIMEOUT,
                      session_timeout=float(p.int("session_timeout")), max_connections=p.int("max_connections"),
                      max_per_source=p.int("max_connections_per_source"))
        if p.int("acceptor_processes"):
            self.acceptors = AcceptorPool(
                p.int("acceptor_processes"), host=self.settings.host, port=self.settings.capf_port,
                pki_dir=self.pki_dir, store=self.store, node=self.settings.node_name, limits=limits,
                config=self._acceptor_config(), on_sessions=self._sessions_ended,
                log_level=self.settings.log_level, key_dir=self.settings.key_dir,
                capf_dir=self.state_dir, manufacturer_ca=self.manufacturer_ca_path)
            await self.acceptors.start()
        else:
            self.issuer = ServiceLscIssuer(self.capf_ca, self.manufacturer_ca_path, self.state_dir,
                                           days=p.int("certificate_validity_days"))
            ssl_ctx = capf_server_ssl_context(self.pki_dir / CAPF_CERT,
                                              capf_key_path(self.pki_dir, self.settings.key_dir))
            self.capf_server = CapfServer(self.settings.host, self.settings.capf_port, ssl_ctx, self.store,
                                          self.issuer, admit=self._admit, issuer_mode=self.issuer_mode,
                                          retry_delay=p.int("retry_delay"),
                                          on_session_end=lambda rec: self._sessions_ended([rec]), **limits)
            await self.capf_server.start()
        await self._follow_legacy_tls()  # LATER-8, from the CTL Provider
        for outcome in ("ok", "no_action", "invalid_element", "unknown_device", "error", "aborted", "other"):
            metrics.CAPF_SESSIONS.labels(outcome)  # every outcome exported from the start, at 0
        self.domain = CapfDomain(self)  # the one write path of every door (issue 9 §5)
        self.grpc.add(capf_pb2_grpc.add_CapfServicer_to_server, CapfServicer(self), "ccmsec.v1.Capf")
        await self.subscribe(bus_mod.subject_for("ctl.updated"), "ctl-updated", self.on_ctl_updated)
        # CERT-3 also after a restart: the CTL may have been built while CAPF was down. Asked in the
        # background: the start does not wait on the CTL Provider.
        self.spawn(self._copy_when_ctl_known())
        log.info("CAPF listening", extra={"port": self.capf_port, "activated": self.activated,
                                          "acceptor_processes": p.int("acceptor_processes")})

    async def teardown(self) -> None:
        if self.acceptors is not None:
            await self.acceptors.close()
        if self.capf_server is not None:
            await self.capf_server.close()

    def _acceptor_config(self) -> dict:
        p = self.params
        return {"refusal": self._admit(), "issuer_mode": self.issuer_mode(), "retry_delay": p.int("retry_delay"),
                "validity_days": p.int("certificate_validity_days"), "legacy_tls": self.legacy_tls == "on"}

    def _sessions_ended(self, records: list[SessionRecord]) -> None:
        self.sessions.extend(records)
        self.sessions_total += len(records)
        for record in records:
            metrics.CAPF_SESSIONS.labels(session_outcome(record)).inc()

    async def sample_metrics(self) -> None:
        """Operations by state, certificate records by outcome, the CAPF certificate's and the
        installed LSCs' expiry (the database; each LSC is parsed once)."""
        await super().sample_metrics()
        if self.capf_ca is not None:
            metrics.set_certificate_expiry("capf", self.node, self.capf_ca.cert.not_valid_after_utc)
        async with self.db() as session:
            ops = (await session.execute(
                select(CapfOperation.operation, CapfOperation.state, func.count())
                .group_by(CapfOperation.operation, CapfOperation.state))).all()
            records = (await session.execute(
                select(CapfCertificate.operation, CapfCertificate.outcome, func.count())
                .group_by(CapfCertificate.operation, CapfCertificate.outcome))).all()
            installed = (await session.execute(
                select(CapfCertificate.id, CapfCertificate.device_name, CapfCertificate.der)
                .where(CapfCertificate.outcome == "installed", CapfCertificate.der.is_not(None))
                .order_by(CapfCertificate.id))).all()
        counts = {(op.value, state): 0 for op in CapfOperationKind for state in OPERATION_STATES}
        counts.update({(operation, state): count for operation, state, count in ops})
        for (operation, state), count in counts.items():
            metrics.CAPF_OPERATIONS.labels(operation, state).set(count)
        metrics.CAPF_CERTIFICATES.clear()
        for operation, outcome, count in records:
            metrics.CAPF_CERTIFICATES.labels(operation, outcome).set(count)
        current: dict[str, int] = {}  # device -> its newest installed LSC
        for row_id, device, _der in installed:
            current[device] = row_id
        ders = {row_id: der for row_id, _device, der in installed}
        now = time.time()
        expiries = []
        for row_id in current.values():
            if row_id not in self._lsc_expiry:
                try:
                    cert = x509.load_der_x509_certificate(ders[row_id])
                    self._lsc_expiry[row_id] = cert.not_valid_after_utc.timestamp()
                except ValueError:
                    self._lsc_expiry[row_id] = 0.0
            if self._lsc_expiry[row_id] > now:
                expiries.append(self._lsc_expiry[row_id])
        if expiries:
            metrics.CERT_EXPIRY.labels("lsc", "earliest").set(min(expiries))
        for days in (7, 30):
            metrics.LSC_EXPIRING.labels(f"{days}d").set(sum(1 for t in expiries if t - now < days * 86400))

    async def _follow_legacy_tls(self) -> None:
        """LATER-8: with the cluster's legacy TLS on, 3804 also takes TLS 1.0 (AES128-SHA,
        NULL-SHA). The listening contexts change in place — here, or in every acceptor process —
        and new handshakes follow them."""
        def apply(enabled: bool) -> None:
            self.legacy_tls = "on" if enabled else "off"
            if not enabled:
                return
            if self.acceptors is not None:
                self.acceptors.configure(legacy_tls=True)
            if self.capf_server is not None:
                enable_legacy_tls(self.capf_server.ssl_context)

        await follow_legacy_tls(self.spawn, lambda: self.peer_channel("ctl-provider"), apply,
                                who="CAPF 3804")

    async def _ctl_present(self) -> bool | None:
        """CERT-3: whether a CTL exists is the CTL Provider's state (issue 9 §5), asked over gRPC
        (`CtlProvider/GetCurrentCtl`); CAPF copies its certificate when one does. None: the CTL
        Provider did not answer (yet)."""
        try:
            stub = ctl_provider_pb2_grpc.CtlProviderStub(self.peer_channel("ctl-provider"))
            reply = await stub.GetCurrentCtl(common_pb2.Empty(), timeout=CTL_ASK_TIMEOUT)
        except SettingsError as exc:  # no CTL Provider in the configuration: nobody builds a CTL
            log.warning("CERT-3: %s; the CAPF certificate is copied on the next ctl.updated", exc)
            self.ctl = "no CTL Provider configured"
            return False
        except grpc.aio.AioRpcError as exc:
            log.info("CERT-3: the CTL Provider did not answer (%s); asking again", exc.code().name)
            return None
        if reply.present:
            await asyncio.to_thread(copy_capf_certificate, self.settings.data_dir, self.capf_ca.cert)
        self.ctl = "present" if reply.present else "absent"
        return reply.present

    async def _copy_when_ctl_known(self) -> None:
        """Until the CTL Provider answered once, with back-off (`ctl.updated` covers every CTL
        built from then on)."""
        delay = 0.5
        while await self._ctl_present() is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def issuer_mode(self) -> str:
        """Enterprise parameter `issuer`: capf (CAPF signs) or offline (third-party CA)."""
        return self.params.get("issuer") if self.params is not None else "capf"

    def _admit(self) -> str | None:
        return None if self._activated else NOT_ACTIVATED

    async def device_exists(self, device: str) -> bool:
        """For a phone's CAPF session with no operation: whether call control knows the device
        (the session ends "unknown device" if not). When call control does not answer, the device
        is taken as known — the phone is refused all the same (no operation to run), as "no
        operation scheduled" rather than wrongly "unknown device"; nothing is written either way."""
        try:
            return await self.devices.exists(device)
        except DevicesUnavailable as exc:
            log.warning("CAPF session of %s: %s", device[:64], exc)
            return True

    def apply_enterprise(self, fresh: CapfParameters) -> None:
        """Enterprise values take effect at once (new LSCs, new schedules); service values stay
        as they were read on start until the RST-8 restart."""
        self.params = CapfParameters({**self.params.values, **fresh.scope("enterprise")})
        if self.issuer is not None:
            self.issuer.days = self.params.int("certificate_validity_days")
        if self.acceptors is not None:
            self.acceptors.configure(**self._acceptor_config())

    async def on_ctl_updated(self, event: events_pb2.Event) -> None:
        written = await asyncio.to_thread(copy_capf_certificate, self.settings.data_dir, self.capf_ca.cert)
        self.ctl = "present"
        log.info("CERT-3: CAPF certificate copied to the servers", extra={
            "event_id": event.id, "files": ",".join(str(p) for p in written)})

    def status_details(self) -> dict[str, str]:
        details = {"capf_port": str(self.capf_port), "capf_sessions": str(self.sessions_total),
                   "legacy_tls": self.legacy_tls, "ctl": self.ctl}
        if self.capf_ca is not None:
            details["capf_certificate_sha256"] = fingerprint_sha256(self.capf_ca.cert)
        if self.acceptors is not None:
            details["capf_acceptor_processes"] = str(len(self.acceptors.pids))
        if self.store is not None:  # group commit at work: look-ups and writes per database round
            details["capf_store_rounds"] = str(self.store.rounds)
            details["capf_store_round_items"] = str(self.store.round_items)
        return details


def session_outcome(record: SessionRecord) -> str:
    """A bounded label for how a CAPF session ended: the end reason CAPF sent (ok, invalid_element
    for a refusal, ...), else error (broken off with an error: TLS, timeout, bad frame) or aborted."""
    if record.end_reason is not None:
        try:
            return Reason(record.end_reason).name.lower()
        except ValueError:
            return "other"
    return "error" if record.error else "aborted"


def main() -> None:
    run_service(CapfService)


if __name__ == "__main__":
    main()
