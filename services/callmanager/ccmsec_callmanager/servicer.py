"""gRPC `ccmsec.v1.CallManager`: registry, resets with progress, the cluster mode (reported as
followed from its owner, ctl-provider), lines, pools. Every write goes through the domain layer (`domain.py`), so it
is validated, audited and announced as the administration API's are."""

from __future__ import annotations

import logging
import uuid

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select

from ccmsec.db import registry as registry_db
from ccmsec.db.devices import Device, InvalidDeviceName, validate_device_name
from ccmsec.db.lines import DevicePool, lines_of
from ccmsec.domain import ClusterMode, DeviceSecurityMode, DomainError
from ccmsec.policy.resets import (
    NoSuchCallControlNode, NotACallControlNode, ResetDevicesOnServer, check_reset_server, required_actions,
)
from ccmsec.runtime.servicer import StatusServicerMixin, abort, caller_of
from ccmsec.textsafe import shown
from ccmsec_proto import callmanager_pb2 as pb
from ccmsec_proto import callmanager_pb2_grpc, common_pb2, events_pb2

from .calls_api import CallsServicerMixin
from .cluster_state import ClusterStateFollower, ClusterStateUnknown
from .domain import Actor, OwnerRefused
from .mobility import MobilityServicerMixin, RoutingServicerMixin
from .registry import RegistrationEntry

log = logging.getLogger("ccmsec.callmanager")

# ListDevices' page: ~40 bytes a device, far below gRPC's 4 MB message limit.
LIST_DEVICES_MAX = 5000

MAX_RESET_NAMES = 10_000


def registration_message(entry: RegistrationEntry | registry_db.Registration, node: str) -> pb.Registration:
    if isinstance(entry, RegistrationEntry):
        since = int(entry.since)
    else:
        since = int(registry_db.as_utc(entry.since).timestamp())
    return pb.Registration(
        device=entry.device, model=entry.model, mode=DeviceSecurityMode.parse(entry.security_mode).to_proto(),
        server=node, address=entry.address, reported_address=entry.reported_address,
        nat_suspected=entry.nat_suspected, since_unix=since,
        certificate_fingerprint=entry.certificate_fingerprint,
        certificate_kind=entry.certificate_kind, state="registered", cipher=entry.cipher,
        transport_port=entry.transport_port)


class CallManagerServicer(CallsServicerMixin, MobilityServicerMixin, RoutingServicerMixin, StatusServicerMixin, callmanager_pb2_grpc.CallManagerServicer):
    """`self.service` is the CallManagerService (publish, db, node, callcontrol)."""

    @property
    def cc(self):
        return self.service.callcontrol

    # registry ---------------------------------------------------------------------------------
    async def _cluster_registrations(self, device: str = "") -> list[pb.Registration]:
        """This node's live registry plus the mirrored rows of other nodes."""
        node = self.service.node
        out = [registration_message(e, node) for name, e in sorted(self.cc.registry.entries.items())
               if not device or name == device]
        async with self.service.db() as session:
            rows = await registry_db.list_registrations(session, device=device or None, except_node=node)
        out += [registration_message(r, r.node) for r in rows if r.node != node]
        return sorted(out, key=lambda r: r.device)

    async def _cluster_names(self, server: str = "") -> set[str]:
        """Names of the devices registered in the cluster (on `server` only when given): this
        node's live registry plus the other nodes' mirrored rows — names only, no message per
        registration (a reset-all at 10,000 phones built 10,000 of them to count its targets)."""
        node = self.service.node
        names = set(self.cc.registry.entries) if not server or server == node else set()
        if server != node:
            async with self.service.db() as session:
                names.update(await registry_db.registered_names(session, node=server or None, except_node=node))
        return names

    async def GetRegistrations(self, request, context):  # noqa: N802
        return pb.RegistrationsReply(registrations=await self._cluster_registrations(request.device))

    async def GetRefusals(self, request, context):  # noqa: N802
        return pb.RefusalsReply(refusals=[
            pb.Refusal(device=r.device, address=r.address, reason=r.reason, at_unix=int(r.at))
            for r in self.cc.registry.refusals])

    # resets -----------------------------------------------------------------------------------
    async def ResetDevices(self, request, context):  # noqa: N802
        chosen = sum([bool(request.devices), request.all, bool(request.server)])
        if chosen != 1:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "name devices, or all, or one server — exactly one of them")
        if len(request.devices) > MAX_RESET_NAMES:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"at most {MAX_RESET_NAMES} device names per request")
        try:
            names = sorted({validate_device_name(d) for d in request.devices})
        except InvalidDeviceName as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if names:  # a mistyped name is refused, as by the API — not "reset requested" for nothing
            async with self.service.db() as session:
                known = set((await session.scalars(select(Device.name).where(Device.name.in_(names)))).all())
            if unknown := [n for n in names if n not in known]:
                await abort(context, grpc.StatusCode.NOT_FOUND,
                            f"no device named {', '.join(unknown[:10])}"
                            + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""))
        if request.server:  # RST-9 names a call-control node: `srst` or a typo reaches no phone
            try:   # and a node this cluster runs, when its settings say which (CCMSEC_CLUSTER_CALL_CONTROL_NODES)
                check_reset_server(request.server, self.service.settings.cluster_nodes)
            except NotACallControlNode as exc:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except NoSuchCallControlNode as exc:
                await abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        kind = events_pb2.RESTART if request.restart else events_pb2.RESET
        request_id = uuid.uuid4().hex
        if request.all or request.server:
            targeted = await self._cluster_names(request.server)
        if request.all:
            body = events_pb2.DeviceReset(all=True, kind=kind, rule="CHK-13",
                                          reason="reset every phone in the cluster",
                                          request_id=request_id)
        elif request.server:
            # RST-9 through the policy table: every device registered to that server.
            (action,) = required_actions(ResetDevicesOnServer(request.server))
            body = events_pb2.DeviceReset(server=request.server, kind=kind, rule=action.rule_id,
                                          reason=f"Reset Devices on {request.server}",
                                          request_id=request_id)
        else:
            targeted = set(names)
            body = events_pb2.DeviceReset(devices=names, kind=kind, rule="manual",
                                          reason="administrator reset", request_id=request_id)
        self.cc.registry.track_reset(targeted, request_id)
        # Committed with its audit row in the outbox; "pending" while NATS is down (issue 9 §4).
        delivery = await self.service.domain.reset_devices(
            self._actor(context), body, targeted=len(targeted),
            target="all" if request.all else (request.server or ",".join(names))[:128])
        return pb.ResetDevicesReply(request_id=request_id, targeted=len(targeted),
                                    delivery_pending=delivery == "pending")

    async def GetResetProgress(self, request, context):  # noqa: N802
        progress = self.cc.registry.resets.get(request.request_id)
        if progress is None:
            await abort(context, grpc.StatusCode.NOT_FOUND,
                        f"no reset request '{shown(request.request_id)}' on {self.service.node}")
        # Devices registered on other nodes count as back when their row is newer than the reset.
        if progress.targeted - progress.back:
            async with self.service.db() as session:
                rows = await registry_db.list_registrations(session, except_node=self.service.node)
            for row in rows:
                if (row.device in progress.targeted and row.node != self.service.node
                        and registry_db.as_utc(row.since).timestamp() >= progress.started):
                    progress.back.add(row.device)
        return pb.ResetProgressReply(
            request_id=progress.request_id, targeted=len(progress.targeted),
            reset_sent=len(progress.sent), back=len(progress.back & progress.targeted),
            not_back=progress.not_back, complete=progress.complete)

    # cluster mode (ctl-provider's; reported here, changed there) ------------------------------
    async def _cluster(self, context):
        """The CTL Provider's mode and CTL as call control follows them; UNAVAILABLE before it
        ever answered (nothing is reported that its owner did not say)."""
        follower = getattr(self.service, "cluster_state", None) or ClusterStateFollower.fixed()
        try:
            return await follower.current()
        except ClusterStateUnknown as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    async def GetClusterMode(self, request, context):  # noqa: N802
        cluster = await self._cluster(context)
        return pb.ClusterModeReply(mode=ClusterMode.parse(cluster.mode).to_proto(),
                                   ctl_present=cluster.ctl_present)

    # devices, for CAPF (issue 9 §5: the devices table is call control's; CAPF asks here) -------
    @staticmethod
    def _device_info(name: str, model: str, mode: str) -> pb.DeviceInfo:
        return pb.DeviceInfo(device=name, model=model, mode=DeviceSecurityMode.parse(mode).to_proto())

    async def GetDevice(self, request, context):  # noqa: N802
        """One device's model and security mode (a CAPF schedule's device, a phone's CAPF
        session); NOT_FOUND for a device call control does not know."""
        try:
            name = validate_device_name(request.device)
        except InvalidDeviceName as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        async with self.service.db() as session:
            row = (await session.execute(select(Device.name, Device.model, Device.security_mode)
                                         .where(Device.name == name))).first()
        if row is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"unknown device {name!r}")
        return self._device_info(*row)

    async def ListDevices(self, request, context):  # noqa: N802
        """The devices (or those in the security modes asked for), by name, one page after
        `request.after`: CAPF's CHK-8."""
        try:
            modes = [DeviceSecurityMode.from_proto(m).value for m in request.modes]
        except DomainError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"security modes: {exc}")
        if not 0 <= request.limit <= LIST_DEVICES_MAX:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"limit must be 0 (the default, {LIST_DEVICES_MAX}) to {LIST_DEVICES_MAX}")
        limit = request.limit or LIST_DEVICES_MAX
        query = select(Device.name, Device.model, Device.security_mode).order_by(Device.name)
        if modes:
            query = query.where(Device.security_mode.in_(modes))
        if request.after:
            query = query.where(Device.name > request.after)
        async with self.service.db() as session:
            rows = (await session.execute(query.limit(limit + 1))).all()  # one more: is there a next page?
        return pb.DevicesReply(devices=[self._device_info(*r) for r in rows[:limit]], more=len(rows) > limit)

    async def GetDeviceConfigs(self, request, context):  # noqa: N802
        """tftp-signer's read of what each SEP<MAC>.cnf.xml is built from (device_configs.py):
        the devices named (every one when none), paged, one snapshot."""
        from .device_configs import MAX_NAMES, device_config_pages

        names = list(request.devices) or None
        if names is not None and len(names) > MAX_NAMES:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"at most {MAX_NAMES} devices per request (ask for none: every device)")
        async for page in device_config_pages(self.service.db, names):
            yield page

    # this node's certificate ------------------------------------------------------------------
    async def GetServerCertificate(self, request, context):  # noqa: N802
        """This node's own SCCP/TLS server certificate (ccmserver.cer, CERT-5), `der` in DER as the
        CTL Provider reads it: its CallManager record of this node (AUTH-2, LATER-7)."""
        cc = getattr(self.service, "callcontrol", None)
        cert = cc.loaded_server_certificate if cc is not None else None
        if cert is None:
            await abort(context, grpc.StatusCode.UNAVAILABLE,
                        f"call control on {self.service.node} has not loaded its server certificate yet")
        return common_pb2.Certificate(
            der=cert.public_bytes(serialization.Encoding.DER), serial=format(cert.serial_number, "x"),
            subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
            role=common_pb2.ROLE_CCM, not_before_unix=int(cert.not_valid_before_utc.timestamp()),
            not_after_unix=int(cert.not_valid_after_utc.timestamp()),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(), dns_name=self.service.node)

    # lines ------------------------------------------------------------------------------------
    def _actor(self, context) -> Actor:
        return Actor(name=caller_of(self.service, context), door="grpc",
                     remote=(context.peer() or "")[:64] or None)

    async def _owner(self, context, change):
        """The domain layer's answer, its refusals as gRPC status codes."""
        try:
            return await change
        except OwnerRefused as exc:
            await abort(context, exc.grpc_code, exc.message)

    async def AddLine(self, request, context):  # noqa: N802
        line = await self._owner(context, self.service.domain.add_line(
            self._actor(context), dn=request.dn, device=request.device,
            line_index=request.line_index, label=request.label))
        await self._apply_live()   # the dial plan knows the new number at once
        return pb.Line(dn=line["dn"], device=line["device"], line_index=line["line_index"],
                       label=line["label"])

    async def GetLines(self, request, context):  # noqa: N802
        async with self.service.db() as session:
            rows = await lines_of(session, device=request.device or None, dn=request.dn or None)
        return pb.LinesReply(lines=[pb.Line(dn=r.dn, device=r.device, line_index=r.line_index,
                                            label=r.label) for r in rows])

    # device pools -----------------------------------------------------------------------------
    async def AddDevicePool(self, request, context):  # noqa: N802
        pool = await self._owner(context, self.service.domain.add_pool(
            self._actor(context), name=request.name, cm_group=list(request.cm_group),
            srst=request.srst))
        return pb.DevicePool(name=pool["name"], cm_group=pool["cm_group"], srst=pool["srst"])

    async def GetDevicePools(self, request, context):  # noqa: N802
        async with self.service.db() as session:
            rows = (await session.scalars(select(DevicePool).order_by(DevicePool.name))).all()
        return pb.DevicePoolsReply(pools=[pb.DevicePool(name=r.name, cm_group=r.cm_hosts, srst=r.srst)
                                          for r in rows])

    async def GetSrstDirectory(self, request, context):  # noqa: N802
        from .srst_directory import InvalidRequest, srst_directory

        try:
            cc = self.service.callcontrol
            cluster = await self._cluster(context)
            return await srst_directory(self.service.db, cc.trust if cc is not None else None,
                                        request.host, request.include_default, cluster.mode)
        except InvalidRequest as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def SetDevicePool(self, request, context):  # noqa: N802
        device = await self._owner(context, self.service.domain.set_device_pool(
            self._actor(context), device=request.device, pool=request.pool))
        return pb.SetDevicePoolRequest(device=device["name"], pool=device["device_pool"] or "")
