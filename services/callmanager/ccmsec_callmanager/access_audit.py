"""Refused gRPC calls, cluster-wide, into the audit log callmanager owns (issue 9 §2).

Every service reports each refusal of its authorization policy as an `access.denied` event
(rate-limited at the source); callmanager — the only writer of `audit_log` — records one row per
event: actor = the caller's identity (role/node), action `rpc.denied`, target = the method.
"""

from __future__ import annotations

from ccmsec.db.admin import AuditEntry
from ccmsec_proto import events_pb2


def entry_for(event: events_pb2.Event) -> AuditEntry:
    d = event.access_denied
    identified = bool(d.caller_role)
    detail = f"gRPC call refused by {d.refused_by or event.origin}: {d.reason}"
    if d.suppressed:
        detail += f" (and {d.suppressed} earlier refusals not reported one by one)"
    return AuditEntry(
        actor=(f"{d.caller_role}/{d.caller_node}" if identified else None),
        action="rpc.denied", target=d.method[:128] or None,
        outcome="denied" if identified else "unauthenticated",
        status=403 if identified else 401, rule=None, detail=detail[:1000],
        remote=(d.refused_by or event.origin)[:64] or None,
    )


class AccessAuditMixin:
    async def setup_access_audit(self) -> None:
        from ccmsec.runtime import bus as bus_mod

        await self.subscribe(bus_mod.subject_for("access.denied"), "access-denied", self.on_access_denied,
                             deliver_new=False)

    async def on_access_denied(self, event: events_pb2.Event) -> None:
        async with self.db() as session, session.begin():
            session.add(entry_for(event))
