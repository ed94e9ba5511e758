"""Device resets from the API: one device, every device of a server (RST-9), the whole cluster
(CHK-13), and the progress of a request.

Each request commits one `device.reset` event carrying a request id with its audit row (the domain
layer's `reset_devices`, callmanager's outbox: delivered once NATS acknowledges it). The call-control node that
takes it tracks targeted / reset sent / back; when the API runs inside a callmanager node it is
given that node's registry (`reset_tracker`) and registers the request there before publishing, so
`GET /api/v1/resets/{id}` answers at once.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, Protocol

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import select

from ccmsec.db.devices import Device, as_utc
from ccmsec.db.registry import list_registrations, registered_names
from ccmsec.policy.resets import (
    ALL,
    NoSuchCallControlNode,
    NotACallControlNode,
    ResetDevices,
    ResetDevicesOnServer,
    ResetKind,
    check_reset_server,
    required_actions,
)

from ccmsec.runtime.actions import event_for

from .audit import action_of
from .owner import actor_of_request
from .auth import Principal, require_admin, require_user
from .devices import checked_name
from . import schemas
from .errors import ApiError, body_schema, read_json
from .registrations import NODE_PATTERN

router = APIRouter(tags=["resets"])

MAX_NOT_BACK_LISTED = 1000


class ResetTracker(Protocol):
    """What the API needs of a call-control node's registry (ccmsec_callmanager.registry.Registry)."""

    node: str
    resets: dict

    def track_reset(self, targeted: set[str], request_id: str | None = None): ...


class DeviceResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    kind: Literal["reset", "restart"] = "reset"


class BulkResetRequest(BaseModel):
    """Exactly one of `all: true` (CHK-13) or `server` (RST-9)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    all: StrictBool = False
    server: str | None = Field(None, pattern=NODE_PATTERN)
    kind: Literal["reset", "restart"] = "reset"


def _kind(value: str) -> ResetKind:
    return ResetKind.RESTART if value == "restart" else ResetKind.RESET


async def _start(request: Request, action: ResetDevices, targeted: set[str], *, reason: str,
                 detail: str) -> dict:
    """Register the request with the local tracker, then the domain layer commits its audit row and
    its `device.reset` together (outbox, the same path as gRPC `ResetDevices`); the answer names
    the request and says whether the event was delivered yet."""
    request_id = uuid.uuid4().hex
    tracker: ResetTracker | None = request.app.state.reset_tracker
    if tracker is not None:
        tracker.track_reset(set(targeted), request_id)
    _, _, body = event_for(action, reason, request_id)  # a ResetDevices: one device.reset
    delivery = await request.app.state.domain.reset_devices(
        actor_of_request(request), body["device_reset"], targeted=len(targeted),
        target=request.state.audit_target, action=action_of(request), detail=detail)
    if delivery == "pending" and request.app.state.domain.relay is None:
        # The API run without a service has no outbox: an event not taken now is lost.
        raise ApiError(503, f"the event bus did not take reset request {request_id}; "
                            "no phone was reset (retry)")
    return {"request_id": request_id, "rule": action.rule_id, "kind": action.kind.value,
            "targeted": len(targeted), "delivery": delivery}


@router.post("/api/v1/devices/reset", name="device.reset_many", status_code=202,
             openapi_extra=body_schema(BulkResetRequest), responses={202: {"model": schemas.ResetAccepted}})
async def reset_many(request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Reset every phone in the cluster (`all`, CHK-13) or every phone registered to `server` (RST-9)."""
    body = await read_json(request, BulkResetRequest)
    if body.all == (body.server is not None):
        raise ApiError(422, "give exactly one of \"all\": true or \"server\": NODE")
    if body.server is not None:  # RST-9 names a call-control node: `srst` or a typo reaches no phone
        request.state.audit_target = f"server:{body.server}"   # a refusal's audit row names it too
        try:   # and a node this cluster runs, when its settings say which (CCMSEC_CLUSTER_CALL_CONTROL_NODES)
            check_reset_server(body.server, request.app.state.call_control_nodes)
        except NotACallControlNode as exc:
            raise ApiError(422, str(exc)) from None
        except NoSuchCallControlNode as exc:
            raise ApiError(404, str(exc)) from None
    kind = _kind(body.kind)
    async with request.app.state.sessionmaker() as session:
        targeted = set(await registered_names(session, node=body.server))  # names only (10,000 rows)
    if body.all:
        request.state.audit_target = "all"
        action = ResetDevices(ALL, kind, "CHK-13")
        reason = "reset every phone in the cluster"
    else:
        request.state.audit_target = f"server:{body.server}"
        (policy,) = required_actions(ResetDevicesOnServer(body.server))
        action = ResetDevices(policy.devices, kind, policy.rule_id)  # RST-9, kind as asked
        reason = f"Reset Devices on {body.server}"
    return await _start(request, action, targeted, reason=reason,
                        detail=f"{kind.value} {request.state.audit_target}")


@router.post("/api/v1/devices/{name}/reset", name="device.reset", status_code=202,
             openapi_extra=body_schema(DeviceResetRequest), responses={202: {"model": schemas.DeviceResetAccepted}})
async def reset_device(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Reset (SCCP Reset type 1) or restart (type 2) one phone."""
    name = checked_name(name)
    request.state.audit_target = name
    body = await read_json(request, DeviceResetRequest)
    async with request.app.state.sessionmaker() as session:
        if await session.scalar(select(Device.id).where(Device.name == name)) is None:
            raise ApiError(404, f"no device named {name}")
        registered = bool(await list_registrations(session, device=name))
    kind = _kind(body.kind)
    answer = await _start(request, ResetDevices((name,), kind, "manual"),
                          {name} if registered else set(), reason="administrator reset",
                          detail=f"{kind.value} {name}")
    return {**answer, "device": name, "registered": registered}


@router.get("/api/v1/resets/{request_id}", name="reset.progress", responses={200: {"model": schemas.ResetProgress}})
async def reset_progress(request_id: str, request: Request, _: Principal = Depends(require_user)) -> dict:
    """Targeted, reset sent, back (re-registered since), and which devices are not back yet."""
    if len(request_id) != 32 or any(c not in "0123456789abcdef" for c in request_id):
        raise ApiError(422, "request id must be 32 lowercase hex digits")
    tracker: ResetTracker | None = request.app.state.reset_tracker
    if tracker is None:
        raise ApiError(503, "reset progress is tracked by a call-control node; none serves this API")
    progress = tracker.resets.get(request_id)
    if progress is None:
        raise ApiError(404, f"no reset request {request_id} on {tracker.node} "
                            "(unknown, or too old and forgotten)")
    if progress.targeted - progress.back:
        # Devices registered on other nodes count as back once their row is newer than the request.
        async with request.app.state.sessionmaker() as session:
            rows = await list_registrations(session, except_node=tracker.node)
        for row in rows:
            if (row.device in progress.targeted and row.node != tracker.node
                    and as_utc(row.since).timestamp() >= progress.started):
                progress.back.add(row.device)
    not_back = progress.not_back
    return {"request_id": request_id, "targeted": len(progress.targeted),
            "reset_sent": len(progress.sent), "back": len(progress.back & progress.targeted),
            "not_back": not_back[:MAX_NOT_BACK_LISTED], "not_back_total": len(not_back),
            "complete": progress.complete, "age_seconds": round(time.time() - progress.started, 1)}
