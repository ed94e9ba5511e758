"""GET /api/v1/cluster: the cluster's security state at a glance — security mode (MODE-1..3), the
current CTL (version, SHA-256, records, MODE-5) and how many devices run in each security mode.

The mode and the CTL are the CTL Provider's state (issue 9 §5): asked of it over gRPC
(`CtlProvider/GetSecurityMode`, `CtlProvider/GetCurrentCtl`) as `admin-api`, never read from its
tables. When it cannot answer, the view is refused (503, saying so) rather than shown half known.
The device counts and registrations are call control's own tables."""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Callable

import grpc
from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, select

from ccmsec.db.devices import SECURITY_MODES, Device
from ccmsec.db.registry import Registration
from ccmsec.domain import ClusterMode, DomainError
from ccmsec_proto import common_pb2, ctl_provider_pb2_grpc

from . import schemas
from .auth import Principal, require_user
from .errors import ApiError

log = logging.getLogger(__name__)

router = APIRouter(tags=["cluster"])

CtlChannelFactory = Callable[[], grpc.aio.Channel]
CTL_TIMEOUT = 5.0  # seconds per gRPC call
UNREACHABLE = "CTL Provider unreachable"


async def _ask_ctl_provider(request: Request) -> tuple[str, dict | None]:
    """(security mode, current CTL or None), from the CTL Provider."""
    factory: CtlChannelFactory | None = getattr(request.app.state, "ctl_channel", None)
    if factory is None:
        raise ApiError(503, f"{UNREACHABLE}: no CTL Provider address configured for this API")
    try:
        stub = ctl_provider_pb2_grpc.CtlProviderStub(factory())
        mode = await stub.GetSecurityMode(common_pb2.Empty(), timeout=CTL_TIMEOUT)
        current = await stub.GetCurrentCtl(common_pb2.Empty(), timeout=CTL_TIMEOUT)
    except grpc.aio.AioRpcError as exc:
        log.warning("cluster view: the CTL Provider did not answer: %s %s", exc.code().name, exc.details())
        raise ApiError(503, f"{UNREACHABLE}: {exc.details() or exc.code().name}") from None
    except Exception as exc:  # e.g. no peer address, unreadable client certificate
        raise ApiError(503, f"{UNREACHABLE}: {exc}") from None
    try:
        mode_name = ClusterMode.from_proto(mode.mode).value
    except DomainError as exc:
        raise ApiError(502, f"the CTL Provider answered an unknown security mode: {exc}") from None
    ctl = None
    if current.present:
        created = _dt.datetime.fromtimestamp(current.created_unix_ms / 1000, _dt.timezone.utc)
        ctl = {"version": current.version, "sha256": current.sha256, "records": current.records,
               "created_at": created.isoformat() if current.created_unix_ms else None}
    return mode_name, ctl


@router.get("/api/v1/cluster", name="cluster.show", responses={200: {"model": schemas.ClusterState}})
async def show_cluster(request: Request, _: Principal = Depends(require_user)) -> dict:
    mode, ctl = await _ask_ctl_provider(request)
    async with request.app.state.sessionmaker() as session:
        counts = dict((await session.execute(
            select(Device.security_mode, func.count()).group_by(Device.security_mode))).all())
        registered = await session.scalar(select(func.count()).select_from(Registration))
    by_mode = {m: int(counts.get(m, 0)) for m in SECURITY_MODES}
    return {"security_mode": mode, "ctl": ctl,
            "devices": {"total": sum(by_mode.values()), "by_security_mode": by_mode},
            "registered": int(registered or 0)}
