"""GET /api/v1/registrations: who is registered where (the `registrations` table every call-control
node mirrors its live registry into, ~100 ms behind)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select

from ccmsec.db.registry import Registration

from . import schemas
from .auth import Principal, require_user
from .devices import checked_name
from .pagination import cursor_query, decode_cursor, limit_query, page

router = APIRouter(tags=["registrations"])

NODE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


@router.get("/api/v1/registrations", name="registration.list",
            responses={200: {"model": schemas.RegistrationList}})
async def registrations(
    request: Request,
    _: Principal = Depends(require_user),
    device: str | None = Query(None, max_length=64, description="only this device"),
    node: str | None = Query(None, pattern=NODE_PATTERN, description="only this call-control node"),
    limit: int = limit_query(),
    cursor: str | None = cursor_query(),
) -> dict:
    """By device name. Page with `cursor`."""
    if device is not None:
        device = checked_name(device)
    after = decode_cursor(cursor, str)
    where = [c for c in (device is not None and Registration.device == device,
                         node is not None and Registration.node == node) if c is not False]
    query = select(Registration).where(*where).order_by(Registration.device).limit(limit + 1)
    if after is not None:
        query = query.where(Registration.device > after[0])
    async with request.app.state.sessionmaker() as session:
        total = await session.scalar(select(func.count()).select_from(Registration).where(*where))
        rows, next_cursor = page((await session.scalars(query)).all(), limit, lambda r: (r.device,))
    return {"registrations": [row.to_dict() for row in rows], "total": int(total or 0),
            "next_cursor": next_cursor}
