"""Callmanager's one write path for devices, lines, device pools, resets and extension-mobility
users and logins (issue 9 §4, §5).

callmanager owns devices, lines and pools; every door that changes them — the gRPC servicer
(`CallManager/AddLine`, `AddDevicePool`, `SetDevicePool`, `ResetDevices`), the HTTPS administration
API (`PATCH /api/v1/devices/{name}`: `ccmsec device set-security`, `harden`; lines, pools) and,
through either, the command line — calls this layer, which does the same steps whatever the door:

    validate  (ccmsec/db/lines.py, ccmsec/db/devices.py validators; existence; DEV-3, MODE-5)
    write     (one transaction)
    audit     (an `audit_log` row in that same transaction: actor, action, target, detail)
    publish   (the events the change requires — `config.changed`, the RST-* resets — written to the
               outbox in that same transaction, then relayed; ccmsec/runtime/outbox.py)

So a change and its events commit together: a refused or rolled-back change sends nothing, and a
committed one is answered `delivery: "sent"` once JetStream acknowledged its events, or
`delivery: "pending"` when NATS is down — its events then go out as soon as NATS is back.
A refusal is an `OwnerRefused` with a kind each door maps to its own status (HTTP or gRPC).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

import grpc
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from ccmsec.db.admin import AuditEntry
from ccmsec.db.devices import (
    HARDENING_FIELDS, Device, InvalidDeviceName, validate_description, validate_device_name,
)
from ccmsec.db.lines import (
    MAX_LINES_PER_DEVICE,
    DevicePool,
    InvalidLineOrPool,
    Line,
    validate_cm_group,
    validate_dn,
    validate_line_label,
    validate_pool_name,
)
from ccmsec.policy.devices import PolicyViolation, check_device_security, check_web_server_disable
from ccmsec.policy.resets import DeviceSecurityModeChanged, HardeningChanged, required_actions
from ccmsec.runtime.actions import event_bodies
from ccmsec.runtime.outbox import DELIVERY_WAIT, OutboxRelay, stage
from ccmsec_proto import events_pb2

from .cluster_state import ClusterState, ClusterStateFollower, ClusterStateUnknown
from ccmsec.textsafe import UnsafeText, shown

log = logging.getLogger("ccmsec.callmanager.domain")

_MAX_DETAIL = 1000

# Publish(kind, target, payload) — the API's EventPublisher shape (`admin/events.py`).
Publish = Callable[[str, "str | None", dict], Awaitable[None]]


@dataclass(frozen=True)
class Actor:
    """Who asks: an administrator's user name (admin API) or a caller's `role/node` (gRPC)."""

    name: str | None
    door: str  # "admin-api" | "grpc"
    remote: str | None = None


class OwnerRefused(Exception):
    """A change refused before anything was written; `kind` picks each door's status."""

    HTTP = {"invalid": 422, "not_found": 404, "conflict": 409, "exhausted": 409, "stale": 409,
            "precondition": 409, "unavailable": 503}
    GRPC = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
            "conflict": grpc.StatusCode.ALREADY_EXISTS,
            "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED, "stale": grpc.StatusCode.ABORTED,
            "precondition": grpc.StatusCode.FAILED_PRECONDITION, "unavailable": grpc.StatusCode.UNAVAILABLE}

    def __init__(self, kind: str, message: str, rule: str | None = None):
        super().__init__(message)
        self.kind, self.message, self.rule = kind, message, rule

    @property
    def http_status(self) -> int:
        return self.HTTP[self.kind]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return self.GRPC[self.kind]


def audit_entry(actor: Actor, *, action: str, target: str | None, status: int, detail: str = "",
                rule: str | None = None) -> AuditEntry:
    """The audit row of a successful change; the door shows in `detail` when it was not the API."""
    if actor.door != "admin-api":
        detail = f"{detail} (via {actor.door})".strip()
    return AuditEntry(actor=(actor.name or None) and actor.name[:64], action=action[:64],
                      target=None if target is None else target[:128], outcome="ok", status=status,
                      rule=rule, detail=detail[:_MAX_DETAIL], remote=actor.remote and actor.remote[:64])


def merge_resets(actions) -> list:
    """Resets of the same devices with the same kind become one action naming all their rules: one
    request that changes, say, the security mode and a hardening setting (RST-1 and RST-2) resets
    the phone once, not twice in a row."""
    from ccmsec.policy.resets import ResetDevices

    out: list = []
    for action in actions:
        if isinstance(action, ResetDevices):
            for i, earlier in enumerate(out):
                if (isinstance(earlier, ResetDevices) and earlier.devices == action.devices
                        and earlier.kind == action.kind):
                    rules = earlier.rule_id.split(",")
                    if action.rule_id not in rules:
                        out[i] = ResetDevices(earlier.devices, earlier.kind,
                                              ",".join([*rules, action.rule_id]))
                    break
            else:
                out.append(action)
        else:
            out.append(action)
    return out


def device_change_actions(name: str, changed: dict) -> list:
    """What the policy requires for these changed fields of one device (RST-1, RST-2)."""
    actions = []
    if "security_mode" in changed:
        actions += required_actions(DeviceSecurityModeChanged(name))
    if any(k in HARDENING_FIELDS for k in changed):
        actions += required_actions(HardeningChanged(name))
    return actions


class _Events:
    """The events of one change: staged in its transaction (outbox), or — with no relay (the API
    run without a service, in tests) — kept to be published right after the commit."""

    def __init__(self, domain: "CallManagerDomain", session):
        self.domain, self.session = domain, session
        self.ids: list[str] = []
        self.direct: list[tuple[str, str | None, dict]] = []

    def add(self, kind: str, target: str | None, payload: dict) -> None:
        if self.domain.relay is not None:
            self.ids.append(stage(self.session, self.domain.origin, kind, target, **payload).id)
        else:
            self.direct.append((kind, target, payload))

    def actions(self, actions, *, reason: str, request_id: str = "") -> None:
        for kind, target, body in event_bodies(merge_resets(actions), reason=reason,
                                               request_id=request_id):
            self.add(kind, target, body)

    def config_changed(self, devices, what: str) -> None:
        devices = sorted(set(devices))
        if devices:
            self.add("config.changed", None,
                     {"config_changed": events_pb2.ConfigChanged(devices=devices, what=what)})


@dataclass
class MobilityRestart:
    """The restart a mobility login/logout requires (DEV-2): one `device.reset` of kind restart,
    staged with the login. `prepare(device, request_id)` runs inside the transaction, before the
    commit — so before the relay can send the event — to make call control forget its directory
    and track the request (the phone must find its new lines when it registers again)."""

    request_id: str
    prepare: Callable[[str, str], None] | None = None

    def stage(self, events: "_Events", device: str, reason: str) -> None:
        if self.prepare is not None:
            self.prepare(device, self.request_id)
        events.add("device.reset", None, {"device_reset": events_pb2.DeviceReset(
            devices=[device], kind=events_pb2.RESTART, rule="DEV-2", reason=reason,
            request_id=self.request_id)})


class CallManagerDomain:
    def __init__(self, db, publish: Publish, *, relay: OutboxRelay | None = None, origin: str = "",
                 delivery_wait: float = DELIVERY_WAIT, cluster_state: ClusterStateFollower | None = None):
        self.db = db
        # MODE-5 checks use the CTL Provider's mode and CTL (alone: MODE-1, non-secure, no CTL)
        self.cluster_state = cluster_state or ClusterStateFollower.fixed()
        self._publish = publish
        self.relay = relay
        self.origin = origin
        self.delivery_wait = delivery_wait

    async def _deliver(self, events: _Events, about: str) -> str:
        """"sent" once every event of the change is acknowledged, else "pending" (delivered later
        by the relay; without one, the failure is audited)."""
        if self.relay is not None:
            if await self.relay.wait_sent(events.ids, self.delivery_wait):
                return "sent"
            log.warning("change committed, its events pending delivery", extra={
                "about": about, "events": len(events.ids)})
            return "pending"
        ok = True
        for kind, target, payload in events.direct:
            try:
                await self._publish(kind, target, payload)
            except Exception as exc:  # no outbox here: the failure is at least audited
                ok = False
                log.exception("could not publish %s for %s", kind, about)
                async with self.db() as session, session.begin():
                    session.add(AuditEntry(actor=None, action="event.publish", target=about[:128],
                                           outcome="error", status=500,
                                           detail=f"{kind} not published: {exc!r}"[:_MAX_DETAIL]))
        return "sent" if ok else "pending"

    def events(self, session) -> _Events:
        """The events of a change made in `session` by another part of callmanager (admin API
        routes): staged there, in the change's transaction; `deliver` after the commit."""
        return _Events(self, session)

    async def cluster_now(self) -> ClusterState:
        """The CTL Provider's mode and CTL for a MODE-5 check; refused (503 / UNAVAILABLE) while
        it never answered, before anything is written."""
        try:
            return await self.cluster_state.current()
        except ClusterStateUnknown as exc:
            raise OwnerRefused("unavailable", str(exc)) from None

    async def deliver(self, events: _Events, about: str) -> str:
        return await self._deliver(events, about)

    # devices ----------------------------------------------------------------------------------
    async def update_device(self, actor: Actor, name: str, wanted: dict) -> dict:
        """Change fields of one device (security mode: RST-1; hardening: RST-2; description, pool).
        Unchanged values: nothing written, audited or sent."""
        try:
            name = validate_device_name(name)
        except InvalidDeviceName as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        if "description" in wanted:  # whichever door: refused before anything is read or written
            try:
                validate_description(wanted["description"])
            except UnsafeText as exc:
                raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            device = await session.scalar(select(Device).where(Device.name == name))
            if device is None:
                raise OwnerRefused("not_found", f"no device named {name}")
            changed = {k: v for k, v in wanted.items() if getattr(device, k) != v}
            if not changed:
                return {**device.to_dict(), "delivery": "sent"}
            pool = changed.get("device_pool")
            if pool is not None and await session.get(DevicePool, pool) is None:
                raise OwnerRefused("not_found", f"no device pool named {pool}")  # as SetDevicePool
            cluster = await self.cluster_now()
            try:
                check_device_security(device.model, changed.get("security_mode", device.security_mode),
                                      cluster.mode, cluster.ctl_present)
                if not changed.get("web_access", device.web_access):
                    check_web_server_disable(device.model)
            except PolicyViolation as exc:
                # DEV-3 is about what the model can do; MODE-5 about the cluster's state.
                raise OwnerRefused("invalid" if exc.rule_id == "DEV-3" else "precondition",
                                   exc.reason, rule=exc.rule_id) from None
            before = {k: getattr(device, k) for k in changed}
            for key, value in changed.items():
                setattr(device, key, value)
            session.add(audit_entry(actor, action="device.update", target=name, status=200,
                                    detail="; ".join(f"{k}: {before[k]!r} -> {v!r}"
                                                     for k, v in changed.items())))
            events = _Events(self, session)
            events.config_changed([name], "updated:" + ",".join(sorted(changed)))
            events.actions(device_change_actions(name, changed),
                           reason=f"{name}: {', '.join(sorted(changed))} changed")
            try:
                await session.flush()  # bumps config_version, or finds a concurrent writer
            except StaleDataError:
                raise OwnerRefused("stale", f"device {name} was changed by someone else at the same "
                                            "time; read it again and retry") from None
            result = device.to_dict()
            await session.commit()
        return {**result, "delivery": await self._deliver(events, name)}

    # resets -----------------------------------------------------------------------------------
    async def reset_devices(self, actor: Actor, body: events_pb2.DeviceReset, *, targeted: int,
                            target: str, action: str = "device.reset", detail: str = "") -> str:
        """One `device.reset` (its request id already tracked), audited; returns the delivery.
        `action`: the audit action (the API names its route: device.reset, device.reset_many)."""
        async with self.db() as session, session.begin():
            events = _Events(self, session)
            events.add("device.reset", None, {"device_reset": body})
            session.add(audit_entry(actor, action=action, target=target, status=202,
                                    rule=body.rule[:16] or None,
                                    detail=f"{detail or body.reason}; request {body.request_id}; "
                                           f"{targeted} registered"))
        return await self._deliver(events, target)

    # lines ------------------------------------------------------------------------------------
    async def add_line(self, actor: Actor, *, dn: str, device: str, line_index: int = 0,
                       label: str = "") -> dict:
        try:
            dn, device = validate_dn(dn), validate_device_name(device)
        except (InvalidLineOrPool, InvalidDeviceName) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        if not 0 <= line_index <= MAX_LINES_PER_DEVICE:
            raise OwnerRefused("invalid", f"line index must be 1..{MAX_LINES_PER_DEVICE} (0: next free)")
        try:
            label = validate_line_label(label)  # printable ASCII: the phone's LineStat (Skinny)
        except UnsafeText as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            if await session.scalar(select(Device.id).where(Device.name == device)) is None:
                raise OwnerRefused("not_found", f"no device named {device}")
            index = line_index or 1 + await session.scalar(
                select(func.coalesce(func.max(Line.line_index), 0)).where(Line.device == device))
            if index > MAX_LINES_PER_DEVICE:
                raise OwnerRefused("exhausted", f"{device} has no free line button "
                                                f"(max {MAX_LINES_PER_DEVICE})")
            line = Line(dn=dn, device=device, line_index=index, label=label)
            session.add(line)
            session.add(audit_entry(actor, action="line.create", target=device, status=201,
                                    detail=f"dn={dn} line {index}"))
            events = _Events(self, session)
            events.config_changed([device], "line")
            try:
                await session.flush()
            except IntegrityError:
                raise OwnerRefused("conflict", f"{device} already has directory number {dn} "
                                               f"or line {index}") from None
            result = line.to_dict()
            await session.commit()
        return {**result, "delivery": await self._deliver(events, device)}

    # device pools -----------------------------------------------------------------------------
    async def add_pool(self, actor: Actor, *, name: str, cm_group: list[str], srst: str = "") -> dict:
        try:
            name = validate_pool_name(name)
            hosts = validate_cm_group(list(cm_group))
            if srst:
                validate_cm_group([srst])  # same host syntax as a CallManager
        except InvalidLineOrPool as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            pool = DevicePool(name=name, cm_group=",".join(hosts), srst=srst)
            session.add(pool)
            session.add(audit_entry(actor, action="pool.create", target=name, status=201,
                                    detail=f"cm_group={','.join(hosts)} srst={srst!r}"))
            try:
                await session.flush()
            except IntegrityError:
                raise OwnerRefused("conflict", f"device pool {name} already exists") from None
            result = pool.to_dict()
            await session.commit()
        return result  # a new pool has no devices yet: nothing to announce

    async def set_device_pool(self, actor: Actor, *, device: str, pool: str | None) -> dict:
        """Put a device in a pool (None: in none). Unchanged: nothing written, audited or sent."""
        try:
            device = validate_device_name(device)
            pool = None if pool is None else validate_pool_name(pool)
        except (InvalidLineOrPool, InvalidDeviceName) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            if pool is not None and await session.get(DevicePool, pool) is None:
                raise OwnerRefused("not_found", f"no device pool named {pool}")
            row = await session.scalar(select(Device).where(Device.name == device))
            if row is None:
                raise OwnerRefused("not_found", f"no device named {device}")
            before = row.device_pool
            if before == pool:
                return {**row.to_dict(), "delivery": "sent"}
            row.device_pool = pool
            session.add(audit_entry(actor, action="device.set_pool", target=device, status=200,
                                    detail=f"device_pool: {before!r} -> {pool!r}"))
            events = _Events(self, session)
            # the phone's configuration file lists its CallManager group and SRST
            events.config_changed([device], "device_pool")
            try:
                await session.flush()  # bumps config_version, or finds a concurrent writer
            except StaleDataError:
                raise OwnerRefused("stale", f"device {device} was changed by someone else at the "
                                               "same time; retry") from None
            result = row.to_dict()
            await session.commit()
        return {**result, "delivery": await self._deliver(events, device)}


    # extension mobility (DEV-2) ---------------------------------------------------------------
    async def add_mobility_user(self, actor: Actor, *, user_id: str, dn: str, display_name: str = "",
                                label: str = "") -> dict:
        from ccmsec.db import calls as calls_db

        try:
            user = calls_db.validate_name("user", user_id)
            dn = calls_db.validate_number(dn)
            display_name = calls_db.validate_label(display_name, field="display_name")
            label = calls_db.validate_label(label)
        except calls_db.InvalidCallConfig as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            if await session.get(calls_db.MobilityUser, user) is not None:
                raise OwnerRefused("conflict", f"user {user} exists")
            session.add(calls_db.MobilityUser(user_id=user, display_name=display_name, dn=dn, label=label))
            session.add(audit_entry(actor, action="mobility_user.create", target=user, status=201,
                                    detail=f"dn={dn}", rule="DEV-2"))
            try:
                await session.commit()
            except IntegrityError:
                raise OwnerRefused("conflict", f"user {user} exists") from None
        return {"user_id": user, "display_name": display_name, "dn": dn, "label": label}

    async def mobility_login(self, actor: Actor, *, device: str, user_id: str,
                             restart: "MobilityRestart | None" = None) -> dict:
        """Store the login (one user per device, one device per user) and, with `restart`, the
        device's restart (DEV-2) in the same transaction: it registers again with the user's line."""
        from ccmsec.db import calls as calls_db

        try:
            device = validate_device_name(device)
            user = calls_db.validate_name("user", user_id)
        except (InvalidDeviceName, calls_db.InvalidCallConfig) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            if await session.scalar(select(Device.id).where(Device.name == device)) is None:
                raise OwnerRefused("not_found", f"no device named {device}")
            row = await session.get(calls_db.MobilityUser, user)
            if row is None:
                raise OwnerRefused("not_found", f"no extension-mobility user {user}")
            current = await session.get(calls_db.MobilityLogin, device)
            if current is not None:
                raise OwnerRefused("precondition", f"{current.user_id} is logged in to {device}; log out first")
            elsewhere = await session.scalar(select(calls_db.MobilityLogin.device)
                                             .where(calls_db.MobilityLogin.user_id == user))
            if elsewhere is not None:
                raise OwnerRefused("precondition", f"{user} is logged in to {elsewhere}; log out there first")
            session.add(calls_db.MobilityLogin(device=device, user_id=user))
            session.add(audit_entry(actor, action="mobility.login", target=device, status=200,
                                    detail=f"user={user} dn={row.dn}", rule="DEV-2"))
            dn = row.dn
            events = _Events(self, session)
            if restart is not None:
                restart.stage(events, device, f"extension mobility: {user} logged in")
            try:
                await session.commit()
            except IntegrityError:   # a concurrent login won: nothing changed here
                raise OwnerRefused("precondition", f"{user} or {device} was just taken by another "
                                                   "login; try again") from None
        delivery = await self._deliver(events, device)
        return {"device": device, "user_id": user, "dn": dn, "delivery": delivery}

    async def mobility_logout(self, actor: Actor, *, device: str,
                              restart: "MobilityRestart | None" = None) -> dict:
        from ccmsec.db import calls as calls_db

        try:
            device = validate_device_name(device)
        except InvalidDeviceName as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            current = await session.get(calls_db.MobilityLogin, device)
            if current is None:
                raise OwnerRefused("precondition", f"nobody is logged in to {device}")
            user = current.user_id
            await session.delete(current)
            session.add(audit_entry(actor, action="mobility.logout", target=device, status=200,
                                    detail=f"user={user}", rule="DEV-2"))
            events = _Events(self, session)
            if restart is not None:
                restart.stage(events, device, f"extension mobility: {user} logged out")
            await session.commit()
        delivery = await self._deliver(events, device)
        return {"device": device, "user_id": user, "delivery": delivery}


    # call routing: speed dials, call forward busy / no answer, codec regions (CALL-9) ---------
    # Each publishes config.changed; call control follows it and the change applies to the next
    # call of the phones registered now (CallControl.apply_routing_change).
    async def set_speed_dial(self, actor: Actor, *, device: str, index: int, number: str,
                             label: str = "") -> dict:
        """Speed dial button `index` (1..42) of `device`; an empty number removes it."""
        from ccmsec.db import calls as calls_db

        try:
            device = validate_device_name(device)
            number = calls_db.validate_number(number) if number else ""
            label = calls_db.validate_label(label)
        except (InvalidDeviceName, calls_db.InvalidCallConfig) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        if not 1 <= index <= calls_db.MAX_SPEED_DIALS:
            raise OwnerRefused("invalid", f"speed dial index must be 1..{calls_db.MAX_SPEED_DIALS}")
        async with self.db() as session:
            if await session.scalar(select(Device.id).where(Device.name == device)) is None:
                raise OwnerRefused("not_found", f"no device named {device}")
            row = await session.scalar(select(calls_db.SpeedDial).where(
                calls_db.SpeedDial.device == device, calls_db.SpeedDial.idx == index))
            if not number:
                if row is None:
                    raise OwnerRefused("not_found", f"{device} has no speed dial {index}")
                await session.delete(row)
            elif row is None:
                session.add(calls_db.SpeedDial(device=device, idx=index, number=number, label=label))
            else:
                row.number, row.label = number, label
            session.add(audit_entry(actor, action="speed_dial.set", target=device, status=200,
                                    detail=f"{index}={number or 'removed'}"))
            events = _Events(self, session)
            events.config_changed([device], "speed_dial")  # committed with the change (outbox)
            await session.commit()
        delivery = await self._deliver(events, device)
        return {"device": device, "index": index, "number": number, "label": label, "delivery": delivery}

    async def set_line_forward(self, actor: Actor, *, dn: str, busy: str = "", no_answer: str = "") -> dict:
        """Call forward busy / no answer of a directory number; both empty removes them."""
        from ccmsec.db import calls as calls_db

        try:
            dn = validate_dn(dn)
            busy = calls_db.validate_number(busy) if busy else ""
            no_answer = calls_db.validate_number(no_answer) if no_answer else ""
        except (InvalidLineOrPool, calls_db.InvalidCallConfig) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        if dn in (busy, no_answer):
            raise OwnerRefused("invalid", f"{dn} cannot forward to itself")
        async with self.db() as session:
            devices = list((await session.scalars(select(Line.device).where(Line.dn == dn))).all())
            if not devices:
                raise OwnerRefused("not_found", f"no line has directory number {dn}")
            row = await session.get(calls_db.LineForward, dn)
            if not busy and not no_answer:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(calls_db.LineForward(dn=dn, forward_busy=busy, forward_no_answer=no_answer))
            else:
                row.forward_busy, row.forward_no_answer = busy, no_answer
            session.add(audit_entry(actor, action="line_forward.set", target=dn, status=200,
                                    detail=f"busy={busy or '-'} no_answer={no_answer or '-'}"))
            events = _Events(self, session)
            events.config_changed(devices, "line_forward")  # committed with the change (outbox)
            await session.commit()
        delivery = await self._deliver(events, dn)
        return {"dn": dn, "busy": busy, "no_answer": no_answer, "devices": devices, "delivery": delivery}

    async def set_region(self, actor: Actor, *, name: str, wideband: bool) -> dict:
        """Create or change a codec region (CALL-9: whether the wideband codec may be used)."""
        from ccmsec.db import calls as calls_db

        try:
            name = calls_db.validate_name("region", name)
        except calls_db.InvalidCallConfig as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            row = await session.get(calls_db.Region, name)
            if row is None:
                session.add(calls_db.Region(name=name, wideband=wideband))
            else:
                row.wideband = wideband
            devices = list((await session.scalars(select(calls_db.DeviceRegion.device)
                                                  .where(calls_db.DeviceRegion.region == name))).all())
            session.add(audit_entry(actor, action="region.set", target=name, status=200,
                                    detail=f"wideband={'yes' if wideband else 'no'}", rule="CALL-9"))
            events = _Events(self, session)
            events.config_changed(devices, "region")  # committed with the change (outbox)
            await session.commit()
        delivery = await self._deliver(events, name)
        return {"name": name, "wideband": wideband, "devices": devices, "delivery": delivery}

    async def set_device_region(self, actor: Actor, *, device: str, region: str) -> dict:
        """Put a device in a region ("" takes it out: no wideband codec)."""
        from ccmsec.db import calls as calls_db

        try:
            device = validate_device_name(device)
            region = calls_db.validate_name("region", region) if region else ""
        except (InvalidDeviceName, calls_db.InvalidCallConfig) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            if await session.scalar(select(Device.id).where(Device.name == device)) is None:
                raise OwnerRefused("not_found", f"no device named {device}")
            if region and await session.get(calls_db.Region, region) is None:
                raise OwnerRefused("not_found", f"no region named {region}")
            row = await session.get(calls_db.DeviceRegion, device)
            if not region:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(calls_db.DeviceRegion(device=device, region=region))
            else:
                row.region = region
            session.add(audit_entry(actor, action="device_region.set", target=device, status=200,
                                    detail=f"region={region or '-'}", rule="CALL-9"))
            events = _Events(self, session)
            events.config_changed([device], "region")  # committed with the change (outbox)
            await session.commit()
        delivery = await self._deliver(events, device)
        return {"device": device, "region": region, "delivery": delivery}

    # softkey sets (issue 10): what a device's display offers --------------------------------
    async def set_softkey_set(self, actor: Actor, *, device: str = "", pool: str = "",
                              softkey_set: str = "") -> dict:
        """The named softkey set of one device or of a device pool's devices ("" removes the
        assignment: the pool's, else "standard"). Phones get it at their next registration (the
        display is built then, as on a real CallManager); `devices` names the ones concerned."""
        from ccmsec.calls.setup import SOFTKEY_SETS
        from ccmsec.db import calls as calls_db

        if bool(device) == bool(pool):
            raise OwnerRefused("invalid", "name exactly one device or one device pool")
        if softkey_set and softkey_set not in SOFTKEY_SETS:
            raise OwnerRefused("invalid", f"unknown softkey set '{shown(softkey_set)}' "
                                          f"(known: {', '.join(sorted(SOFTKEY_SETS))})")
        try:
            target = validate_device_name(device) if device else validate_pool_name(pool)
        except (InvalidDeviceName, InvalidLineOrPool) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        model, key = (calls_db.DeviceSoftkeys, "device") if device else (calls_db.PoolSoftkeys, "pool")
        async with self.db() as session:
            if device:
                if await session.scalar(select(Device.id).where(Device.name == target)) is None:
                    raise OwnerRefused("not_found", f"no device named {target}")
                devices = [target]
            else:
                if await session.get(DevicePool, target) is None:
                    raise OwnerRefused("not_found", f"no device pool named {target}")
                devices = list((await session.scalars(
                    select(Device.name).where(Device.device_pool == target))).all())
            row = await session.get(model, target)
            if not softkey_set:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                session.add(model(**{key: target, "softkey_set": softkey_set}))
            else:
                row.softkey_set = softkey_set
            session.add(audit_entry(actor, action="softkey_set.set", target=target, status=200,
                                    detail=f"{key} softkeys={softkey_set or '-'}"))
            events = _Events(self, session)
            events.config_changed(devices, "softkeys")  # committed with the change (outbox)
            await session.commit()
        await self._deliver(events, target)
        return {key: target, "softkey_set": softkey_set, "devices": devices}

    async def set_mobility_pin(self, actor: Actor, *, user_id: str, pin: str) -> dict:
        """The PIN the user types at a phone to log in (4-16 digits), kept as an argon2 hash; the
        audit row never holds it."""
        import asyncio

        from ccmsec.db import calls as calls_db
        from ccmsec_callmanager.phone_mobility import hash_pin

        try:
            user = calls_db.validate_name("user", user_id)
            hashed = await asyncio.to_thread(hash_pin, pin)
        except (calls_db.InvalidCallConfig, ValueError) as exc:
            raise OwnerRefused("invalid", str(exc)) from None
        async with self.db() as session:
            row = await session.get(calls_db.MobilityUser, user)
            if row is None:
                raise OwnerRefused("not_found", f"no extension-mobility user {user}")
            row.pin_hash = hashed
            session.add(audit_entry(actor, action="mobility_user.pin", target=user, status=200,
                                    detail="PIN set", rule="DEV-2"))
            await session.commit()
            return {"user_id": user, "display_name": row.display_name, "dn": row.dn, "label": row.label}
