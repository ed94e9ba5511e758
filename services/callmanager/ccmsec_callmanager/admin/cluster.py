"""GET /api/v1/cluster: the cluster's security state at a glance — security mode (MODE-1..3), the
current CTL (version and SHA-256, MODE-5) and how many devices run in each security mode."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, select

from ccmsec.db.cluster import CtlFileRow
from ccmsec.db.devices import (
    SECURITY_MODES,
    SETTING_CTL_VERSION,
    Device,
    as_utc,
    cluster_security_mode,
    get_setting,
)
from ccmsec.db.registry import Registration

from . import schemas
from .auth import Principal, require_user

router = APIRouter(tags=["cluster"])


@router.get("/api/v1/cluster", name="cluster.show", responses={200: {"model": schemas.ClusterState}})
async def show_cluster(request: Request, _: Principal = Depends(require_user)) -> dict:
    async with request.app.state.sessionmaker() as session:
        mode = await cluster_security_mode(session)
        version = await get_setting(session, SETTING_CTL_VERSION)
        ctl = None
        if version is not None:
            row = None
            if version.isdigit():
                row = await session.scalar(select(CtlFileRow).where(CtlFileRow.version == int(version)))
            ctl = {"version": int(version) if version.isdigit() else version,
                   "sha256": row.sha256 if row else None,
                   "records": row.records if row else None,
                   "created_at": as_utc(row.created_at).isoformat() if row else None}
        counts = dict((await session.execute(
            select(Device.security_mode, func.count()).group_by(Device.security_mode))).all())
        registered = await session.scalar(select(func.count()).select_from(Registration))
    by_mode = {m: int(counts.get(m, 0)) for m in SECURITY_MODES}
    return {"security_mode": mode, "ctl": ctl,
            "devices": {"total": sum(by_mode.values()), "by_security_mode": by_mode},
            "registered": int(registered or 0)}
