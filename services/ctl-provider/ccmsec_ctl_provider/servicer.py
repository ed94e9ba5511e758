"""gRPC `ccmsec.v1.CtlProvider`: activation (CHK-1), port (RST-7), the CTL commit and the mode.
Every write goes through the owner's domain layer (`provider_domain.py`, `trust.py`): written,
audited (`owner.change`) and its events staged in one transaction."""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ccmsec.db.devices import as_utc
from ccmsec.domain import ClusterMode, DomainError
from ccmsec.formats.ctl import dn_string
from ccmsec.policy.tftp_paths import TftpClusterEntry
from ccmsec.runtime.servicer import StatusServicerMixin, caller_of, change_actor
from ccmsec_proto import common_pb2, ctl_provider_pb2, ctl_provider_pb2_grpc

from ccmsec_ctl_provider.certificates import CertificateUnavailable
from ccmsec_ctl_provider.cluster_tls import read_legacy_tls
from ccmsec_ctl_provider.trust import LOCAL_CLUSTER_ID, Refused
from ccmsec.textsafe import bounded

MAX_CTL_REQUEST = 64 * 1024


def certificate_message(der: bytes, role: int, dns_name: str, ipv4: str | None) -> common_pb2.Certificate:
    cert = x509.load_der_x509_certificate(der)
    return common_pb2.Certificate(
        der=der, serial=f"{cert.serial_number:x}", subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(), role=role,
        not_before_unix=int(cert.not_valid_before_utc.timestamp()),
        not_after_unix=int(cert.not_valid_after_utc.timestamp()),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(), dns_name=dns_name,
        ipv4=ipv4 or "")


def _cluster_message(e: TftpClusterEntry) -> ctl_provider_pb2.TftpCluster:
    return ctl_provider_pb2.TftpCluster(cluster_id=e.cluster_id, tftp_path=e.tftp_path,
                                        alternate_path=e.alternate_path, mode=ClusterMode.parse(e.mode).to_proto())


class CtlProviderServicer(StatusServicerMixin, ctl_provider_pb2_grpc.CtlProviderServicer):
    async def _refused(self, context, exc: Refused):
        await context.abort(exc.code, bounded(str(exc)))

    async def Activate(self, request, context):  # noqa: N802
        await self.service.domain.activate(change_actor(self.service, context), request.active)
        return self.service.status_message()

    async def GetServerCertificates(self, request, context):  # noqa: N802
        try:
            entries = await self.service.server_certificates()
        except CertificateUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, bounded(str(exc)))
        return ctl_provider_pb2.ServerCertificatesReply(
            server=self.service.node,
            certificates=[certificate_message(e.der, int(e.role), e.dns_name, e.ipv4) for e in entries])

    async def GetProviderSettings(self, request, context):  # noqa: N802
        return self.service.provider_settings()

    async def SetProviderPort(self, request, context):  # noqa: N802
        try:
            changed, events, delivered = await self.service.domain.set_port(
                change_actor(self.service, context), request.port)
        except Refused as exc:
            await self._refused(context, exc)
        return ctl_provider_pb2.SetProviderPortReply(
            port=request.port, listening_port=self.service.listening_port,
            restart_required=request.port != self.service.listening_port, events=events,
            delivery_pending=not delivered)

    async def GetClusterTls(self, request, context):  # noqa: N802
        async with self.service.db() as session:
            return ctl_provider_pb2.ClusterTlsSettings(legacy_tls=await read_legacy_tls(session))

    async def SetClusterTls(self, request, context):  # noqa: N802
        """LATER-8: store the setting and restart the services whose listeners follow it."""
        events, delivered = await self.service.domain.set_legacy_tls(
            change_actor(self.service, context), request.legacy_tls)
        return ctl_provider_pb2.ClusterTlsSettings(legacy_tls=request.legacy_tls, events=events,
                                                   delivery_pending=not delivered)

    async def GetCurrentCtl(self, request, context):  # noqa: N802
        row = await self.service.trust.current()
        if row is None:
            return ctl_provider_pb2.CurrentCtlReply(present=False)
        return ctl_provider_pb2.CurrentCtlReply(present=True, version=row.version, sha256=row.sha256,
                                                ctl=row.content, records=row.records,
                                                created_unix_ms=int(as_utc(row.created_at).timestamp() * 1000))

    async def CommitCtl(self, request, context):  # noqa: N802
        if len(request.ctl) > MAX_CTL_REQUEST:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "CTL over 64 KB")
        try:
            result = await self.service.trust.commit(request.ctl, request.mode, request.new_trust,
                                                     caller_of(self.service, context))
        except Refused as exc:
            await self._refused(context, exc)
        return ctl_provider_pb2.CommitCtlReply(
            version=result["version"], sha256=result["sha256"], tftp_path=result["tftp_path"],
            published_path=result["published_path"], mode=ClusterMode.parse(result["mode"]).to_proto(),
            previous_mode=ClusterMode.parse(result["previous_mode"]).to_proto(), events=result["events"],
            delivery_pending=not result["delivered"])

    async def GetSecurityMode(self, request, context):  # noqa: N802
        mode, version = await self.service.trust.mode_state()
        proto = ClusterMode.parse(mode).to_proto()
        return ctl_provider_pb2.SecurityModeReply(mode=proto, previous=proto,
                                                  ctl_present=version is not None,
                                                  ctl_version=version or 0)

    async def SetSecurityMode(self, request, context):  # noqa: N802
        try:
            target, previous, events, delivered = await self.service.trust.set_mode(
                request.mode, caller_of(self.service, context))
        except Refused as exc:
            await self._refused(context, exc)
        _, version = await self.service.trust.mode_state()
        return ctl_provider_pb2.SecurityModeReply(mode=ClusterMode.parse(target).to_proto(),
                                                  previous=ClusterMode.parse(previous).to_proto(),
                                                  ctl_present=version is not None,
                                                  ctl_version=version or 0, events=events,
                                                  delivery_pending=not delivered)

    async def _clusters(self, registry):
        return ctl_provider_pb2.TftpClustersReply(clusters=[_cluster_message(e) for e in registry],
                                                  local_cluster_id=LOCAL_CLUSTER_ID)

    async def ListTftpClusters(self, request, context):  # noqa: N802
        return await self._clusters(await self.service.trust.registry())

    async def RegisterTftpCluster(self, request, context):  # noqa: N802
        try:
            mode = ClusterMode.from_proto(request.mode).value
        except DomainError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(f"give the cluster's mode: {exc}"))
        entry = TftpClusterEntry(request.cluster_id, request.tftp_path, request.alternate_path, mode)
        try:
            return await self._clusters(await self.service.trust.register_cluster(
                entry, change_actor(self.service, context)))
        except Refused as exc:
            await self._refused(context, exc)
        except ValueError as exc:  # TftpPathConflict from validation
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(str(exc)))

    async def RemoveTftpCluster(self, request, context):  # noqa: N802
        try:
            return await self._clusters(await self.service.trust.remove_cluster(
                request.cluster_id, change_actor(self.service, context)))
        except Refused as exc:
            await self._refused(context, exc)


__all__ = ["CtlProviderServicer", "certificate_message", "dn_string"]
