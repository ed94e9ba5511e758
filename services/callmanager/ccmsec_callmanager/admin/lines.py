"""Lines (directory numbers) and device pools (CallManager group, SRST reference).

Creating a line or a pool and moving a device between pools go through callmanager's one write
path (`ccmsec_callmanager/domain.py`), the same the gRPC methods call: validated, written,
audited and announced the same way whichever door the change came through. A device's
configuration file lists its lines, CallManager group and SRST reference, so every change
announces `config.changed` for the devices it touches. No RST rule covers lines or moving a device
between pools; changing a pool's SRST reference is RST-5 (reset the pool's devices) and goes
through `required_actions(SrstSecurityChanged(...))`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import and_, or_, select

from ccmsec.db.devices import Device, validate_device_name
from ccmsec.db.lines import (
    MAX_CM_GROUP,
    MAX_LINES_PER_DEVICE,
    DevicePool,
    InvalidLineOrPool,
    Line,
    validate_cm_group,
    MAX_LINE_LABEL,
    validate_dn,
    validate_line_label,
    validate_pool_name,
)
from ccmsec.policy.resets import SrstSecurityChanged, required_actions

from .audit import new_entry
from .owner import actor_of_request, owner_call
from .auth import Principal, require_admin, require_user
from .devices import checked_free_text, checked_name
from . import schemas
from .errors import ApiError, body_schema, read_json
from .pagination import cursor_query, decode_cursor, limit_query, page

router = APIRouter(tags=["lines and device pools"])


def srst_reference(value: str) -> str:
    if value:
        validate_cm_group([value])  # same host syntax as a CallManager
    return value


class LineCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dn: str = Field(max_length=24, description="directory number: 1-24 of 0-9 * # +")
    device: str = Field(max_length=64)
    line_index: int = Field(0, ge=0, le=MAX_LINES_PER_DEVICE, description="button; 0 = next free")
    label: str = Field("", max_length=MAX_LINE_LABEL, description="printable ASCII (the phone's "
                                                                  "Skinny line display)")

    @field_validator("label")
    @classmethod
    def _valid_label(cls, value: str) -> str:
        return checked_free_text(validate_line_label, value)

    @field_validator("dn")
    @classmethod
    def _valid_dn(cls, value: str) -> str:
        return validate_dn(value)

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        return validate_device_name(value)


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(max_length=64)
    cm_group: list[str] = Field(max_length=MAX_CM_GROUP, description="CallManagers, in order")
    srst: str = Field("", max_length=64, description="SRST reference; empty = none")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_pool_name(value)

    @field_validator("cm_group")
    @classmethod
    def _valid_cm_group(cls, value: list[str]) -> list[str]:
        return validate_cm_group(value)

    @field_validator("srst")
    @classmethod
    def _valid_srst(cls, value: str) -> str:
        return srst_reference(value)


class PoolPatch(BaseModel):
    """Only the fields present change."""

    model_config = ConfigDict(extra="forbid", strict=True)
    cm_group: list[str] = Field(None, max_length=MAX_CM_GROUP)  # type: ignore[assignment]
    srst: str = Field(None, max_length=64)  # type: ignore[assignment]

    @field_validator("cm_group")
    @classmethod
    def _valid_cm_group(cls, value: list[str]) -> list[str]:
        return validate_cm_group(value)

    @field_validator("srst")
    @classmethod
    def _valid_srst(cls, value: str) -> str:
        return srst_reference(value)


class DevicePoolAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    pool: str | None = Field(max_length=64, description="pool name, or null for none")

    @field_validator("pool")
    @classmethod
    def _valid(cls, value: str | None) -> str | None:
        return None if value is None else validate_pool_name(value)


def _checked_pool(name: str) -> str:
    try:
        return validate_pool_name(name)
    except InvalidLineOrPool as exc:
        raise ApiError(422, str(exc)) from None


# lines ------------------------------------------------------------------------------------------

@router.get("/api/v1/lines", name="line.list", responses={200: {"model": schemas.LineList}})
async def list_lines(
    request: Request,
    _: Principal = Depends(require_user),
    device: str | None = Query(None, max_length=64),
    dn: str | None = Query(None, max_length=24),
    limit: int = limit_query(),
    cursor: str | None = cursor_query(),
) -> dict:
    """By device, then button. Page with `cursor`."""
    try:
        device = None if device is None else validate_device_name(device)
        dn = None if dn is None else validate_dn(dn)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None
    after = decode_cursor(cursor, str, int)
    query = select(Line).order_by(Line.device, Line.line_index).limit(limit + 1)
    if device:
        query = query.where(Line.device == device)
    if dn:
        query = query.where(Line.dn == dn)
    if after is not None:
        query = query.where(or_(Line.device > after[0],
                                and_(Line.device == after[0], Line.line_index > after[1])))
    async with request.app.state.sessionmaker() as session:
        rows, next_cursor = page((await session.scalars(query)).all(), limit,
                                 lambda line: (line.device, line.line_index))
    return {"lines": [row.to_dict() for row in rows], "next_cursor": next_cursor}


@router.post("/api/v1/lines", name="line.create", status_code=201,
             openapi_extra=body_schema(LineCreate), responses={201: {"model": schemas.LineCreated}})
async def create_line(request: Request, _: Principal = Depends(require_admin)) -> dict:
    body = await read_json(request, LineCreate)
    request.state.audit_target = body.device
    return await owner_call(request, request.app.state.domain.add_line(
        actor_of_request(request), dn=body.dn, device=body.device, line_index=body.line_index,
        label=body.label))


# device pools ------------------------------------------------------------------------------------

@router.get("/api/v1/pools", name="pool.list", responses={200: {"model": schemas.PoolList}})
async def list_pools(request: Request, _: Principal = Depends(require_user),
                     limit: int = limit_query(), cursor: str | None = cursor_query()) -> dict:
    """By name. Page with `cursor`."""
    after = decode_cursor(cursor, str)
    query = select(DevicePool).order_by(DevicePool.name).limit(limit + 1)
    if after is not None:
        query = query.where(DevicePool.name > after[0])
    async with request.app.state.sessionmaker() as session:
        rows, next_cursor = page((await session.scalars(query)).all(), limit, lambda p: (p.name,))
    return {"pools": [row.to_dict() for row in rows], "next_cursor": next_cursor}


@router.post("/api/v1/pools", name="pool.create", status_code=201,
             openapi_extra=body_schema(PoolCreate), responses={201: {"model": schemas.Pool}})
async def create_pool(request: Request, _: Principal = Depends(require_admin)) -> dict:
    body = await read_json(request, PoolCreate)
    request.state.audit_target = body.name
    return await owner_call(request, request.app.state.domain.add_pool(
        actor_of_request(request), name=body.name, cm_group=body.cm_group, srst=body.srst))


@router.patch("/api/v1/pools/{name}", name="pool.update", openapi_extra=body_schema(PoolPatch),
               responses={200: {"model": schemas.PoolUpdated}})
async def update_pool(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Change the CallManager group and/or the SRST reference (RST-5: the pool's devices reset)."""
    name = _checked_pool(name)
    body = await read_json(request, PoolPatch)
    if not body.model_fields_set:
        raise ApiError(422, "nothing to change (give cm_group and/or srst)")
    async with request.app.state.sessionmaker() as session:
        pool = await session.get(DevicePool, name)
        if pool is None:
            raise ApiError(404, f"no device pool named {name}")
        changed = {}
        if "cm_group" in body.model_fields_set and body.cm_group != pool.cm_hosts:
            changed["cm_group"] = (pool.cm_hosts, body.cm_group)
            pool.cm_group = ",".join(body.cm_group)
        if "srst" in body.model_fields_set and body.srst != pool.srst:
            changed["srst"] = (pool.srst, body.srst)
            pool.srst = body.srst
        if not changed:
            return pool.to_dict()
        devices = list((await session.scalars(
            select(Device.name).where(Device.device_pool == name).order_by(Device.name))).all())
        session.add(new_entry(request, status=200, detail="; ".join(
            f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            + f"; {len(devices)} devices"))
        result = pool.to_dict()
        # config.changed and the RST-5 resets commit with the change (outbox, issue 9 §4)
        events = request.app.state.domain.events(session)
        events.config_changed(devices, "device_pool:" + ",".join(sorted(changed)))
        if "srst" in changed:
            old, new = changed["srst"]
            events.actions(required_actions(SrstSecurityChanged(new or old, tuple(devices))),
                           reason=f"SRST reference of device pool {name}: {old!r} -> {new!r}")
        await session.commit()
    delivery = await request.app.state.domain.deliver(events, name)
    return {**result, "devices": len(devices), "delivery": delivery}


@router.put("/api/v1/devices/{name}/pool", name="device.set_pool",
            openapi_extra=body_schema(DevicePoolAssignment),
            responses={200: {"model": schemas.DeviceChanged}})
async def set_device_pool(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """Put a device in a device pool (or in none with null)."""
    name = checked_name(name)
    body = await read_json(request, DevicePoolAssignment)
    return await owner_call(request, request.app.state.domain.set_device_pool(
        actor_of_request(request), device=name, pool=body.pool))
