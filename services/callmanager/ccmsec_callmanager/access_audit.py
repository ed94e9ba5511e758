"""Refused gRPC calls and other owners' changes, cluster-wide, into the audit log callmanager owns
(issue 9 §2, §5).

Every service reports each refusal of its authorization policy as an `access.denied` event
(rate-limited at the source); callmanager — the only writer of `audit_log` — records one row per
event: actor = the caller's identity (role/node), action `rpc.denied`, target = the method.

ctl-provider owns the cluster mode and the CTL; its changes are audited here from the events it
publishes for them (`mode.changed` → action `cluster.mode`, `ctl.updated` → `ctl.commit`, actor =
who asked), so a mode change is audited whichever door it came through. Its other writes and
CAPF's (activation, port, legacy TLS, shared-TFTP registry; schedules, parameters, the third-party
CA, imports) each come as one `owner.change`, staged in the owner's outbox with the write.
"""

from __future__ import annotations

from ccmsec.db.admin import AuditEntry
from ccmsec.runtime import bus as bus_mod
from ccmsec.domain import ClusterMode, DomainError
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


def owner_change_entry(event: events_pb2.Event, publisher: str | None = None) -> AuditEntry | None:
    """The audit row for another owner's change announced by `event` (None: not one)."""
    body = event.WhichOneof("body")
    if body == "mode_changed":
        m = event.mode_changed
        try:
            mode, previous = ClusterMode.from_proto(m.mode).value, ClusterMode.from_proto(m.previous).value
        except DomainError:
            mode = previous = "?"
        return AuditEntry(actor=m.actor[:64] or None, action="cluster.mode", target="cluster",
                          outcome="ok", status=200, rule=m.rule[:16] or None,
                          detail=f"security_mode: {previous!r} -> {mode!r} (by {publisher or event.origin})"[:1000],
                          remote=None)
    if body == "ctl_updated":
        c = event.ctl_updated
        return AuditEntry(actor=c.actor[:64] or None, action="ctl.commit", target=c.tftp_path[:128] or None,
                          outcome="ok", status=200, rule=None,
                          detail=f"CTL version {c.version} sha256 {c.sha256[:16]} (by {publisher or event.origin})",
                          remote=None)
    if body == "owner_change":
        o = event.owner_change
        door = o.door or "grpc"
        detail = o.detail if door == "admin-api" else f"{o.detail} (via {door})".strip()
        return AuditEntry(actor=o.actor[:64] or None, action=o.action[:64] or "owner.change",
                          target=o.target[:128] or None, outcome="ok", status=o.status or 200,
                          rule=o.rule[:16] or None,
                          detail=f"{detail} (by {publisher or event.origin})"[:1000],
                          remote=o.remote[:64] or None)
    return None


class OwnerChangesAuditMixin:
    async def setup_owner_changes_audit(self) -> None:
        for kind, name in (("mode.changed", "mode-audit"), ("ctl.updated", "ctl-audit"),
                           ("owner.change", "owner-audit")):
            await self.subscribe(bus_mod.subject_for(kind), name, self.on_owner_change,
                                 deliver_new=False)

    async def on_owner_change(self, event: events_pb2.Event) -> None:
        entry = owner_change_entry(event, bus_mod.PUBLISHER.get())
        if entry is not None:
            async with self.db() as session, session.begin():
                session.add(entry)
