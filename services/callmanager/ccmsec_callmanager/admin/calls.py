"""GET /api/v1/calls: the calls this call-control node carries, each with its security status as
the policy computed it (CALL-1) and what each phone displays (lock / shield / none); read-only.
GET /api/v1/calls/events: the same as a stream (Server-Sent Events): the calls now ("existing"),
then every change. The converter is the gRPC API's (`calls_api.call_dict`)."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from ccmsec_callmanager.calls_api import call_dict

from . import schemas
from .auth import Principal, require_user
from .devices import checked_name
from .errors import ApiError
from .pagination import cursor_query, decode_cursor, limit_query, page

router = APIRouter(tags=["calls"])
KEEPALIVE = 15.0   # seconds: an SSE comment on an idle stream, so proxies keep it open


def _calls(request: Request):
    calls = request.app.state.call_service() if request.app.state.call_service else None
    if calls is None:
        raise ApiError(503, "call control is not running on this node")
    return calls


def _node(request: Request) -> str:
    return request.app.state.node


@router.get("/api/v1/calls", name="call.list", responses={200: {"model": schemas.CallList}})
async def list_calls(request: Request, _: Principal = Depends(require_user),
                     device: str | None = Query(None, max_length=64, description="only calls of this device"),
                     limit: int = limit_query(), cursor: str | None = cursor_query()) -> dict:
    """By call id. Page with `cursor`."""
    calls = _calls(request)
    if device is not None:
        device = checked_name(device)
    after = decode_cursor(cursor, int)
    views = sorted((v for v in calls.calls() if device is None or any(lg.device == device for lg in v.legs)),
                   key=lambda v: v.id)
    total = len(views)
    rows, next_cursor = page([v for v in views if after is None or v.id > after[0]][:limit + 1], limit,
                             lambda v: (v.id,))
    out = [call_dict(v, wall_offset=calls.agent.wall_offset, node=_node(request)) for v in rows]
    return {"calls": out, "total": total, "next_cursor": next_cursor}


@router.get("/api/v1/calls/events", name="call.events", responses={200: {
    "description": "Server-Sent Events: `existing` for each call now, then `created`, `updated`, "
                   "`ended`, `refused`; each `data` is `{kind, call, at_unix_ms, detail}` (a Call)",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def call_events(request: Request, _: Principal = Depends(require_user)) -> StreamingResponse:
    calls = _calls(request)
    try:
        queue = calls.watch()
    except RuntimeError as exc:
        raise ApiError(429, str(exc)) from None
    offset, node = calls.agent.wall_offset, _node(request)

    def frame(kind: str, view, at: float | None, detail: str = "") -> bytes:
        body = {"kind": kind, "call": call_dict(view, wall_offset=offset, node=node),
                "at_unix_ms": int((at + offset) * 1000) if at else 0, "detail": detail}
        return f"event: {kind}\ndata: {json.dumps(body, sort_keys=True)}\n\n".encode()

    async def stream():
        try:
            for view in calls.calls():
                yield frame("existing", view, view.created)
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is None:
                    yield b"event: end\ndata: {}\n\n"
                    return
                yield frame(event.kind, event.call, event.at, event.detail)
        finally:
            calls.unwatch(queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store"})
