"""Extension mobility (issue 10, DEV-2) over gRPC: users with their line, log in and log out.

A login stores who is logged in where (`mobility_logins`: one user per device, one device per
user) and restarts the device (one `device.reset` event, kind restart, as for any reset), so it
registers again with the user's line in place of its own; call control's directory is told to
reload first. The device keeps its own security mode (DEV-2): mobility carries a line, never a
status. Logout removes the row and restarts the device back to its own lines. A login is
refused (FAILED_PRECONDITION) while the user is logged in elsewhere or another user is logged in
to the device — log out first — so two logins never race for the same line.
"""

from __future__ import annotations

import uuid

import grpc
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ccmsec.db import calls as calls_db
from ccmsec.db.devices import Device, InvalidDeviceName, validate_device_name
from ccmsec.runtime.servicer import abort
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_proto import events_pb2

MAX_USERS_LISTED = 10_000


class MobilityServicerMixin:
    """For `CallManagerServicer` (`self.service`: db, publish, callcontrol)."""

    async def AddMobilityUser(self, request, context):  # noqa: N802
        try:
            user = calls_db.validate_name("user", request.user_id)
            dn = calls_db.validate_number(request.dn)
            name = calls_db.validate_label(request.display_name)
            label = calls_db.validate_label(request.label)
        except calls_db.InvalidCallConfig as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async with self.service.db() as session:
            if await session.get(calls_db.MobilityUser, user) is not None:
                await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"user {user} exists")
            session.add(calls_db.MobilityUser(user_id=user, display_name=name, dn=dn, label=label))
            try:
                await session.commit()
            except IntegrityError:
                await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"user {user} exists")
        return pb.MobilityUser(user_id=user, display_name=name, dn=dn, label=label)

    async def GetMobilityUsers(self, request, context):  # noqa: N802
        async with self.service.db() as session:
            users = (await session.scalars(select(calls_db.MobilityUser)
                                           .order_by(calls_db.MobilityUser.user_id)
                                           .limit(MAX_USERS_LISTED))).all()
            where = {row.user_id: row.device for row in await calls_db.rows(session, calls_db.MobilityLogin)}
        return pb.MobilityUsersReply(users=[
            pb.MobilityUser(user_id=u.user_id, display_name=u.display_name, dn=u.dn, label=u.label,
                            logged_in_to=where.get(u.user_id, "")) for u in users])

    async def _device_and_user(self, request, context, *, need_user: bool):
        try:
            device = validate_device_name(request.device)
            user = calls_db.validate_name("user", request.user_id) if need_user else ""
        except (InvalidDeviceName, calls_db.InvalidCallConfig) as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return device, user

    async def _restart(self, device: str, reason: str) -> str:
        cc = self.service.callcontrol
        if cc is not None:
            cc.directory.forget()    # the device registers again with the new lines
        request_id = uuid.uuid4().hex
        if cc is not None:
            cc.registry.track_reset({device}, request_id)
        await self.service.publish("device.reset", None, device_reset=events_pb2.DeviceReset(
            devices=[device], kind=events_pb2.RESTART, rule="DEV-2", reason=reason, request_id=request_id))
        return request_id

    async def MobilityLogin(self, request, context):  # noqa: N802
        device, user = await self._device_and_user(request, context, need_user=True)
        async with self.service.db() as session:
            if await session.scalar(select(Device.id).where(Device.name == device)) is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"no device named {device}")
            row = await session.get(calls_db.MobilityUser, user)
            if row is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"no extension-mobility user {user}")
            current = await session.get(calls_db.MobilityLogin, device)
            if current is not None:
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                            f"{current.user_id} is logged in to {device}; log out first")
            elsewhere = await session.scalar(select(calls_db.MobilityLogin.device)
                                             .where(calls_db.MobilityLogin.user_id == user))
            if elsewhere is not None:
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                            f"{user} is logged in to {elsewhere}; log out there first")
            session.add(calls_db.MobilityLogin(device=device, user_id=user))
            try:
                await session.commit()
            except IntegrityError:   # a concurrent login won: nothing changed here
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                            f"{user} or {device} was just taken by another login; try again")
            dn = row.dn
        request_id = await self._restart(device, f"extension mobility: {user} logged in")
        return pb.MobilityLoginReply(device=device, user_id=user, dn=dn, request_id=request_id)

    async def MobilityLogout(self, request, context):  # noqa: N802
        device, _ = await self._device_and_user(request, context, need_user=False)
        async with self.service.db() as session:
            current = await session.get(calls_db.MobilityLogin, device)
            if current is None:
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"nobody is logged in to {device}")
            user = current.user_id
            await session.delete(current)
            await session.commit()
        request_id = await self._restart(device, f"extension mobility: {user} logged out")
        return pb.MobilityLoginReply(device=device, user_id=user, request_id=request_id)
