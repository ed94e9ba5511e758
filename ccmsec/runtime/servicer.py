"""Small helpers shared by the gRPC servicers of every role."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from ccmsec.textsafe import bounded


class StatusServicerMixin:
    """Implements the `Status` RPC every role's service has."""

    def __init__(self, service):
        self.service = service

    async def Status(self, request, context):  # noqa: N802 - gRPC method name
        return self.service.status_message()


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str):
    """Refuse a call with a clear message (raises); escaped and bounded, as a status detail over
    ~8 kB fails the call instead of carrying the refusal."""
    await context.abort(code, bounded(message))


def caller_of(service, context) -> str:
    """`role/node` of the gRPC caller (the authorization gate already admitted it), for the audit
    log's actor column; "unknown" if the call carries no identity (in-process tests)."""
    gate = getattr(getattr(service, "grpc", None), "gate", None)
    try:
        return str(gate.caller(context)) if gate is not None else "unknown"
    except Exception:
        return "unknown"


# The administration API (identity `admin-api`) names the administrator it acts for in this
# metadata key, so the owner's audit record names the person, not only the door.
ADMIN_USER_METADATA = "ccmsec-admin-user"


@dataclass(frozen=True)
class ChangeActor:
    """Who asked for a write, for the owner's audit record (`outbox.stage_owner_change`)."""

    actor: str
    door: str      # "grpc" | "admin-api"
    remote: str

    def audit(self) -> dict:
        return {"actor": self.actor, "door": self.door, "remote": self.remote}


def change_actor(service, context) -> ChangeActor:
    """The caller's `role/node`; for the administration API, `<administrator> (via admin-api/<node>)`
    — the user name is believed only from a caller whose certificate states the admin-api role."""
    caller = caller_of(service, context)
    remote = ((context.peer() if context is not None else "") or "")[:64]
    if caller.split("/", 1)[0] == "admin-api":
        user = dict(context.invocation_metadata() or ()).get(ADMIN_USER_METADATA, "")
        user = "".join(c for c in str(user) if c.isprintable())[:64]
        if user:
            return ChangeActor(f"{user} (via {caller})", "admin-api", remote)
        return ChangeActor(caller, "admin-api", remote)
    return ChangeActor(caller, "grpc", remote)


class OutboxServicer:
    """`ccmsec.v1.Outbox` on every service's gRPC server: the operator's view of this node's
    outbox rows set aside (never published), and their re-queue. The service owns its outbox:
    another service or tool reaches it only through here (rpc_policy: cli, admin-api)."""

    def __init__(self, service):
        self.service = service

    def _relay(self):
        relay = getattr(self.service, "outbox", None)
        if relay is None:
            raise LookupError(f"{self.service.role}/{self.service.node} has no outbox yet (starting)")
        return relay

    async def ListSetAside(self, request, context):  # noqa: N802 - gRPC method name
        from ccmsec.runtime.outbox import LIST_MAX
        from ccmsec_proto import outbox_pb2

        if request.limit > LIST_MAX:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"limit {request.limit} is over {LIST_MAX}")
        try:
            rows, total = await self._relay().list_set_aside(request.limit)
        except LookupError as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return outbox_pb2.ListSetAsideReply(
            role=self.service.role, node=self.service.node, total=total, rows=[
                outbox_pb2.SetAsideRow(
                    id=r.id, event_id=r.event_id, kind=r.kind, subject=r.subject,
                    created_unix_ms=int(r.created_at.timestamp() * 1000) if r.created_at else 0,
                    reason=r.reason, payload_bytes=r.payload_bytes, attempts=r.attempts)
                for r in rows])

    async def Resend(self, request, context):  # noqa: N802 - gRPC method name
        from ccmsec.runtime.outbox import REQUEUE_MAX, NotSetAside
        from ccmsec_proto import outbox_pb2

        if request.all == bool(request.ids):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        "name the set-aside rows to resend (ids) or ask for all of them, not both")
        if len(request.ids) > REQUEUE_MAX:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                        f"{len(request.ids)} ids: at most {REQUEUE_MAX} at once (or all)")
        try:
            requeued = await self._relay().requeue(None if request.all else list(request.ids),
                                                   audit=change_actor(self.service, context).audit())
        except NotSetAside as exc:
            await abort(context, grpc.StatusCode.NOT_FOUND,
                        f"{self.service.role}/{self.service.node}: {exc}; nothing re-queued")
        except LookupError as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        self.service.log.warning("set-aside outbox rows re-queued", extra={
            "caller": caller_of(self.service, context), "count": len(requeued)})
        return outbox_pb2.ResendReply(ids=requeued)
