"""Mounts the HTTPS administration API in the callmanager service: its changes go to the bus, its
CAPF endpoints reach the capf service over the cluster's mTLS gRPC, and reset requests are
tracked by this node's call-control registry."""

from __future__ import annotations

import asyncio
import logging

from ccmsec_callmanager.admin import (
    AdminServer, BusEvents, create_admin_app, ensure_admin_account, ensure_https_certificate,
)
from ccmsec_callmanager.admin.audit import prune_audit

log = logging.getLogger("ccmsec.callmanager.admin")
RETENTION_INTERVAL = 3600.0  # seconds between two audit-log retention passes


class AdminMount:
    def __init__(self, service):
        self.service = service
        self.server: AdminServer | None = None
        self.password_file = None
        self.certfile = None  # the HTTPS certificate (CERT-4); its expiry is a metric

    async def start(self) -> None:
        s = self.service.settings
        self.password_file = await ensure_admin_account(self.service.db, s.data_dir,
                                                        path=s.admin_password_file)
        # The API is its own door: it serves HTTPS and calls peers as `admin-api`, not as callmanager.
        identity = self.service.admin_api_identity()
        certfile, keyfile = ensure_https_certificate(s.data_dir, s.host, identity)
        self.certfile = certfile
        callcontrol = getattr(self.service, "callcontrol", None)
        app = create_admin_app(
            self.service.db, events=BusEvents(self.service.publish), data_dir=s.data_dir,
            capf_channel=lambda: self.service.peer_channel("capf", identity=identity),  # cached
            ctl_channel=lambda: self.service.peer_channel("ctl-provider", identity=identity),  # cluster view
            reset_tracker=callcontrol.registry if callcontrol is not None else None,
            call_service=lambda: getattr(getattr(self.service, "callcontrol", None), "calls", None),
            node=self.service.node,
            call_control_nodes=s.cluster_nodes,  # RST-9: the nodes this cluster runs, when known
            domain=self.service.domain)  # the one write path gRPC uses too
        # Listening before the service reports SERVING, so `ccmsec device …` works right after `up`.
        self.server = AdminServer(app, s.host, s.admin_port, certfile, keyfile, graceful_timeout=3.0)
        await self.server.start()
        self.service.spawn(self._retention())

    async def _retention(self) -> None:
        """Audit-log retention (CCMSEC_AUDIT_RETENTION_DAYS, CCMSEC_AUDIT_MAX_ROWS): at start,
        then every hour."""
        s = self.service.settings
        while True:
            try:
                removed = await prune_audit(self.service.db, max_age_days=s.audit_retention_days,
                                            max_rows=s.audit_max_rows)
                if removed:
                    log.info("audit log retention: deleted old rows", extra={
                        "rows": removed, "days": s.audit_retention_days, "max_rows": s.audit_max_rows})
            except Exception:  # the next pass tries again; serving the API matters more
                log.exception("audit log retention failed")
            await asyncio.sleep(RETENTION_INTERVAL)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
