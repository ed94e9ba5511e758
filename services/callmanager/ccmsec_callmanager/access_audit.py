"""Refused gRPC calls, cluster-wide, into the audit log callmanager owns (issue 9 §2).

Every service reports each refusal of its authorization policy as an `access.denied` event
(rate-limited at the source); callmanager — the only writer of `audit_log` — records one row per
event: actor = the caller's identity (role/node), action `rpc.denied`, target = the method.
"""

from __future__ import annotations

from ccmsec.db.admin import AuditEntry
from ccmsec.runtime import bus as bus_mod
from ccmsec_proto import events_pb2


def entry_for(event: events_pb2.Event, publisher: str = "") -> AuditEntry:
    """`publisher`: the role that published the event, proved by its subject (BUS-2). A report
    whose `refused_by` names another role is recorded under the true publisher, the claim kept."""
    d = event.access_denied
    identified = bool(d.caller_role)
    refused_by = d.refused_by or event.origin
    if publisher and refused_by.split("/", 1)[0] != publisher:
        refused_by = f"{publisher} (claims {refused_by[:80]})"
    detail = f"gRPC call refused by {refused_by}: {d.reason}"
    if d.suppressed:
        detail += f" (and {d.suppressed} earlier refusals not reported one by one)"
    return AuditEntry(
        actor=(f"{d.caller_role}/{d.caller_node}" if identified else None),
        action="rpc.denied", target=d.method[:128] or None,
        outcome="denied" if identified else "unauthenticated",
        status=403 if identified else 401, rule=None, detail=detail[:1000],
        remote=refused_by[:64] or None,
    )


class AccessAuditMixin:
    async def setup_access_audit(self) -> None:
        await self.subscribe(bus_mod.subject_for("access.denied"), "access-denied", self.on_access_denied,
                             deliver_new=False)

    async def on_access_denied(self, event: events_pb2.Event) -> None:
        async with self.db() as session, session.begin():
            session.add(entry_for(event, bus_mod.PUBLISHER.get()))
