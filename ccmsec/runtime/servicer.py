"""Small helpers shared by the gRPC servicers of every role."""

from __future__ import annotations

import grpc


class StatusServicerMixin:
    """Implements the `Status` RPC every role's service has."""

    def __init__(self, service):
        self.service = service

    async def Status(self, request, context):  # noqa: N802 - gRPC method name
        return self.service.status_message()


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str):
    """Refuse a call with a clear message (raises)."""
    await context.abort(code, message)


def caller_of(service, context) -> str:
    """`role/node` of the gRPC caller (the authorization gate already admitted it), for the audit
    log's actor column; "unknown" if the call carries no identity (in-process tests)."""
    gate = getattr(getattr(service, "grpc", None), "gate", None)
    try:
        return str(gate.caller(context)) if gate is not None else "unknown"
    except Exception:
        return "unknown"
