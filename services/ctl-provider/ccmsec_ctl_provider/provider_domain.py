"""ctl-provider's one write path for its own settings (issue 9 §4, §5): activation (CHK-1), its TLS
port (RST-7) and the cluster's legacy TLS (LATER-8). The mode, the CTL and the shared-TFTP registry
are `trust.py`'s, in the same shape.

    validate → write → audit → publish, in ONE transaction:
      write    the owner's table (`ctl_provider_nodes`, `cluster_settings`)
      audit    an `owner.change` event (`outbox.stage_owner_change`): callmanager, the only writer
               of the audit log, records it — so the write is audited whichever door it came by
      publish  the events its rule requires (`policy.resets.required_actions`), staged in the
               outbox beside it and relayed until JetStream acknowledges them

A refused or rolled-back write leaves no row, no audit record and no event; a committed one is
answered with `delivered` False while NATS is down — its events go out once NATS is back.
"""

from __future__ import annotations

import logging

import grpc

from ccmsec.db.cluster import provider_node
from ccmsec.policy.resets import CtlProviderPortChanged, LegacyTlsChanged, required_actions
from ccmsec.runtime.outbox import DELIVERY_WAIT, stage_actions, stage_owner_change
from ccmsec.runtime.servicer import ChangeActor

from ccmsec_ctl_provider.cluster_tls import read_legacy_tls, write_legacy_tls
from ccmsec_ctl_provider.trust import Refused

log = logging.getLogger("ccmsec.ctl-provider")


class ProviderDomain:
    def __init__(self, service):
        self.service = service

    async def _delivered(self, ids: list[str]) -> bool:
        return await self.service.outbox.wait_sent(ids, DELIVERY_WAIT)

    async def activate(self, who: ChangeActor, active: bool) -> None:
        """CHK-1: the CTL Provider answers CTL clients only while activated."""
        svc = self.service
        async with svc.db() as session, session.begin():
            row = await provider_node(session, svc.node)
            before = bool(row.activated)
            row.activated = bool(active)
            if before != bool(active):
                stage_owner_change(session, svc.node, action="ctl_provider.activate", target=svc.node,
                                   detail=f"activated: {before} -> {bool(active)}", rule="CHK-1",
                                   **who.audit())
        svc.activated = bool(active)
        svc.outbox.kick()
        log.info("CTL Provider %s", "activated" if active else "deactivated")

    async def set_port(self, who: ChangeActor, port: int) -> tuple[bool, list[str], bool]:
        """Store the TLS port; (changed, events described, delivered). A restart applies it (RST-7)."""
        if not 1 <= port <= 65535:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"port {port} is not between 1 and 65535")
        svc = self.service
        ids: list[str] = []
        described: list[str] = []
        async with svc.db() as session, session.begin():
            row = await provider_node(session, svc.node)
            previous = row.port or svc.settings.ctl_provider_port
            row.port = port
            changed = previous != port
            if changed:
                # the audit record first: the restart it requires stops this very service
                ids.append(stage_owner_change(session, svc.node, action="ctl_provider.port", target=svc.node,
                                              detail=f"port: {previous} -> {port}", rule="RST-7",
                                              **who.audit()).id)
                more, described = stage_actions(session, svc.node, required_actions(CtlProviderPortChanged()),
                                                reason=f"CTL Provider TLS port set to {port}")
                ids += more
        svc.configured_port = port
        return changed, described, await self._delivered(ids)

    async def set_legacy_tls(self, who: ChangeActor, enabled: bool) -> tuple[list[str], bool]:
        """LATER-8: store the setting and restart the services whose listeners follow it;
        (events described, delivered)."""
        svc = self.service
        ids: list[str] = []
        described: list[str] = []
        async with svc.db() as session, session.begin():
            before = await read_legacy_tls(session)
            if await write_legacy_tls(session, enabled):
                ids.append(stage_owner_change(session, svc.node, action="cluster.legacy_tls", target="cluster",
                                              detail=f"legacy_tls: {before} -> {enabled}", rule="LATER-8",
                                              **who.audit()).id)
                more, described = stage_actions(
                    session, svc.node, required_actions(LegacyTlsChanged()),
                    reason=f"legacy TLS (TLS 1.0) {'enabled' if enabled else 'disabled'}")
                ids += more
        return described, await self._delivered(ids)
