"""/api/v1/devices: create, list, show, change (security mode, hardening) and delete phones.

Each successful change bumps the device's config_version, is audited in the same transaction,
and is announced: `config.changed` always, then exactly the resets
`ccmsec.policy.resets.required_actions` returns for it (RST-1 security mode, RST-2 hardening).
Changing a device goes through callmanager's one write path (`ccmsec_callmanager/domain.py`),
whose events are committed with the change (outbox).
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ccmsec.db.devices import (
    HARDENING_FIELDS,
    Device,
    MAX_DESCRIPTION,
    InvalidDeviceName,
    validate_description,
    validate_device_name,
)
from ccmsec.textsafe import UnsafeText

from ccmsec.db.lines import DevicePool
from ccmsec.domain import DeviceSecurityMode

from ccmsec_callmanager.domain import OwnerRefused
from ccmsec_callmanager.domain import device_change_actions  # noqa: F401  (the one definition)

from .audit import new_entry
from .owner import actor_of_request, owner_call
from .auth import Principal, require_admin, require_user
from .device_rules import RuleViolation, check_device_change
from . import schemas
from .errors import ApiError, body_schema, read_json
from .pagination import cursor_query, decode_cursor, limit_query, page

log = logging.getLogger(__name__)

Model = Literal["7970", "7960", "7940", "7912", "7910", "7905G", "7902"]
SecurityMode = Literal[DeviceSecurityMode.choices()]  # type: ignore[valid-type]
_POOL_PATTERN = r"^[A-Za-z0-9 _.-]{1,64}$"
_DESCRIPTION = "ordinary text of any script; no control or format characters (newline, ESC, NUL, bidi overrides)"


def checked_free_text(check, value: str) -> str:
    """A free-text field through its one check (`ccmsec.textsafe.checked_text` via the db
    validator): refused as a 422 whose detail is `field: why` (the field named once)."""
    try:
        return check(value)
    except UnsafeText as exc:
        raise PydanticCustomError("unsafe_text", exc.reason) from None


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(max_length=64, description="SEP + 12 uppercase hex digits, or [A-Za-z0-9_-]{1,15}")
    model: Model
    security_mode: SecurityMode = DeviceSecurityMode.NON_SECURE.value
    description: str = Field("", max_length=MAX_DESCRIPTION, description=_DESCRIPTION)
    device_pool: str | None = Field(None, pattern=_POOL_PATTERN)
    web_access: StrictBool = True
    pc_port: StrictBool = True
    settings_access: StrictBool = True
    garp: StrictBool = True
    voice_vlan_access: StrictBool = True
    span_to_pc_port: StrictBool = False

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_device_name(value)

    @field_validator("description")
    @classmethod
    def _valid_description(cls, value: str) -> str:
        return checked_free_text(validate_description, value)


class DevicePatch(BaseModel):
    """Only the fields present change; null is accepted only for device_pool (clears it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # Defaults are not validated, so omitted fields stay None while an explicit null is refused.
    security_mode: SecurityMode = None  # type: ignore[assignment]
    description: str = Field(None, max_length=MAX_DESCRIPTION,  # type: ignore[assignment]
                             description=_DESCRIPTION)
    device_pool: str | None = Field(None, pattern=_POOL_PATTERN)
    web_access: StrictBool = None  # type: ignore[assignment]
    pc_port: StrictBool = None  # type: ignore[assignment]
    settings_access: StrictBool = None  # type: ignore[assignment]
    garp: StrictBool = None  # type: ignore[assignment]
    voice_vlan_access: StrictBool = None  # type: ignore[assignment]
    span_to_pc_port: StrictBool = None  # type: ignore[assignment]

    @field_validator("description")
    @classmethod
    def _valid_description(cls, value: str) -> str:
        return checked_free_text(validate_description, value)


router = APIRouter(tags=["devices"])


def checked_name(name: str) -> str:
    try:
        return validate_device_name(name)
    except InvalidDeviceName as exc:
        raise ApiError(422, str(exc)) from None


async def _check_rules(request: Request, model: str, mode: str, web_access: bool) -> None:
    # MODE-5 against the CTL Provider's mode and CTL (the domain follows them; 503 before it answered)
    try:
        cluster = await request.app.state.domain.cluster_now()
    except OwnerRefused as exc:
        raise ApiError(exc.http_status, exc.message) from None
    try:
        check_device_change(model, mode, web_access=web_access,
                            cluster_mode=cluster.mode, ctl_exists=cluster.ctl_present)
    except RuleViolation as exc:
        # DEV-3 is about what the model can do (422); MODE-5 about the cluster's state (409).
        raise ApiError(422 if exc.rule == "DEV-3" else 409, exc.reason, rule=exc.rule) from None


@router.post("/api/v1/devices", name="device.create", status_code=201,
             openapi_extra=body_schema(DeviceCreate), responses={201: {"model": schemas.Device}})
async def create_device(request: Request, _: Principal = Depends(require_admin)) -> dict:
    body = await read_json(request, DeviceCreate)
    request.state.audit_target = body.name
    async with request.app.state.sessionmaker() as session:
        await _check_rules(request, body.model, body.security_mode, body.web_access)
        if body.device_pool is not None and await session.get(DevicePool, body.device_pool) is None:
            # as PUT /devices/{name}/pool: a device never names a pool that does not exist
            raise ApiError(404, f"no device pool named {body.device_pool}")
        device = Device(**body.model_dump())
        session.add(device)
        session.add(new_entry(request, status=201,
                              detail=f"model={body.model} security_mode={body.security_mode}"))
        try:
            await session.flush()  # defaults and config_version are filled in here
        except IntegrityError:
            raise ApiError(409, f"device {body.name} already exists") from None
        result = device.to_dict()
        events = request.app.state.domain.events(session)  # committed with the device (outbox)
        events.config_changed([body.name], "created")
        await session.commit()
    await request.app.state.domain.deliver(events, body.name)
    return result


@router.get("/api/v1/devices", name="device.list", responses={200: {"model": schemas.DeviceList}})
async def list_devices(
    request: Request,
    _: Principal = Depends(require_user),
    limit: int = limit_query(),
    cursor: str | None = cursor_query(),
    offset: int = Query(0, ge=0, le=10_000_000, deprecated=True,
                        description="skip this many devices (use `cursor` instead)"),
) -> dict:
    """By name. Page with `cursor` (`next_cursor` of the previous answer)."""
    after = decode_cursor(cursor, str)
    query = select(Device).order_by(Device.name).limit(limit + 1).offset(offset)
    if after is not None:
        query = query.where(Device.name > after[0])
    async with request.app.state.sessionmaker() as session:
        total = await session.scalar(select(func.count()).select_from(Device))
        rows, next_cursor = page((await session.scalars(query)).all(), limit, lambda d: (d.name,))
    return {"devices": [row.to_dict() for row in rows], "total": total, "next_cursor": next_cursor}


@router.get("/api/v1/devices/{name}", name="device.show", responses={200: {"model": schemas.Device}})
async def show_device(name: str, request: Request, _: Principal = Depends(require_user)) -> dict:
    name = checked_name(name)
    async with request.app.state.sessionmaker() as session:
        device = await session.scalar(select(Device).where(Device.name == name))
        if device is None:
            raise ApiError(404, f"no device named {name}")
        return device.to_dict()


@router.delete("/api/v1/devices/{name}", name="device.delete", responses={200: {"model": schemas.Deleted}})
async def delete_device(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    name = checked_name(name)
    async with request.app.state.sessionmaker() as session:
        device = await session.scalar(select(Device).where(Device.name == name))
        if device is None:
            raise ApiError(404, f"no device named {name}")
        await session.delete(device)
        session.add(new_entry(request, status=200, detail=f"model={device.model}"))
        events = request.app.state.domain.events(session)  # committed with the deletion (outbox)
        events.config_changed([name], "deleted")
        await session.commit()
    await request.app.state.domain.deliver(events, name)
    return {"deleted": name}


@router.patch("/api/v1/devices/{name}", name="device.update", openapi_extra=body_schema(DevicePatch),
               responses={200: {"model": schemas.DeviceChanged}})
async def update_device(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Through callmanager's one write path: the change, its audit row and the events it requires
    (config.changed, RST-1/RST-2 resets) commit together; `delivery` is "pending" while NATS is
    down (the resets go out once it is back)."""
    name = checked_name(name)
    body = await read_json(request, DevicePatch)
    wanted = body.model_dump(include=body.model_fields_set)
    if not wanted:
        raise ApiError(422, "nothing to change (give security_mode, description, device_pool "
                            f"or a hardening setting: {', '.join(HARDENING_FIELDS)})")
    return await owner_call(request, request.app.state.domain.update_device(
        actor_of_request(request), name, wanted))
