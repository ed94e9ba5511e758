"""Extension mobility (issue 10, DEV-2) over gRPC: users with their line, log in and log out.

A login stores who is logged in where (`mobility_logins`: one user per device, one device per
user) and restarts the device (one `device.reset` event, kind restart, as for any reset, committed
with the login in callmanager's outbox), so it registers again with the user's line in place of its own; call control's directory is told to
reload first. The device keeps its own security mode (DEV-2): mobility carries a line, never a
status. Logout removes the row and restarts the device back to its own lines. A login is
refused (FAILED_PRECONDITION) while the user is logged in elsewhere or another user is logged in
to the device — log out first — so two logins never race for the same line. The writes, their
audit rows and the restart are the domain layer's (`domain.py`, the one write path), in one
transaction.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from ccmsec.db import calls as calls_db
from ccmsec_proto import callmanager_pb2 as pb

from .domain import MobilityRestart

MAX_USERS_LISTED = 10_000


class MobilityServicerMixin:
    """For `CallManagerServicer` (`self.service`: db, publish, callcontrol, domain; `_owner`,
    `_actor` from the servicer)."""

    async def AddMobilityUser(self, request, context):  # noqa: N802
        user = await self._owner(context, self.service.domain.add_mobility_user(
            self._actor(context), user_id=request.user_id, dn=request.dn,
            display_name=request.display_name, label=request.label))
        return pb.MobilityUser(**user)

    async def SetMobilityPin(self, request, context):  # noqa: N802
        user = await self._owner(context, self.service.domain.set_mobility_pin(
            self._actor(context), user_id=request.user_id, pin=request.pin))
        return pb.MobilityUser(**user)

    async def GetMobilityUsers(self, request, context):  # noqa: N802
        async with self.service.db() as session:
            users = (await session.scalars(select(calls_db.MobilityUser)
                                           .order_by(calls_db.MobilityUser.user_id)
                                           .limit(MAX_USERS_LISTED))).all()
            where = {row.user_id: row.device for row in await calls_db.rows(session, calls_db.MobilityLogin)}
        return pb.MobilityUsersReply(users=[
            pb.MobilityUser(user_id=u.user_id, display_name=u.display_name, dn=u.dn, label=u.label,
                            logged_in_to=where.get(u.user_id, "")) for u in users])

    def _restart(self) -> MobilityRestart:
        """The device's restart, staged by the domain layer with the login/logout (outbox)."""
        cc = self.service.callcontrol

        def prepare(device: str, request_id: str) -> None:
            if cc is not None:
                cc.directory.forget()    # the device registers again with the new lines
                cc.registry.track_reset({device}, request_id)

        return MobilityRestart(uuid.uuid4().hex, prepare)

    async def MobilityLogin(self, request, context):  # noqa: N802
        restart = self._restart()
        login = await self._owner(context, self.service.domain.mobility_login(
            self._actor(context), device=request.device, user_id=request.user_id, restart=restart))
        pending = login.pop("delivery") == "pending"   # committed; the restart waits for NATS
        return pb.MobilityLoginReply(request_id=restart.request_id, delivery_pending=pending, **login)

    async def MobilityLogout(self, request, context):  # noqa: N802
        restart = self._restart()
        logout = await self._owner(context, self.service.domain.mobility_logout(
            self._actor(context), device=request.device, restart=restart))
        pending = logout.pop("delivery") == "pending"
        return pb.MobilityLoginReply(request_id=restart.request_id, delivery_pending=pending, **logout)


def _reply(out: dict) -> dict:
    """The domain's answer as reply fields: "pending" delivery is `delivery_pending` (issue 9 §4)."""
    out = dict(out)
    out["delivery_pending"] = out.pop("delivery") == "pending"
    return out


class RoutingServicerMixin:
    """Speed dials, call forward busy / no answer, codec regions: the domain layer's write path.
    This node's call control applies each change before the answer, so the caller's next call
    uses it; the `config.changed` event brings it to the other nodes — committed with the change
    (outbox), and the reply says `delivery_pending` while NATS has not acknowledged it."""

    async def _apply_live(self, devices=()) -> None:
        cc = self.service.callcontrol
        if cc is not None:
            await cc.apply_routing_change(list(devices))

    async def SetSpeedDial(self, request, context):  # noqa: N802
        out = await self._owner(context, self.service.domain.set_speed_dial(
            self._actor(context), device=request.device, index=request.index, number=request.number,
            label=request.label))
        await self._apply_live([request.device])
        return pb.SpeedDialSetting(**_reply(out))

    async def SetLineForward(self, request, context):  # noqa: N802
        out = await self._owner(context, self.service.domain.set_line_forward(
            self._actor(context), dn=request.dn, busy=request.busy, no_answer=request.no_answer))
        await self._apply_live()
        return pb.LineForwardSetting(**_reply(out))

    async def SetRegion(self, request, context):  # noqa: N802
        out = await self._owner(context, self.service.domain.set_region(
            self._actor(context), name=request.name, wideband=request.wideband))
        await self._apply_live()
        return pb.RegionSetting(**_reply(out))

    async def SetDeviceRegion(self, request, context):  # noqa: N802
        out = await self._owner(context, self.service.domain.set_device_region(
            self._actor(context), device=request.device, region=request.region))
        await self._apply_live([request.device])
        return pb.DeviceRegionSetting(**_reply(out))
