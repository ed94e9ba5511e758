"""The callmanager service's call-control wiring (mixed into CallManagerService in main.py).

Starts `CallControl` on the service's SCCP ports, turns `device.reset` events into SCCP Reset
messages, and reports registry figures in Status.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptography import x509

from ccmsec.runtime import bus as bus_mod
from ccmsec.runtime import metrics
from ccmsec.wire.sccp import ResetType
from ccmsec_proto import events_pb2

from .callcontrol import CallControl, CallControlConfig
from .cluster_state import ClusterStateFollower, ask_ctl_provider
from .phone_trust import ThirdPartyCaFollower, ask_capf
from .phone_mobility import PhoneMobility


class CallControlMixin:
    callcontrol: CallControl | None = None
    cluster_state: ClusterStateFollower | None = None
    third_party_ca: ThirdPartyCaFollower | None = None

    async def setup_cluster_state(self) -> None:
        """The cluster mode and the CTL are ctl-provider's (issue 9 §5): its events first, then its
        answer (CtlProvider/GetSecurityMode, in the background), so no change falls between them."""
        self.cluster_state = ClusterStateFollower(ask_ctl_provider(lambda: self.peer_channel("ctl-provider")))
        await self.subscribe(bus_mod.subject_for("mode.changed"), "cluster-mode", self.cluster_state.on_event)
        await self.subscribe(bus_mod.subject_for("ctl.updated"), "cluster-ctl", self.cluster_state.on_event)
        self.spawn(self.cluster_state.follow())
        # The offline issuer's CA is CAPF's (issue 9 §1): its event (from capf only, BUS-3), then
        # its answer (Capf/GetThirdPartyCa), never a file another role could write.
        self.third_party_ca = ThirdPartyCaFollower(ask_capf(lambda: self.peer_channel("capf")))
        await self.subscribe(bus_mod.subject_for("lsc-ca.changed"), "lsc-ca", self.third_party_ca.on_event)
        self.spawn(self.third_party_ca.follow())

    async def setup_call_control(self) -> None:
        s = self.settings
        self.callcontrol = CallControl(
            CallControlConfig(node=self.node, host=s.host, sccp_port=s.sccp_port,
                              sccp_tls_port=s.sccp_tls_port, data_dir=s.data_dir, key_dir=s.key_dir,
                              manufacturer_dir=s.manufacturer_folder,
                              keepalive_interval=s.sccp_keepalive,
                              auto_register=s.callmanager_publisher),
            self.db, cluster_state=self.cluster_state, third_party_ca=self.third_party_ca)
        await self.callcontrol.start()
        # extension mobility from the phone: login / logout on its own connection (DEV-2)
        self.phone_mobility = PhoneMobility(self)
        self.callcontrol.user_data = self.phone_mobility.received
        # The administration API may address resets to one device (subject device.reset.<name>);
        # the base class listens on the plain subject only.
        await self.subscribe(bus_mod.subject_for("device.reset") + ".>", "device-reset-targeted",
                             self.on_device_reset)
        # Routing changes (lines, forwards, speed dials, regions) apply to the next call.
        await self.subscribe(bus_mod.subject_for("config.changed"), "config-changed-calls",
                             self.on_config_changed)

    async def teardown_call_control(self) -> None:
        if self.callcontrol is not None:
            await self.callcontrol.close()

    async def on_device_reset(self, event: events_pb2.Event) -> None:
        """Reset (type 1) or restart (type 2) each targeted phone registered here (RST-*)."""
        if self.callcontrol is None:
            return
        body = event.device_reset
        targets = self.callcontrol.targets(devices=list(body.devices), all_devices=body.all,
                                           server=body.server)
        registry = self.callcontrol.registry
        if body.request_id and body.request_id not in registry.resets:
            registry.track_reset(set(targets), body.request_id)  # asked on another node
        progress = registry.resets.get(body.request_id) if body.request_id else None
        if progress is not None:
            # Targeted phones not registered here now (e.g. phone-sim rebooting them for this very
            # event): no Reset from us; registering here from now on is their coming back.
            registry.reset_missed(body.request_id, progress.targeted - set(targets))
        reset_type = ResetType.RESTART if body.kind == events_pb2.RESTART else ResetType.RESET
        self.log.info("device reset event", extra={
            "event_id": event.id, "rule": body.rule, "all": body.all, "server": body.server,
            "devices": len(body.devices), "registered_targets": len(targets)})
        await self.callcontrol.reset(targets, reset_type, body.request_id)

    async def on_config_changed(self, event: events_pb2.Event) -> None:
        """The owner's change event: call control's directory and dial plan follow it live."""
        if self.callcontrol is None:
            return
        body = event.config_changed
        changed = await self.callcontrol.apply_routing_change(list(body.devices))
        self.log.info("routing change applied", extra={"event_id": event.id, "what": body.what,
                                                       "devices": len(body.devices), "profiles": changed})

    async def sample_metrics(self) -> None:
        await super().sample_metrics()
        cc = self.callcontrol
        if cc is not None and cc._server_identity is not None:
            metrics.set_certificate_expiry("server", f"{self.node}/sccp",
                                           cc.server_certificate.not_valid_after_utc)
        certfile = getattr(getattr(self, "admin", None), "certfile", None)
        if certfile is not None:  # the administration API's HTTPS certificate (publisher only)
            cert = x509.load_pem_x509_certificate(await asyncio.to_thread(Path(certfile).read_bytes))
            metrics.set_certificate_expiry("server", f"{self.node}/admin-api", cert.not_valid_after_utc)

    def status_details(self) -> dict[str, str]:
        cc = self.callcontrol
        if cc is None:
            return {}
        return {"publisher": str(self.settings.callmanager_publisher).lower(),
                "keepalive": str(cc.config.keepalive_interval),
                "standby_connections": str((cc.plain.standby_total if cc.plain else 0)
                                           + (cc.tls.standby_total if cc.tls else 0)),
                "registered": str(len(cc.registry.entries)),
                "registrations_total": str(cc.registered_total),
                "refused_total": str(cc.refused_total),
                "sccp_port": str(cc.plain.port if cc.plain else 0),
                "sccp_tls_port": str(cc.tls.port if cc.tls else 0),
                "call_watchers": str(len(cc.calls.watchers) if cc.calls else 0),
                "routing_changes_applied": str(cc.routing_changes_applied),
                # CALL-9 without a transcoder: set-ups, barges, transfers refused for want of a codec
                "codec_refusals": str(cc.calls.agent.codec_refusals if cc.calls else 0),
                # the CTL Provider's mode as call control follows it ("unknown: why" before it answered)
                "cluster_mode": (cc.cluster_state.known.mode if cc.cluster_state.known is not None
                                 else f"unknown: {cc.cluster_state.last_error or 'not asked yet'}"),
                "mobility_at_phones": (f"{self.phone_mobility.logins} login(s), {self.phone_mobility.logouts} "
                                       f"logout(s), {self.phone_mobility.refused} refused"
                                       if getattr(self, "phone_mobility", None) else ""),
                # Offline-CA mode: whose LSCs 2443 accepts besides CAPF's (or why none is trusted).
                "lsc_third_party_ca": self._third_party_ca_text(cc)}

    @staticmethod
    def _third_party_ca_text(cc: CallControl) -> str:
        watcher = cc.trust_watcher
        if watcher is None:
            return ""
        third = watcher.current().third_party
        if third is not None:
            return third.subject.rfc4514_string()
        return f"none: {watcher.problem}" if watcher.problem else ""
