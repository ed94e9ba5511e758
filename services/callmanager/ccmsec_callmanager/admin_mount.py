"""Mounts the HTTPS administration API in the callmanager service; its changes go to the bus."""

from __future__ import annotations

from ccmsec_callmanager.admin import (
    AdminServer, create_admin_app, ensure_admin_account, ensure_https_certificate,
)
from ccmsec_callmanager.actions import ServiceEvents


class AdminMount:
    def __init__(self, service):
        self.service = service
        self.server: AdminServer | None = None
        self.password_file = None

    async def start(self) -> None:
        s = self.service.settings
        self.password_file = await ensure_admin_account(self.service.db, s.data_dir)
        certfile, keyfile = ensure_https_certificate(s.data_dir, s.host)
        app = create_admin_app(self.service.db, events=ServiceEvents(self.service.publish), data_dir=s.data_dir)
        # Listening before the service reports SERVING, so `ccmsec device …` works right after `up`.
        self.server = AdminServer(app, s.host, s.admin_port, certfile, keyfile, graceful_timeout=3.0)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
