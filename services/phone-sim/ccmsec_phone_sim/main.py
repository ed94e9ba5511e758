"""Entry point of the phone-sim service: a fleet of simulated phones driven over gRPC.

Phones fetch from the tftp-signer peer (`peer_host("tftp-signer")`, its TFTP port from the
cluster's endpoints file when the local runner moved it, else `settings.tftp_port`), reach CAPF
and call control at the addresses their configuration names, and bind their sockets to this
service's own address. In offline-CA mode phones also store LSCs signed by the third-party CA
(asked of CAPF, its owner, with `Capf/GetThirdPartyCa` when a phone visits CAPF). A `device.reset`
event re-boots the phones it names (or all powered phones, or those registered to the named
call-control node — RST-9, see `nodes.py`; those are found aside, and the event acknowledged
once their resets have started, so a stop or crash before then brings it again); a phone already
rebooted for the same change by call control's SCCP Reset (or an earlier delivery) is not booted
twice.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from cryptography import x509

from ccmsec.cluster.state import read_endpoints
from ccmsec.pki.ca import fingerprint_sha256
from ccmsec.pki.tokens import ensure_manufacturer_ca
from pydantic import Field

from ccmsec.runtime import metrics
from ccmsec.runtime.service import Service, StartError, run_service
from ccmsec.runtime.settings import ServiceSettings
from ccmsec.runtime.servicer import StatusServicerMixin
from ccmsec_proto import capf_pb2_grpc, common_pb2, phone_sim_pb2, phone_sim_pb2_grpc, tftp_signer_pb2_grpc

from ccmsec_phone_sim import calls as phone_calls
from ccmsec_phone_sim.boot import Network, PhoneRunner
from ccmsec_phone_sim.fleet import FINAL_SAVE_LIMIT, Fleet, FleetError
from ccmsec_phone_sim.nodes import node_endpoints
from ccmsec_phone_sim.phone import SettingsLocked, State
from ccmsec.wire.sccp_phone import PhoneActionError
from ccmsec.textsafe import bounded


def certificate_pb(cert: x509.Certificate | None, role: int) -> common_pb2.Certificate | None:
    if cert is None:
        return None
    from cryptography.hazmat.primitives import serialization

    return common_pb2.Certificate(
        der=cert.public_bytes(serialization.Encoding.DER), serial=f"{cert.serial_number:x}",
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), role=role,
        not_before_unix=int(cert.not_valid_before_utc.timestamp()),
        not_after_unix=int(cert.not_valid_after_utc.timestamp()),
        fingerprint_sha256=fingerprint_sha256(cert),
    )


def phone_state_pb(runner: PhoneRunner) -> phone_sim_pb2.PhoneState:
    p = runner.phone
    ctl = p.trust.ctl
    trust = [certificate_pb(r.certificate, int(r.role)) for r in ctl.records] if ctl else []
    msg = phone_sim_pb2.PhoneState(
        name=p.name, model=p.model, mac=p.mac, state=p.state.value, files=sorted(p.files),
        ctl_sha256=p.files.get("CTLFile.tlv", "") if ctl else "", trust_list=trust,
        last_failure=p.last_failure, last_failure_reason=p.last_failure_reason, firmware=p.firmware,
        security_mode=p.config.security_mode.to_proto() if p.config else 0,
        settings=p.settings_in_force() if p.config else {}, boots=p.boots, web_address=p.web_address,
        registered_with=p.registered_with, transport=p.transport, history=list(p.history),
        booting=runner.booting, certificate_in_use=p.certificate_in_use,
        pc_port=p.pc_port_status() if p.config else "", garp=p.garp_status() if p.config else "",
        tftp_server=p.tftp_server, capf_server=p.capf_server, call_control=list(p.call_control),
    )
    if p.mic is not None:
        msg.mic.CopyFrom(certificate_pb(p.mic.cert, common_pb2.ROLE_MIC))
    if p.lsc is not None:
        msg.lsc.CopyFrom(certificate_pb(p.lsc.cert, common_pb2.ROLE_LSC))
    return msg


class PhoneSimServicer(StatusServicerMixin, phone_sim_pb2_grpc.PhoneSimServicer):
    @property
    def fleet(self) -> Fleet:
        return self.service.fleet

    def _reply(self, runners) -> phone_sim_pb2.PhonesReply:
        return phone_sim_pb2.PhonesReply(phones=[phone_state_pb(r) for r in runners])

    async def _select(self, request, context):
        try:
            return self.fleet.select(request.names, request.all)
        except FleetError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND if "unknown" in str(exc)
                                else grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))

    async def AddPhones(self, request, context):  # noqa: N802
        try:
            phones = await self.fleet.add(request.count, request.model, request.name_prefix)
        except FleetError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))
        return self._reply(self.fleet.runners[p.name] for p in phones)

    async def BootPhones(self, request, context):  # noqa: N802
        runners = await self._select(request, context)
        await self.fleet.boot(runners)
        return self._reply(runners)

    async def ResetPhones(self, request, context):  # noqa: N802
        runners = await self._select(request, context)
        if request.all:
            runners = [r for r in runners if r.phone.state is not State.OFF]
        await self.fleet.boot(runners)
        return self._reply(runners)

    async def ListPhones(self, request, context):  # noqa: N802
        runners = await self._select(request, context) if request.names else list(self.fleet.runners.values())
        return self._reply(runners)

    async def GetPhone(self, request, context):  # noqa: N802
        (runner,) = await self._select(phone_sim_pb2.PhoneSelector(names=[request.name]), context)
        return phone_state_pb(runner)

    async def FactoryReset(self, request, context):  # noqa: N802
        runners = await self._select(request, context)
        await self.fleet.factory_reset(runners)
        return self._reply(runners)

    async def SetAuthString(self, request, context):  # noqa: N802
        try:
            phone = self.fleet.set_auth_string(request.name, request.auth_string)
        except FleetError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND if "unknown" in str(exc)
                                else grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))
        return phone_state_pb(self.fleet.runners[phone.name])


    async def OpenSettings(self, request, context):  # noqa: N802
        """DEV-4: the phone's Settings menu, or FAILED_PRECONDITION when it is locked."""
        (runner,) = await self._select(phone_sim_pb2.PhoneSelector(names=[request.name]), context)
        try:
            entries = runner.phone.settings_menu()
        except SettingsLocked as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(str(exc)))
        return phone_sim_pb2.PhoneSettingsMenu(name=runner.phone.name, entries=[
            phone_sim_pb2.SettingsEntry(label=label, value=value) for label, value in entries])

    async def SetServers(self, request, context):  # noqa: N802
        runners = await self._select(request.phones, context)
        try:
            self.fleet.set_servers(runners, tftp=request.tftp, capf=request.capf,
                                   call_control=request.call_control, clear=request.clear)
        except FleetError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bounded(str(exc)))
        return self._reply(runners)

    # --- calls (issue 10): a user at the phone ---------------------------------------------------
    async def PhoneAction(self, request, context):  # noqa: N802
        (runner,) = await self._select(phone_sim_pb2.PhoneSelector(names=[request.name]), context)
        try:
            return await phone_calls.act(runner, request)
        except phone_calls.NotRegistered as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, bounded(str(exc)))
        except PhoneActionError as exc:
            text = str(exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT if text.startswith(
                ("unknown action", "line or call", "digits must", "dial needs", "digits needs",
                 "login needs", "user id", "the PIN is"))
                or "is not a number" in text else grpc.StatusCode.FAILED_PRECONDITION, bounded(text))

    async def GetPhoneCalls(self, request, context):  # noqa: N802
        (runner,) = await self._select(phone_sim_pb2.PhoneSelector(names=[request.name]), context)
        return phone_calls.calls_reply(runner)


class PhoneSimSettings(ServiceSettings):
    """How patient the simulated phones are (LATER-7 and boot retries); seconds."""

    phone_failback_stable: float = Field(120.0, ge=0, le=3600)   # reachable this long before fail-back
    phone_probe_interval: float = Field(10.0, gt=0, le=600)      # probes of higher nodes
    phone_standby_interval: float = Field(30.0, gt=0, le=600)    # KeepAlive on the standby connection
    phone_boot_retry_max: float = Field(60.0, gt=0, le=3600)     # cap of the boot back-off
    # The most shutdown waits for the final save of phones.json (Fleet.close), beyond the
    # per-step shutdown budget; cut short, an error says so and the last complete save stays.
    phone_store_save_limit: float = Field(FINAL_SAVE_LIMIT, gt=0, le=3600)


class PhoneSimService(Service):
    role = "phone-sim"
    max_concurrent_boots = 50
    settings_class = PhoneSimSettings

    def __init__(self, settings):
        super().__init__(settings)
        self.fleet: Fleet | None = None
        self._anchors: list[x509.Certificate] | None = None

    def tftp_address(self) -> tuple[str, int]:
        try:
            endpoints = read_endpoints(self.settings.data_dir) or {}
        except OSError as exc:  # unreadable (a folder, permissions): the configured port still works
            self.log.warning("tftp-signer's port: cannot read the endpoints file: %s", exc)
            endpoints = {}
        services = endpoints.get("services")
        peer = services.get("tftp-signer") if isinstance(services, dict) else None
        port = peer.get("tftp_port") if isinstance(peer, dict) else None
        if not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
            port = self.settings.tftp_port   # absent or not a port (a torn or foreign file)
        return self.settings.peer_host("tftp-signer"), port

    def status_details(self) -> dict[str, str]:
        if self.fleet is None:
            return {}
        details = {"phones": str(len(self.fleet.runners))}
        details.update({f"phones_{k}": str(v) for k, v in sorted(self.fleet.counts().items())})
        return details

    def _image_anchors(self) -> list[x509.Certificate]:
        return list(self._anchors or [])

    async def _lsc_issuers(self) -> list[x509.Certificate]:
        """The third-party CA of offline-CA mode, asked of its owner at each CAPF visit
        (`Capf/GetThirdPartyCa`; never a file another role could have written)."""
        stub = capf_pb2_grpc.CapfStub(self.peer_channel("capf"))
        try:
            reply = await stub.GetThirdPartyCa(common_pb2.Empty(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                self.log.warning("third-party CA: CAPF did not answer (%s)", exc.code().name)
            return []
        try:
            return [x509.load_der_x509_certificate(reply.der)]
        except ValueError:
            self.log.warning("third-party CA: CAPF's answer is not a certificate")
            return []

    async def _fetch_image_anchor(self) -> None:
        """The image-signing certificate phones are "manufactured" with (AUTH-1, see phone.py)."""
        stub = tftp_signer_pb2_grpc.TftpSignerStub(self.peer_channel("tftp-signer"))
        for _ in range(20):  # the tftp-signer may still be starting; bounded
            try:
                reply = await stub.GetSigningCertificate(common_pb2.Empty(), timeout=3)
                if reply.der:
                    try:
                        self._anchors = [x509.load_der_x509_certificate(reply.der)]
                    except ValueError:  # the answer is no certificate: a warning, not a dead task
                        self.log.warning("tftp-signer's image-signing certificate is not a certificate; "
                                         "phones verify images with their CTL only")
                        return
                    self.log.info("image-signing certificate %s", reply.fingerprint_sha256 or "?")
                    return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self.log.warning("tftp-signer has no GetSigningCertificate; phones verify images "
                                     "with their CTL only")
                    return
            await asyncio.sleep(1.0)

    async def setup(self) -> None:
        s = self.settings
        host, port = self.tftp_address()
        net = Network(tftp_host=host, tftp_port=port, bind_host=s.host,
                      failback_stable=s.phone_failback_stable, probe_interval=s.phone_probe_interval,
                      standby_interval=s.phone_standby_interval,
                      boot_retry_max=s.phone_boot_retry_max)
        fleet = Fleet(s.data_dir / "phone-sim", net, max_concurrent_boots=self.max_concurrent_boots,
                      manufacturer_ca=lambda: ensure_manufacturer_ca(s.manufacturer_folder, s.key_dir),
                      image_anchors=self._image_anchors, lsc_issuers=self._lsc_issuers)
        try:
            restored = fleet.load()
        except FleetError as exc:
            # The fleet is kept only once its store was read: shutting down saves the fleet, and
            # an empty one written over an unreadable store lost every phone's keys for good.
            raise StartError(f"{exc} (left as it is: repair or remove it)") from None
        self.fleet = fleet
        if s.key_dir is not None:
            # Compose: the manufacturer CA's key is phone-sim's alone, so phone-sim makes the CA as
            # it starts; call control waits for the certificate (it trusts MICs by it).
            await asyncio.to_thread(ensure_manufacturer_ca, s.manufacturer_folder, s.key_dir)
        self.fleet.start()
        metrics.add_sampler(metrics.SIMULATED_PHONES, self._phones_by_state)
        self.grpc.add(phone_sim_pb2_grpc.add_PhoneSimServicer_to_server, PhoneSimServicer(self),
                      "ccmsec.v1.PhoneSim")
        self.spawn(self._fetch_image_anchor())
        # Phones that were on before this restart come back on, as after a power cut.
        were_on = [self.fleet.runners[p.name] for p in restored if p.saved_state is not State.OFF]
        if were_on:
            self.spawn(self.fleet.boot(were_on))

    def _phones_by_state(self):
        """Scrape-time sample (read in the metrics thread: a copy, never a write)."""
        counts = {state.value: 0 for state in State}
        if self.fleet is not None:
            counts.update(self.fleet.counts())
        return [((self.node, state), n) for state, n in sorted(counts.items())]

    async def teardown(self) -> None:
        metrics.remove_sampler(metrics.SIMULATED_PHONES, self._phones_by_state)
        if self.fleet is not None:
            await self.fleet.close(self.settings.phone_store_save_limit)

    async def on_device_reset(self, event) -> asyncio.Task | None:
        """Reset the phones the event names. For a node (RST-9) the work goes on aside and its task
        is returned: the bus acknowledges the event only once those phones' resets have started,
        so a crash or shutdown before then brings the event again (redelivered; a phone that has
        rebooted since the event's `occurred_unix_ms` is not rebooted twice)."""
        reset = event.device_reset
        requested_at = event.occurred_unix_ms / 1000 if event.occurred_unix_ms else time.time()
        if reset.all:
            runners = self.fleet.powered()
        elif reset.server:
            # The node's name may take its resolution's whole timeout (a DNS server away): events
            # are handled one after another, so waiting here held back the resets of every other
            # node (and device) queued behind it. The node's phones are found and reset aside;
            # the event is acknowledged when that is done (the bus awaits the task returned).
            return self.spawn(self._reset_node(event, reset.server, requested_at))
        else:
            wanted = set(reset.devices)
            runners = [r for r in self.fleet.powered() if r.phone.name in wanted]
        await self._reset(event, runners, requested_at)
        if self.fleet.closing and runners:
            # Shutting down (teardown closes the fleet while the bus still delivers): the closed
            # phones refused their boots. Not done, so not acknowledged: work ended cancelled,
            # which the bus gives back for after the restart (as for a node's resets).
            refused = asyncio.get_running_loop().create_future()
            refused.cancel()
            return refused
        return None

    async def _reset_node(self, event, server: str, requested_at: float) -> None:
        # RST-9 names a node: its phones are those whose connection reached one of the node's
        # addresses at one of its SCCP ports (nodes.py), whatever name or address their
        # configuration gave it; another node on the same address is not it.
        try:
            endpoints = read_endpoints(self.settings.data_dir)
        except OSError as exc:  # unreadable (a folder, permissions): the node's name still resolves
            self.log.warning("device reset: cannot read the endpoints file: %s", exc)
            endpoints = None
        node = await node_endpoints(server, endpoints=endpoints, peers=self.settings.peers,
                                    sccp_ports=(self.settings.sccp_port, self.settings.sccp_tls_port))
        runners = [r for r in self.fleet.powered()
                   if node.reached_by(r.phone.registered_address, r.phone.registered_port)]
        await self._reset(event, runners, requested_at)
        if self.fleet.closing:
            # Shutting down: the closed phones refused their boots, so the work is not done. Not
            # acknowledged (ended as cancelled): the event comes again after the restart.
            raise asyncio.CancelledError

    async def _reset(self, event, runners, requested_at: float) -> None:
        started = await self.fleet.boot(runners, requested_at)
        self.log.info("device reset", extra={"event_id": event.id, "targeted": len(runners), "booted": started})


def main() -> None:
    run_service(PhoneSimService)


if __name__ == "__main__":
    main()
