"""The administration API application: routers, error handling, limits."""

from __future__ import annotations

import asyncio

import datetime as _dt
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import async_sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from ccmsec.textsafe import bounded, shown

from .access_log import AccessLogMiddleware
from . import audit_api, auth, calls, capf, cluster, devices, lines, registrations, resets, srst
from . import softkeys  # issue 10: softkey sets per device / pool
from .audit import record_refusal
from .errors import (
    MAX_BODY_BYTES,
    PROBLEM_JSON,
    ApiError,
    BodyLimitMiddleware,
    describe_validation_errors,
    error_body,
)
from .openapi import complete_openapi
from .capf import CapfChannelFactory
from .events import EventPublisher
from .resets import ResetTracker

log = logging.getLogger(__name__)

OPENAPI_URL = "/api/v1/openapi.json"


async def _answer(request: Request, status: int, message: str, rule: str | None = None,
                  headers: dict[str, str] | None = None) -> JSONResponse:
    message = bounded(message)  # the last guard: no handler's message sends back input whole
    await record_refusal(request, status, message, rule)
    return JSONResponse(error_body(message, rule, status, request.url.path), status_code=status,
                        headers=headers, media_type=PROBLEM_JSON)


def create_admin_app(sessionmaker: async_sessionmaker, *, events: EventPublisher, data_dir: Path,
                     token_ttl: _dt.timedelta = auth.DEFAULT_TOKEN_TTL,
                     max_body: int = MAX_BODY_BYTES,
                     capf_channel: CapfChannelFactory | None = None,
                     ctl_channel: CapfChannelFactory | None = None,
                     reset_tracker: ResetTracker | None = None,
                     call_service=None, node: str = "callmanager",
                     domain=None, cluster_state=None,
                     call_control_nodes: frozenset[str] | None = None) -> FastAPI:
    """Build the HTTPS administration API (serve it with https.serve_admin / AdminServer).

    `capf_channel` returns the gRPC channel to the CAPF service (the /api/v1/capf endpoints answer
    503 without it); `ctl_channel` the one to the CTL Provider, which owns the cluster mode and the
    CTL the /api/v1/cluster view shows (503 without it); `cluster_state` the follower of that mode and
    CTL the MODE-5 device checks use when no `domain` is given (none: MODE-1, non-secure, no CTL); `reset_tracker` is the local call-control registry that tracks reset progress;
    `call_control_nodes` every call-control node the cluster runs (the service's setting
    CCMSEC_CLUSTER_CALL_CONTROL_NODES): a reset on a server (RST-9) naming another is 404 — None,
    not known: the name's form alone is checked.
    """
    app = FastAPI(
        title="ccmsec administration API",
        version="1",
        openapi_url=OPENAPI_URL,
        docs_url=None,  # the interactive pages load scripts from a CDN; the JSON document is enough
        redoc_url=None,
    )
    app.state.sessionmaker = sessionmaker
    app.state.events = events
    app.state.data_dir = Path(data_dir)
    app.state.token_ttl = token_ttl
    app.state.throttle = auth.FailureThrottle()
    app.state.capf_channel = capf_channel
    app.state.ctl_channel = ctl_channel
    app.state.reset_tracker = reset_tracker
    app.state.call_control_nodes = frozenset(call_control_nodes) if call_control_nodes is not None else None
    app.state.call_service = call_service
    app.state.node = node
    if domain is None:  # the service passes its own (the one its gRPC servicer uses too)
        from ccmsec_callmanager.domain import CallManagerDomain

        async def publish(kind, target, payload):  # no outbox here: whatever events the app has now
            from . import announce

            await asyncio.wait_for(app.state.events.publish(kind, target, payload),
                                   announce.PUBLISH_TIMEOUT)

        domain = CallManagerDomain(sessionmaker, publish, cluster_state=cluster_state)
    app.state.domain = domain

    app.add_middleware(BodyLimitMiddleware, limit=max_body)
    app.add_middleware(AccessLogMiddleware)  # outermost: every request logged, counted and traced
    app.include_router(auth.router)
    app.include_router(resets.router)  # before devices: /devices/reset is not a device name
    app.include_router(devices.router)
    app.include_router(lines.router)
    app.include_router(softkeys.router)
    app.include_router(srst.router)
    app.include_router(registrations.router)
    app.include_router(calls.router)
    app.include_router(cluster.router)
    app.include_router(capf.router)
    app.include_router(audit_api.router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return await _answer(request, exc.status, exc.error, exc.rule, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _answer(request, 422, describe_validation_errors(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and request.scope.get("route") is None:
            message = f"no such endpoint: {request.method} {shown(request.url.path, 200)}"
        return await _answer(request, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return await _answer(request, 500, "internal error (see the callmanager log)")

    complete_openapi(app)
    return app
