"""GET /api/v1/audit: read the audit log (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select

from ccmsec.db.admin import AuditEntry

from . import schemas
from .auth import Principal, require_admin
from .pagination import cursor_query, decode_cursor, page

router = APIRouter()
MAX_ID = 2**63 - 1  # the largest id a 64-bit database integer holds; anything above is a 422


@router.get("/api/v1/audit", name="audit.list", tags=["audit"],
            responses={200: {"model": schemas.AuditList}})
async def list_audit(
    request: Request,
    _: Principal = Depends(require_admin),
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=MAX_ID, description="page: entries older than this id"),
    action: str | None = Query(None, max_length=64),
    target: str | None = Query(None, max_length=128),
    cursor: str | None = cursor_query(),
) -> dict:
    """Newest first. Admin only. Page with `cursor` (or `before_id`)."""
    after = decode_cursor(cursor, int)
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if after is not None:
        query = query.where(AuditEntry.id < after[0])
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    async with request.app.state.sessionmaker() as session:
        rows, next_cursor = page((await session.scalars(query)).all(), limit, lambda e: (e.id,))
    return {"entries": [row.to_dict() for row in rows], "next_cursor": next_cursor}
