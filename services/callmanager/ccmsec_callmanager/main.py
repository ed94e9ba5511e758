"""Entry point of the callmanager service."""

from __future__ import annotations

from ccmsec.runtime.service import Service, run_service
from ccmsec_proto import callmanager_pb2_grpc

# --- call control (SCCP registration, registry, resets, cluster mode, lines, pools) ----------
from ccmsec_callmanager.sccp_service import CallControlMixin
from ccmsec_callmanager.servicer import CallManagerServicer
# --- end call control ----------------------------------------------------------------------
from ccmsec_callmanager.admin import BusEvents
from ccmsec_callmanager.domain import CallManagerDomain
from ccmsec_callmanager.admin_mount import AdminMount  # HTTPS administration API (CERT-4)
from ccmsec_callmanager.access_audit import AccessAuditMixin, OwnerChangesAuditMixin  # refused RPCs, others' changes
from ccmsec_callmanager.media_plane import MediaPlaneMixin  # call keys and the SRTP gateway
from ccmsec_callmanager.legacy_tls import LegacyTlsMixin  # LATER-8: TLS 1.0 on 2443 when enabled


class CallManagerService(LegacyTlsMixin, AccessAuditMixin, OwnerChangesAuditMixin, MediaPlaneMixin, CallControlMixin, Service):
    role = "callmanager"
    long_lived_connections = True  # every registered phone's TLS connection (gcpolicy.py)

    admin = None
    domain = None

    async def setup(self) -> None:
        # The one write path (validate → write → audit → publish) of every door (issue 9 §5); its
        # events are committed with each change in this node's outbox (`Service.outbox`, §4).
        await self.setup_cluster_state()  # ctl-provider's mode and CTL: its events, then its answer
        self.domain = CallManagerDomain(self.db, BusEvents(self.publish).publish, relay=self.outbox,
                                        origin=self.node, cluster_state=self.cluster_state)
        await self.setup_call_control()  # call control: SCCP 2000/2443 + registry
        await self.setup_legacy_tls()  # LATER-8: the cluster's legacy-TLS setting, from ctl-provider
        await self.setup_media_plane()  # keys for calls (keymanager) and the SRTP gateway device
        # LATER-7: a subscriber serves phones and reads; administrative writes and the audit log
        # are the publisher's (one writer of callmanager's tables).
        if self.settings.callmanager_publisher:
            self.admin = AdminMount(self)  # administration API on admin_port (HTTPS)
            await self.admin.start()
        self.grpc.add(callmanager_pb2_grpc.add_CallManagerServicer_to_server, CallManagerServicer(self), "ccmsec.v1.CallManager")
        if self.settings.callmanager_publisher:
            await self.setup_access_audit()  # the audit log's owner records every service's refusals
            await self.setup_owner_changes_audit()  # and ctl-provider's mode and CTL changes

    async def teardown(self) -> None:
        if self.admin is not None:
            await self.admin.stop()  # administration API
        await self.teardown_media_plane()
        await self.teardown_call_control()  # call control


def main() -> None:
    run_service(CallManagerService)


if __name__ == "__main__":
    main()
