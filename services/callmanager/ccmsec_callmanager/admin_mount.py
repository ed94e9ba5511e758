"""Mounts the HTTPS administration API in the callmanager service and feeds its changes to the bus."""

from __future__ import annotations

from ccmsec_callmanager.admin import (
    AdminServer, create_admin_app, ensure_admin_account, ensure_https_certificate,
)
from ccmsec_proto import events_pb2


class BusEvents:
    """The admin API's event seam, backed by the service's JetStream bus.

    Device events go on the un-targeted subjects every service subscribes to; the device names are
    in the body.
    """

    def __init__(self, service):
        self.service = service

    async def publish(self, kind: str, target: str | None, payload: dict) -> None:
        device = payload.get("device") or target
        if kind == "config.changed":
            body = events_pb2.ConfigChanged(devices=[device] if device else [], all=not device,
                                            what=str(payload.get("change", "")))
            await self.service.publish(kind, config_changed=body)
        elif kind == "device.reset":
            kind_value = events_pb2.RESTART if payload.get("kind") == "restart" else events_pb2.RESET
            body = events_pb2.DeviceReset(devices=[device] if device else [], all=not device,
                                          kind=kind_value, rule=",".join(payload.get("rules", [])),
                                          reason=str(payload.get("reason", "administrative change")))
            await self.service.publish(kind, device_reset=body)
        else:
            await self.service.publish(kind, target, text=str(payload))


class AdminMount:
    def __init__(self, service):
        self.service = service
        self.server: AdminServer | None = None
        self.password_file = None

    async def start(self) -> None:
        s = self.service.settings
        self.password_file = await ensure_admin_account(self.service.db, s.data_dir)
        certfile, keyfile = ensure_https_certificate(s.data_dir, s.host)
        app = create_admin_app(self.service.db, events=BusEvents(self.service), data_dir=s.data_dir)
        # Listening before the service reports SERVING, so `ccmsec device …` works right after `up`.
        self.server = AdminServer(app, s.host, s.admin_port, certfile, keyfile, graceful_timeout=3.0)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
