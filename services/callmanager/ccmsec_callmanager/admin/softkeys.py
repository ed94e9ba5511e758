"""Softkey sets (issue 10): the named set of softkeys a device's display offers, assigned to one
device or to a device pool's devices (a device's own assignment wins; "standard" without any).
Through callmanager's one write path (`domain.set_softkey_set`, audited `softkey_set.set`,
announced with `config.changed`); a phone gets its set with the set-up exchange of its next
registration, as from a real CallManager."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ccmsec.calls.setup import SOFTKEY_SETS, keys_of
from ccmsec.wire.sccp_calls import SOFTKEY_LABELS

from . import schemas
from .auth import Principal, require_admin, require_user
from .devices import checked_name
from .errors import body_schema, read_json
from .owner import actor_of_request, owner_call
from .pagination import cursor_query, decode_cursor, limit_query, page

router = APIRouter(tags=["softkey sets"])


class SoftkeyAssignment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    softkey_set: str = Field(max_length=32, description='a set GET /api/v1/softkey-sets lists; "" removes '
                                                        "the assignment")


class SoftkeySet(schemas.Strict):
    name: str
    softkeys: list[str] = Field(description="the template's keys, in order")


class SoftkeySetList(schemas.Strict):
    softkey_sets: list[SoftkeySet]
    next_cursor: schemas.Cursor = schemas.CURSOR_FIELD


class SoftkeysAssigned(schemas.Strict):
    device: str | None = None
    pool: str | None = None
    softkey_set: str
    devices: list[str] = Field(description="the devices concerned (they get it when they register again)")


@router.get("/api/v1/softkey-sets", name="softkey_set.list", responses={200: {"model": SoftkeySetList}})
async def list_softkey_sets(_: Principal = Depends(require_user), limit: int = limit_query(),
                            cursor: str | None = cursor_query()) -> dict:
    """By name. Page with `cursor`, as every list (a fixed set today, but a client pages it the
    same way as the others)."""
    after = decode_cursor(cursor, str)
    names = [name for name in sorted(SOFTKEY_SETS) if after is None or name > after[0]]
    names, next_cursor = page(names[:limit + 1], limit, lambda name: (name,))
    return {"softkey_sets": [{"name": name, "softkeys": [SOFTKEY_LABELS[k] for k in keys_of(name)]}
                             for name in names], "next_cursor": next_cursor}


@router.put("/api/v1/devices/{name}/softkeys", name="device.set_softkeys",
            openapi_extra=body_schema(SoftkeyAssignment), responses={200: {"model": SoftkeysAssigned}})
async def set_device_softkeys(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """The softkey set of one device."""
    name = checked_name(name)
    body = await read_json(request, SoftkeyAssignment)
    return await owner_call(request, request.app.state.domain.set_softkey_set(
        actor_of_request(request), device=name, softkey_set=body.softkey_set))


@router.put("/api/v1/pools/{name}/softkeys", name="pool.set_softkeys",
            openapi_extra=body_schema(SoftkeyAssignment), responses={200: {"model": SoftkeysAssigned}})
async def set_pool_softkeys(name: str, request: Request, _: Principal = Depends(require_admin)) -> dict:
    """The softkey set of a device pool's devices (those without their own)."""
    body = await read_json(request, SoftkeyAssignment)
    return await owner_call(request, request.app.state.domain.set_softkey_set(
        actor_of_request(request), pool=name, softkey_set=body.softkey_set))
