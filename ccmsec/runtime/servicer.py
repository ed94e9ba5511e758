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
