"""GET /api/v1/registrations: who is registered where (the `registrations` table every call-control
node mirrors its live registry into, ~100 ms behind)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from ccmsec.db.registry import list_registrations

from .auth import Principal, require_user
from .devices import checked_name

router = APIRouter(tags=["registrations"])

NODE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


@router.get("/api/v1/registrations", name="registration.list")
async def registrations(
    request: Request,
    _: Principal = Depends(require_user),
    device: str | None = Query(None, max_length=64, description="only this device"),
    node: str | None = Query(None, pattern=NODE_PATTERN, description="only this call-control node"),
) -> dict:
    if device is not None:
        device = checked_name(device)
    async with request.app.state.sessionmaker() as session:
        rows = await list_registrations(session, device=device, node=node)
    return {"registrations": [row.to_dict() for row in rows], "total": len(rows)}
