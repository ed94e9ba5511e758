"""Entry point of the tftp-signer service: the cluster's TFTP server, which signs what it serves.

At start: the self-signed TFTP certificate (CERT-5, `DATA/servers/tftp-signer/ccmserver.cer`, never
re-issued; it is the TFTP entry of the CTL and signs every `.sgn`), the static files of the
cluster folder `DATA/tftp/<tftp_path>/`, the shared-TFTP layout (MODE-6) and the TFTP listener on
`host:tftp_port`. Device configurations are built and signed when they change (devicefiles.py):
`config.changed`, `mode.changed` and `ctl.updated` and a poll every POLL_SECONDS run the version
check and build and sign what changed; requests never depend on an event having arrived: each
download checks the database's commit counter first and asks the owners again (owners.py: call
control, CAPF, the CTL Provider — never their tables) when anything was committed.

Owners away at start (or later): the service starts anyway and serves what does not depend on them
(firmware, unsigned static files, trust lists); a device configuration or a signed file is refused
with a TFTP error naming the owner that did not answer, `Status` says DEGRADED with that reason, and
the poll asks again every POLL_SECONDS until they answer — then everything is built and signed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time

import grpc

from ccmsec.aio.tftp import TftpServer
from ccmsec.domain import ClusterMode, DomainError
from ccmsec.fsutil import atomic_write
from ccmsec.pki.ca import fingerprint_sha256
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.pki.tokens import FileSigner
from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime import metrics
from ccmsec.runtime.service import Service, run_service
from ccmsec.runtime.outbox import stage_owner_change
from ccmsec.runtime.servicer import ChangeActor, StatusServicerMixin, abort, change_actor
from ccmsec.runtime.settings import SettingsError
from ccmsec_proto import common_pb2, events_pb2, tftp_signer_pb2, tftp_signer_pb2_grpc
from ccmsec_tftp_signer.content import ClusterEndpoints, write_static_files
from ccmsec.db.commits import WATCHED, counter_path
from ccmsec_tftp_signer.devicefiles import ChangeDetector
from ccmsec_tftp_signer.files import DEVICE_NAME, FILE_KINDS, PublishError, TftpContent
from ccmsec_tftp_signer.layout import ClusterPath, Layout, Mode6Error
from ccmsec_tftp_signer.owners import OwnerReads, OwnersUnavailable
from ccmsec_tftp_signer.signing import SignedStore, SigningPool

SHARED_CLUSTERS_FILE = "shared-clusters.json"
POLL_SECONDS = 1.0  # a lost event delays building ahead by at most this; requests never wait on it
OWN_CLUSTER = "local"
START_WAIT = 5.0   # at start, the most the owners' first answer is waited for before serving without it


def _mode_proto(mode: str) -> int:
    """A cluster's mode as the proto enum (0 when a shared cluster's mode is unspecified)."""
    try:
        return ClusterMode.parse(mode).to_proto()
    except DomainError:
        return 0


def certificate_message(cert, role=common_pb2.ROLE_TFTP) -> common_pb2.Certificate:
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import DNSName, IPAddress, SubjectAlternativeName

    try:
        san = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
        dns = next(iter(san.get_values_for_type(DNSName)), "")
        ips = san.get_values_for_type(IPAddress)
    except Exception:
        dns, ips = "", []
    return common_pb2.Certificate(
        der=cert.public_bytes(serialization.Encoding.DER), serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), role=role,
        not_before_unix=int(cert.not_valid_before_utc.timestamp()),
        not_after_unix=int(cert.not_valid_after_utc.timestamp()),
        fingerprint_sha256=fingerprint_sha256(cert), dns_name=dns,
        ipv4=str(ips[0]) if ips and ips[0].version == 4 else "")


class TftpSignerServicer(StatusServicerMixin, tftp_signer_pb2_grpc.TftpSignerServicer):
    service: "TftpSignerService"

    async def GetSigningCertificate(self, request, context):  # noqa: N802
        return certificate_message(self.service.certificate)

    async def PublishFile(self, request, context):  # noqa: N802
        try:
            # In a thread: the trust-list parse and the atomic write's two fsyncs would otherwise stall
            # every TFTP transfer this event loop is running.
            path, digest = await asyncio.to_thread(
                functools.partial(self.service.content.publish, request.cluster_path, request.name,
                                  bytes(request.content), request.sha256,
                                  generation=request.generation, takes_back=list(request.takes_back),
                                  withdraw=request.withdraw))
        except PublishError as exc:
            await abort(context, getattr(grpc.StatusCode, exc.status), str(exc))
        if request.withdraw:
            self.service.log.warning("trust list withdrawn (take-back, nothing recorded to put back)",
                                     extra={"file": str(path), "takes_back": list(request.takes_back)})
        else:
            self.service.log.info("trust list published", extra={"file": str(path), "sha256": digest,
                                                                 "takes_back": list(request.takes_back)})
        return tftp_signer_pb2.PublishFileReply(path=str(path), sha256=digest)

    async def Resign(self, request, context):  # noqa: N802
        started = time.perf_counter()
        names = None if request.all or not request.devices else list(request.devices)
        bad = [n for n in names or () if not DEVICE_NAME.fullmatch(n)]
        if bad:  # the signed file's name is built from it: "../other/SEP…" named a file elsewhere
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"not a device name: {bad[0][:64]!r} (SEP and 12 upper-case hex digits)")
        try:
            count = await self.service.content.resign_devices(names, force=True)
            if request.all:
                count += await self.service.content.resign_static(force=True)
        except OwnersUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"nothing re-signed: {exc}")
        seconds = time.perf_counter() - started
        await self.service.audit_resign(change_actor(self.service, context), names, bool(request.all), count)
        return tftp_signer_pb2.ResignReply(signed=count, seconds=seconds)

    async def ListFiles(self, request, context):  # noqa: N802
        content = self.service.content
        folder = request.cluster_path or None
        if folder and content.layout.owner(folder) is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"TFTP path {folder!r} is not configured here")
        try:
            mode, files = await content.list_files(folder, request.include_devices)
        except OwnersUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return tftp_signer_pb2.ListFilesReply(
            cluster_path=folder or content.layout.own.tftp_path, mode=_mode_proto(mode),
            caching=content.store.caching,
            files=[tftp_signer_pb2.FileEntry(name=f.name, size=f.size, signed=f.signed, kind=f.kind)
                   for f in files])

    async def AddSharedCluster(self, request, context):  # noqa: N802
        cluster = ClusterPath(request.name, request.tftp_path, request.alternate_path,
                              ClusterMode.proto_text(request.mode, "unspecified"))
        try:
            await self.service.add_shared_cluster(cluster)
        except Mode6Error as exc:
            await abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except OwnersUnavailable as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"the cluster mode is not known now: {exc}")
        return self._clusters()

    async def ListSharedClusters(self, request, context):  # noqa: N802
        return self._clusters()

    def _clusters(self) -> tftp_signer_pb2.SharedClusters:
        layout = self.service.content.layout
        return tftp_signer_pb2.SharedClusters(clusters=[
            tftp_signer_pb2.SharedCluster(name=c.name, tftp_path=c.tftp_path, alternate_path=c.alternate_path,
                                          mode=_mode_proto(c.mode))
            for c in (layout.own, *layout.others)])


class TftpSignerService(Service):
    role = "tftp-signer"

    def __init__(self, settings):
        super().__init__(settings)
        self.server: TftpServer | None = None
        self.pool: SigningPool | None = None
        self.content: TftpContent | None = None
        self.detector: ChangeDetector | None = None
        self.certificate = None
        self.mode6_problem = ""
        self._layout_lock = asyncio.Lock()
        self.owners: OwnerReads | None = None
        self._bus_problem = ""

    # --- configuration --------------------------------------------------------------------------
    def _peer(self, role: str) -> str:
        try:
            return self.settings.peer_host(role)
        except SettingsError:
            return self.settings.host  # a stand-alone server: everything on this host

    def endpoints(self) -> ClusterEndpoints:
        s = self.settings
        # LATER-7: the call-control nodes in order (publisher, subscribers), or the one callmanager.
        # As configured: addresses from the local runner; compose's service names stay names, which
        # phones resolve when they connect — a container started again may get another address,
        # and a name resolved once here would then send phones to an address nobody holds.
        nodes = tuple(s.call_control_nodes[:3]) or (self._peer("callmanager"),)
        return ClusterEndpoints(callmanagers=nodes, sccp_port=s.sccp_port,
                                sccp_tls_port=s.sccp_tls_port, capf_host=self._peer("capf"),
                                capf_port=s.capf_port,
                                srst_host=s.peers.get("srst"))

    @property
    def state_dir(self):
        return self.settings.data_dir / self.role

    def _load_shared(self) -> list[ClusterPath]:
        path = self.state_dir / SHARED_CLUSTERS_FILE
        if not path.exists():
            return []
        try:
            rows = json.loads(path.read_text())
            return [ClusterPath(r["name"], r["tftp_path"], r.get("alternate_path", ""), r["mode"]) for r in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise Mode6Error(f"{path}: unreadable shared-cluster list ({exc})") from None

    def _save_shared(self, layout: Layout) -> None:
        rows = [{"name": c.name, "tftp_path": c.tftp_path, "alternate_path": c.alternate_path, "mode": c.mode}
                for c in layout.others]
        atomic_write(self.state_dir / SHARED_CLUSTERS_FILE, json.dumps(rows, indent=2).encode())

    def _layout_for(self, mode: str) -> Layout:
        """This cluster in `mode` plus the registered shared clusters. When that breaks MODE-6, only
        this cluster is served (never a layout that lets clusters overwrite each other) and
        `mode6_problem` says why; the registered list is kept, so fixing the mode restores it."""
        own = ClusterPath(OWN_CLUSTER, self.settings.tftp_path, "", mode)
        try:
            layout = Layout(own, tuple(self._load_shared()))
        except Mode6Error as exc:
            self.mode6_problem = str(exc)
            self.log.error("shared TFTP layout refused: %s", exc)
            return Layout(own)
        self.mode6_problem = ""
        return layout

    async def add_shared_cluster(self, cluster: ClusterPath) -> None:
        # One change at a time: two registrations built on the same old layout lost one of them.
        async with self._layout_lock:
            mode = await self.content.mode()
            new = self.content.layout.with_own_mode(mode).with_cluster(cluster)  # Mode6Error if MODE-6 forbids
            await asyncio.to_thread(self._save_shared, new)
            self.content.layout = new

    # --- audit ----------------------------------------------------------------------------------
    async def audit_resign(self, who: ChangeActor, names: list[str] | None, everything: bool,
                           signed: int) -> None:
        """The audit record of a forced re-sign (signed files are tftp-signer's, issue 9 §5): one
        `owner.change` staged in this service's outbox, which callmanager — the only writer of the
        audit log — records, as it does CAPF's and the CTL Provider's writes."""
        what = "all files" if everything else "all device files" if names is None else (
            "devices " + ",".join(names[:20]) + (f" (+{len(names) - 20} more)" if len(names) > 20 else ""))
        async with self.db() as session, session.begin():
            stage_owner_change(session, self.node, action="tftp.resign",
                               target=self.settings.tftp_path, detail=f"{what}: {signed} signed",
                               **who.audit())
        self.outbox.kick()

    # --- lifecycle ------------------------------------------------------------------------------
    async def setup(self) -> None:
        s = self.settings
        issued = ensure_server_certificate(s.data_dir / "servers" / self.role, self.node, ip=s.host,
                                           key_dir=s.key_dir)
        self.certificate = issued.cert
        signer = FileSigner.from_issued(issued)
        self.pool = SigningPool(signer)
        root = s.data_dir / "tftp"
        endpoints = self.endpoints()
        store = SignedStore(self.pool, root, caching=s.tftp_caching)
        own = ClusterPath(OWN_CLUSTER, s.tftp_path)
        self.detector = ChangeDetector(self.engine, [counter_path(s.data_dir, role) for role in WATCHED])
        if self.owners is None:
            self.owners = OwnerReads({"ctl-provider": lambda: self.peer_channel("ctl-provider"),
                                      "callmanager": lambda: self.peer_channel("callmanager"),
                                      "capf": lambda: self.peer_channel("capf")})
        self.content = TftpContent(root, Layout(own), self.owners, endpoints, store, signer, self.detector)
        mode = await self._first_answer()
        self.content.layout = self._layout_for(mode or ClusterMode.NON_SECURE)
        written = write_static_files(root / s.tftp_path, endpoints)
        if written:
            self.log.info("static TFTP files created", extra={"files": ",".join(written)})
        for kind in FILE_KINDS:  # exported from the start, at 0
            metrics.TFTP_TRANSFERS.labels(kind, "completed")
            metrics.TFTP_TRANSFERS.labels(kind, "failed")
        for reason in ("per_source", "undeliverable"):
            metrics.TFTP_REQUESTS_REFUSED.labels(reason)
        self.server = TftpServer(s.host, s.tftp_port, self.content.resolve, max_sessions=1024,
                                 kind_of=self.content.kind_of)
        await self.server.start()
        self.grpc.add(tftp_signer_pb2_grpc.add_TftpSignerServicer_to_server, TftpSignerServicer(self),
                      "ccmsec.v1.TftpSigner")
        await self.subscribe(bus_mod.subject_for("config.changed"), "config-changed", self.on_config_changed)
        await self.subscribe(bus_mod.subject_for("mode.changed"), "mode-changed", self.on_mode_changed)
        await self.subscribe(bus_mod.subject_for("ctl.updated"), "ctl-updated", self.on_ctl_updated)
        if mode is ClusterMode.MIXED:
            self.spawn(self._resign_all("start in mixed mode"))
        self.spawn(self._poll())

    async def _first_answer(self) -> ClusterMode | None:
        """The owners' first answer, waited for START_WAIT at most: None when they did not answer
        (the service starts DEGRADED and the poll keeps asking)."""
        try:
            return await asyncio.wait_for(self.content.mode(), START_WAIT)
        except (OwnersUnavailable, asyncio.TimeoutError) as exc:
            reason = str(exc) or "no answer in time"
            if not self.content.devices.problem:
                self.content.devices.problem = reason
            self.log.warning("starting without the owners' answer (device configurations and signed "
                             "files refused until they answer; asked again every %.0f s): %s",
                             POLL_SECONDS, self.content.devices.problem)
            return None

    # --- DEGRADED: the bus (BUS-5) or the owners the files are built from ------------------------
    def _owners_problem(self) -> str:
        problem = self.content.devices.problem if self.content is not None else ""
        return f"device files unavailable: {problem}" if problem else ""

    def startup_problem(self) -> str:
        # owners that did not answer at start: DEGRADED from the first health answer, cleared by the poll
        return self._owners_problem()

    async def _set_degraded(self, reason: str) -> None:
        self._bus_problem = reason
        await super()._set_degraded("; ".join(r for r in (reason, self._owners_problem()) if r))

    async def _owners_changed(self) -> None:
        combined = "; ".join(r for r in (self._bus_problem, self._owners_problem()) if r)
        if self.grpc is not None and combined != self.degraded:
            await super()._set_degraded(combined)

    async def teardown(self) -> None:
        if self.server is not None:
            await self.server.close()
        if self.pool is not None:
            self.pool.close()
        if self.content is not None:
            self.content.devices.close()
        if self.detector is not None:
            self.detector.close()

    # --- events ---------------------------------------------------------------------------------
    async def on_config_changed(self, event: events_pb2.Event) -> None:
        if event.kind != "config.changed":
            return
        body = event.config_changed
        names = None if body.all or not body.devices else list(body.devices)
        # The version check finds what changed (the names are a hint; whatever else changed is
        # built too); the devices named are then signed if still stale.
        try:
            count = await self.content.catch_up()
            count += await self.content.resign_devices(names)
        except OwnersUnavailable as exc:  # the poll catches up once they answer
            self.log.warning("config change not built yet: %s", exc, extra={"event_id": event.id})
            return
        self.log.info("re-signed after config change",
                      extra={"event_id": event.id, "devices": len(names) if names else "all", "signed": count})

    async def _poll(self) -> None:
        """Build ahead even when an event was lost: the version check every POLL_SECONDS."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                count = await self.content.catch_up()
            except asyncio.CancelledError:
                raise
            except OwnersUnavailable:  # logged once per reason (devicefiles); asked again next turn
                await self._owners_changed()
                continue
            except Exception as exc:  # the database away for a moment: requests re-check anyway
                self.log.warning("device files not caught up: %s", exc)
                continue
            await self._owners_changed()
            await self._follow_mode()
            if count:
                self.log.info("built and signed changed device files", extra={"signed": count})

    async def _follow_mode(self) -> None:
        """The layout's own mode follows the owner's (a mode first learnt by the poll, after the
        owners were away at start or a mode.changed was missed)."""
        mode = self.content.devices.mode
        if self.content.devices.known and self.content.layout.own.mode != mode.value:
            async with self._layout_lock:
                self.content.layout = self._layout_for(mode)

    async def on_mode_changed(self, event: events_pb2.Event) -> None:
        if event.kind != "mode.changed":
            return
        try:
            async with self._layout_lock:
                mode = await self.content.mode()
                # Layout() itself refuses a MODE-6 break, so rebuild through _layout_for: the handler
                # must not fail (and be redelivered) but record the problem and still re-sign.
                self.content.layout = self._layout_for(mode)
            await self._resign_all(f"mode changed to {mode}")
        except OwnersUnavailable as exc:  # the poll follows the mode once the owner answers
            self.log.warning("mode change not applied yet: %s", exc, extra={"event_id": event.id})

    async def on_ctl_updated(self, event: events_pb2.Event) -> None:
        if event.kind != "ctl.updated":
            return
        try:
            await self._resign_all(f"CTL version {event.ctl_updated.version}")
        except OwnersUnavailable as exc:
            self.log.warning("files not re-signed for the CTL yet: %s", exc, extra={"event_id": event.id})

    async def _resign_all(self, why: str) -> None:
        started = time.perf_counter()
        try:
            mode = await self.content.mode()
        except OwnersUnavailable as exc:  # at start: the poll signs everything once they answer
            self.log.warning("not re-signed (%s): %s", why, exc)
            return
        if mode is ClusterMode.MIXED:
            await self.pool.warm_up()
        count = await self.content.resign_devices(None) + await self.content.resign_static()
        self.log.info("re-signed stale files", extra={"reason": why, "signed": count,
                                                      "seconds": round(time.perf_counter() - started, 3)})

    async def sample_metrics(self) -> None:
        await super().sample_metrics()
        if self.certificate is not None:
            metrics.set_certificate_expiry("server", f"{self.node}/tftp-signing", self.certificate.not_valid_after_utc)

    def status_details(self) -> dict[str, str]:
        if self.content is None:
            return {}
        c = self.content
        details = {
            "tftp_path": c.layout.own.tftp_path, "security_mode": c.layout.own.mode,
            "caching": "on" if c.store.caching else "off",
            "tftp_address": self.server.address_text if self.server else "",
            "transfers_completed": str(self.server.completed if self.server else 0),
            "transfers_failed": str(self.server.failed if self.server else 0),
            "transfers_active": str(self.server.active_sessions if self.server else 0),
            # requests refused before a transfer: over their address's share ("server busy: too
            # many transfers from your address"), and dropped unanswered (port 0, 0.0.0.0 / ::)
            "requests_refused_per_source": str(self.server.refused_per_source if self.server else 0),
            "requests_dropped_undeliverable": str(self.server.dropped_undeliverable if self.server else 0),
            "files_served": str(sum(c.served.values())),
            "not_found": str(c.not_found), "refused": str(c.refused),
            "shared_clusters": str(len(c.layout.others)),
            "owners": c.devices.problem or ("answering" if c.devices.known else "not asked yet"),
            "unavailable": str(c.unavailable),
            "signing_certificate_sha256": fingerprint_sha256(self.certificate) if self.certificate else "",
        }
        details.update({f"served_{k}": str(v) for k, v in c.served.items()})
        details.update(c.store.stats())
        details.update(c.devices.stats())
        if self.mode6_problem:
            details["mode6_problem"] = self.mode6_problem
        return details


def main() -> None:
    run_service(TftpSignerService)


if __name__ == "__main__":
    main()
