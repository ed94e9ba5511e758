"""Call control's SCCP side: the two listeners, registration decisions, the registry, resets.

Independent of the service runtime (no bus, no gRPC), so tests and benchmarks run it with only
a database: `CallControl(...).start()`. The service wires events and RPCs to it.

* 2000 (clear TCP) and 2443 (mutual TLS, `sccp_server_context`): the server presents this node's
  self-signed `ccmserver.cer` (CERT-5, the certificate the CTL lists) and requires a phone
  certificate from the CAPF CA or the offline third-party CA (LSC) or the manufacturer CA (MIC) —
  AUTH-2, CERT-2. The third-party CA (`ccmsec capf set-ca`) is CAPF's, asked of CAPF and followed
  at runtime (`ThirdPartyCaFollower` → `PhoneTrustWatcher`): a change applies to the next handshake
  and Register; no file decides it.
* Each Register is decided by `registration.decide` from the `devices` row and the cluster mode —
  the CTL Provider's, followed by `ClusterStateFollower` (cluster_state.py); a Register arriving
  before the CTL Provider ever answered is refused, never decided on an assumed mode.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from ccmsec.aio.sccp import ConnectionClosed, ConnectionDropped, SccpServer
from ccmsec.calls.config import AgentSettings, DeviceProfile
from ccmsec.db.devices import Device
from ccmsec.domain import DeviceSecurityMode
from ccmsec.pki.ca import Issued
from ccmsec.pki.lsc import CAPF_CERT, ensure_capf_ca
from ccmsec.pki.servercert import ensure_server_certificate
from ccmsec.pki.tokens import ensure_manufacturer_ca
from ccmsec.policy.calls import CallSecurityLevel
from ccmsec.runtime import metrics
from ccmsec.wire.sccp_userdata import DeviceToUserData
from ccmsec.wire.sccp import (
    CapabilitiesReceived,
    DeviceRegistered,
    DeviceUnregistered,
    KeepAliveTimeout,
    MessageReceived,
    RegistrationDecision,
    RegistrationRefused,
    RegistrationRequest,
    ResetType,
)

from .calls import CallService
from .cluster_state import ClusterStateFollower, ClusterStateUnknown
from .directory import CallDirectory
from .phone_trust import PhoneTrustWatcher, ThirdPartyCaFollower
from .registration import DeviceRecord, PhoneTrust, Verdict, decide
from .registry import Registry, RegistrationEntry, RegistryMirror

log = logging.getLogger("ccmsec.callmanager")

# The device snapshot (all rows in one query) is reused this long. Every security change of a
# device is followed by its device.reset (RST-1/RST-2), which drops the snapshot first, so a
# phone re-registering after a reset is always decided on fresh data.
DEVICE_SNAPSHOT_TTL = 2.0


@dataclass(frozen=True)
class CallControlConfig:
    node: str
    host: str
    sccp_port: int
    sccp_tls_port: int
    data_dir: Path
    keepalive_interval: int = 30
    # This node's own key folder (compose: a volume no other container has); None = beside the
    # certificates, and this node may then create the CAPF and manufacturer CAs itself.
    key_dir: Path | None = None
    # Where the manufacturer CA certificate is (None: DATA/pki); compose: phone-sim's own volume.
    manufacturer_dir: Path | None = None
    mirror_interval: float = 0.1
    register_timeout: float = 10.0
    handshake_timeout: float = 10.0
    # Calls: CTI ports (their numbers) and the inter-cluster trunk's route pattern (CALL-3).
    cti_numbers: tuple[str, ...] = ("7000", "7001")
    trunk_pattern: str = "8XXX"
    agent: AgentSettings | None = None
    max_messages_per_second: float = 50.0
    # Only the publisher creates device rows (MODE-4 auto-registration); a subscriber refuses an
    # unknown device, which then registers with the publisher (LATER-7: one writer).
    auto_register: bool = True


def server_certificate_dir(data_dir: Path, node: str) -> Path:
    return Path(data_dir) / "servers" / node


# With keys kept apart (compose), the CAPF and manufacturer CAs are made by their owners (capf,
# phone-sim) as they start; call control waits this long for their certificates.
CA_CERTIFICATE_WAIT = 300.0


def wait_for_certificate(path: Path, owner: str, timeout: float = CA_CERTIFICATE_WAIT) -> x509.Certificate:
    """The PEM certificate at `path`, once its owner has written it (atomically); a clear error
    when it does not appear in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{path} did not appear within {timeout:.0f} s: {owner} creates it "
                                   "at its start (its key is kept where only it can read it)") from None
        time.sleep(1.0)


def load_pki(data_dir: Path, node: str, host: str,
             key_dir: Path | None = None, manufacturer_dir: Path | None = None) -> tuple[Issued, PhoneTrust]:
    """This node's ccmserver.cer (created once, CERT-5) and the fixed phone-certificate issuers
    (CAPF's and the manufacturer's; the third-party CA is asked of CAPF, see phone_trust.py). With
    `key_dir` this node's key is kept there, and the CA certificates are waited for, never created
    here: their keys belong to CAPF and phone-sim alone."""
    pki = Path(data_dir) / "pki"
    mfr = Path(manufacturer_dir) if manufacturer_dir is not None else pki
    server = ensure_server_certificate(server_certificate_dir(data_dir, node), node, ip=host,
                                       key_dir=key_dir)
    if key_dir is None:
        capf = ensure_capf_ca(pki).cert
        manufacturer = ensure_manufacturer_ca(mfr).cert
    else:
        capf = wait_for_certificate(pki / CAPF_CERT, "capf")
        manufacturer = wait_for_certificate(mfr / "manufacturer-ca.crt", "phone-sim")
    return server, PhoneTrust(capf, manufacturer)


def _address(peer: tuple | None) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else ""


class CallControl:
    def __init__(self, config: CallControlConfig, sessionmaker: async_sessionmaker, *,
                 server_identity: Issued | None = None, trust: PhoneTrust | None = None,
                 cluster_state: ClusterStateFollower | None = None,
                 third_party_ca: ThirdPartyCaFollower | None = None) -> None:
        self.config = config
        self.db = sessionmaker
        # The CTL Provider's mode and CTL (the service follows its answers and events); alone, with
        # no owner to ask: MODE-1's non-secure cluster.
        self.cluster_state = cluster_state or ClusterStateFollower.fixed()
        # CAPF's third-party CA (offline-CA LSCs), asked of CAPF; alone: none.
        self.third_party_ca = third_party_ca or ThirdPartyCaFollower.none()
        self.registry = Registry(config.node)
        self._server_identity = server_identity
        self._fixed_trust = trust
        self.trust_watcher: PhoneTrustWatcher | None = None
        self.plain: SccpServer | None = None
        self.tls: SccpServer | None = None
        self._verdicts: dict[tuple, Verdict] = {}  # (device, peer) -> accepted verdict
        self._devices: dict[str, DeviceRecord] = {}
        self._devices_at = 0.0
        self._devices_lock = asyncio.Lock()
        self.registered_total = 0
        self.refused_total = 0
        self.directory = CallDirectory(sessionmaker)
        self.calls: CallService | None = None
        self._profiles: dict[tuple, DeviceProfile] = {}  # (device, peer) -> profile, until registered
        self.routing_changes_applied = 0
        self._numbers_from = None  # the directory snapshot whose numbers the dial plan has
        # DeviceToUserData from a registered phone: (connection, device, message); the service
        # plugs extension mobility in here (phone_mobility.py)
        self.user_data = None

    @property
    def trust(self) -> PhoneTrust | None:
        """The phone-certificate trust in force now (follows CAPF's third-party CA)."""
        if self.trust_watcher is not None:
            return self.trust_watcher.current()
        return self._fixed_trust

    def set_legacy_tls(self, enabled: bool) -> None:
        """LATER-8: new connections to 2443 may (or may no longer) use TLS 1.0."""
        if self.trust_watcher is None or self.tls is None:
            raise RuntimeError("call control is not started")
        self.tls.ssl_context = self.trust_watcher.set_legacy_tls(enabled)

    @property
    def server_certificate(self) -> x509.Certificate:
        assert self._server_identity is not None
        return self._server_identity.cert

    @property
    def loaded_server_certificate(self) -> x509.Certificate | None:
        """This node's ccmserver.cer once loaded (at start), else None."""
        return self._server_identity.cert if self._server_identity is not None else None

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        c = self.config
        if self._server_identity is None or self._fixed_trust is None:
            identity, trust = await asyncio.to_thread(load_pki, c.data_dir, c.node, c.host, c.key_dir,
                                                      c.manufacturer_dir)
            self._server_identity = self._server_identity or identity
            self._fixed_trust = self._fixed_trust or trust
        self.trust_watcher = await asyncio.to_thread(PhoneTrustWatcher, self._server_identity, self._fixed_trust)
        self.third_party_ca.attach(self.trust_watcher.set_third_party)
        context = self.trust_watcher.listening_context
        self.registry.mirror = RegistryMirror(self.db, c.node, c.mirror_interval)
        await self.registry.mirror.start()
        agent = c.agent or AgentSettings(server_name=c.node)
        self.calls = CallService(
            c.host, settings=agent,
            cti_numbers=c.cti_numbers, trunk_pattern=c.trunk_pattern, node=c.node)
        self.calls.start()
        self.calls.set_configured_numbers((await self.directory.current()).numbers)
        common = dict(keepalive_interval=c.keepalive_interval, register_timeout=c.register_timeout,
                      handshake_timeout=c.handshake_timeout,
                      max_messages_per_second=c.max_messages_per_second)
        self.plain = SccpServer(self.decide, host=c.host, port=c.sccp_port,
                                on_event=self._listener(secure=False), **common)
        self.tls = SccpServer(self.decide, host=c.host, port=c.sccp_tls_port, ssl_context=context,
                              on_event=self._listener(secure=True), **common)
        await self.plain.start()
        await self.tls.start()
        if not agent.servers:  # ServerRes names this node with its SCCP port
            self.calls.agent.settings = dataclasses.replace(
                agent, servers=((c.node, c.host, self.plain.port),))
        log.info("SCCP listening", extra={"sccp": f"{c.host}:{self.plain.port}",
                                          "sccp_tls": f"{c.host}:{self.tls.port}"})
        for mode in DeviceSecurityMode:  # exported from the start, at 0
            metrics.REGISTRATIONS.labels(c.node, mode.value)
        metrics.add_sampler(metrics.PHONES_REGISTERED, self._phones_by_mode)
        metrics.add_sampler(metrics.RESETS_IN_FLIGHT, self._resets_in_flight)
        metrics.add_sampler(metrics.CALLS_IN_PROGRESS, self._calls_by_security)

    # scrape-time samples (read in the metrics thread: copies first, never writes) ------------
    def _phones_by_mode(self):
        counts = collections.Counter(e.security_mode for e in list(self.registry.entries.values()))
        for mode in (m.value for m in DeviceSecurityMode):
            counts.setdefault(mode, 0)
        return [((self.config.node, mode), n) for mode, n in sorted(counts.items())]

    def _resets_in_flight(self):
        waiting = sum(len(set(p.sent) - p.back) for p in list(self.registry.resets.values()))
        return [((self.config.node,), waiting)]

    def _calls_by_security(self):
        counts = collections.Counter({level.name.lower().replace("_", "-"): 0 for level in CallSecurityLevel})
        if self.calls is not None:
            agent = self.calls.agent
            for call in list(agent.calls.values()):
                counts[agent.view(call).status_name] += 1
        return [((self.config.node, status), n) for status, n in sorted(counts.items())]

    async def close(self) -> None:
        for sampler, family in ((self._phones_by_mode, metrics.PHONES_REGISTERED),
                                (self._resets_in_flight, metrics.RESETS_IN_FLIGHT),
                                (self._calls_by_security, metrics.CALLS_IN_PROGRESS)):
            metrics.remove_sampler(family, sampler)
        for server in (self.plain, self.tls):
            if server is not None:
                await server.close()
        if self.calls is not None:
            await self.calls.close()
        if self.registry.mirror is not None:
            await self.registry.mirror.close()

    # routing changes ------------------------------------------------------------------------
    async def apply_routing_change(self, devices=()) -> int:
        """A committed change of the call-routing configuration (`config.changed`): reload the
        directory and give the registered phones their new forwards, speed dials and region,
        and the dial plan its configured numbers — the next call uses them, no re-registration.
        `devices` empty: every registered phone. Returns how many profiles changed."""
        self.directory.forget()
        snap = await self.directory.current()
        if self.calls is None:
            return 0
        self.calls.set_configured_numbers(snap.numbers)
        agent = self.calls.agent
        names = [d for d in devices if d in self.calls.connections] if devices else list(self.calls.connections)
        changed = 0
        for name in names:
            station = agent.stations.get(name)
            if station is None:
                continue
            if agent.update_profile(await self.directory.refreshed(station.profile)):
                changed += 1
        self.routing_changes_applied += 1
        return changed

    # decisions ------------------------------------------------------------------------------
    async def cluster_mode(self) -> str:
        """The cluster mode as its owner, the CTL Provider, last said (ClusterStateUnknown before
        it ever answered)."""
        return await self.cluster_state.mode()

    def forget_cluster_mode(self) -> None:
        """The next decision asks the CTL Provider again."""
        self.cluster_state.forget()

    def forget_devices(self) -> None:
        """Drop the device snapshot (called before any reset is delivered)."""
        self._devices_at = 0.0

    async def _device(self, name: str) -> DeviceRecord | None:
        if time.monotonic() - self._devices_at > DEVICE_SNAPSHOT_TTL:
            async with self._devices_lock:  # one reload for a whole storm, not one per phone
                if time.monotonic() - self._devices_at > DEVICE_SNAPSHOT_TTL:
                    async with self.db() as session:
                        rows = (await session.execute(
                            select(Device.name, Device.model, Device.security_mode))).all()
                    # model and mode: a handful of values, one shared str each (10,000 rows)
                    intern = sys.intern
                    self._devices = {r[0]: DeviceRecord(r[0], intern(r[1]), intern(r[2])) for r in rows}
                    self._devices_at = time.monotonic()
        found = self._devices.get(name)
        if found is not None:
            return found
        async with self.db() as session:  # added since the snapshot?
            row = (await session.execute(
                select(Device.name, Device.model, Device.security_mode).where(Device.name == name)
            )).first()
        return DeviceRecord(*row) if row else None

    async def _auto_register(self, device: DeviceRecord) -> None:
        try:
            async with self.db() as session, session.begin():
                session.add(Device(name=device.name, model=device.model,
                                   security_mode=DeviceSecurityMode.NON_SECURE.value, description="auto-registered"))
        except IntegrityError:
            pass  # created meanwhile (another node, or the administrator)

    def decide(self, request: RegistrationRequest) -> RegistrationDecision | Awaitable[RegistrationDecision]:
        """The decision on one Register. At once when everything it needs is at hand — the cluster
        mode known and fresh, the device in the fresh snapshot, the directory fresh — as for
        nearly every phone of a registration storm: the adapter then answers in the same callback,
        with no task and no extra turn of the event loop per phone. Otherwise (anything to load or
        ask, an unknown device, auto-registration) a coroutine doing the same with the awaits."""
        state = self.cluster_state.usable_now()
        if state is None or time.monotonic() - self._devices_at > DEVICE_SNAPSHOT_TTL:
            return self._decide_later(request)
        device = self._devices.get(request.device_name)
        if device is None:  # added since the snapshot, or unknown: asked of the database
            return self._decide_later(request)
        verdict = decide(request, device, state.mode, self.trust)
        refused = self._refusal(request, verdict)
        if refused is not None:
            return refused
        if verdict.auto_registered:
            return self._accept_later(request, verdict)
        self._note(request, verdict)
        d = verdict.device
        profile = self.directory.profile_now(d.name, d.model, d.security_mode)
        if profile is None:
            return self._accept_later(request, verdict, noted=True)
        return self._accept(request, verdict, profile)

    async def _decide_later(self, request: RegistrationRequest) -> RegistrationDecision:
        address = _address(request.peer_address)
        try:
            mode = await self.cluster_mode()
        except ClusterStateUnknown as exc:  # never decided (MODE-4 etc.) on a mode nobody answered
            self.refused_total += 1
            metrics.REGISTRATION_REFUSALS.labels(self.config.node, "mode-unknown").inc()
            self.registry.refused(request.device_name, address, str(exc))
            log.warning("registration refused: cluster mode unknown", extra={
                "device": request.device_name, "address": address, "error": str(exc)})
            return RegistrationDecision.reject("cluster mode unknown; retry")
        verdict = decide(request, await self._device(request.device_name), mode, self.trust)
        refused = self._refusal(request, verdict)
        if refused is not None:
            return refused
        return await self._accept_later(request, verdict)

    def _refusal(self, request: RegistrationRequest, verdict: Verdict) -> RegistrationDecision | None:
        """The RegisterReject for a refused verdict (counted, kept, logged); None when accepted."""
        address = _address(request.peer_address)
        if not verdict.accepted:
            self.refused_total += 1
            metrics.REGISTRATION_REFUSALS.labels(self.config.node, verdict.rule or "other").inc()
            self.registry.refused(request.device_name, address, verdict.reason)
            log.info("registration refused", extra={"device": request.device_name,
                                                    "address": address, "reason": verdict.reason})
            return RegistrationDecision.reject(verdict.reject_text)
        if verdict.auto_registered and not self.config.auto_register:
            self.refused_total += 1
            metrics.REGISTRATION_REFUSALS.labels(self.config.node, "MODE-4").inc()
            reason = (f"MODE-4: unknown device {request.device_name}: auto-registration is done by "
                      "the publisher")
            self.registry.refused(request.device_name, address, reason)
            return RegistrationDecision.reject(f"MODE-4: unknown {request.device_name}")
        return None

    def _note(self, request: RegistrationRequest, verdict: Verdict) -> None:
        if verdict.nat_suspected:
            log.warning("MODE-7: device registers through a translated address; mixed mode does "
                        "not support NAT", extra={"device": request.device_name,
                                                  "peer": _address(request.peer_address),
                                                  "reported": request.register.ip_address})

    async def _accept_later(self, request: RegistrationRequest, verdict: Verdict, *,
                            noted: bool = False) -> RegistrationDecision:
        if verdict.auto_registered:
            await self._auto_register(verdict.device)
            log.info("auto-registered device", extra={"device": request.device_name,
                                                      "model": verdict.device.model})
        if not noted:
            self._note(request, verdict)
        d = verdict.device
        return self._accept(request, verdict, await self.directory.profile(d.name, d.model, d.security_mode))

    def _accept(self, request: RegistrationRequest, verdict: Verdict,
                profile: DeviceProfile) -> RegistrationDecision:
        self._profiles[(request.device_name, request.peer_address)] = profile
        snapshot = self.directory.snapshot
        if self.calls is not None and snapshot is not self._numbers_from:
            # once per directory load, not per Register (a copy of every configured number)
            self.calls.set_configured_numbers(snapshot.numbers)
            self._numbers_from = snapshot
        self._verdicts[(request.device_name, request.peer_address)] = verdict
        return RegistrationDecision.accept()

    # connection events ----------------------------------------------------------------------
    def _listener(self, *, secure: bool):
        bound: list[int] = []

        def transport_port() -> int:  # the listener's port, asked of its socket once
            if not bound:
                bound.append((self.tls if secure else self.plain).port)
            return bound[0]

        def on_event(conn, event) -> None:
            session = conn.session
            if isinstance(event, MessageReceived):
                if isinstance(event.message, DeviceToUserData):
                    # application data (extension mobility from the phone), not call control's
                    if self.user_data is not None and conn.device_name:
                        self.user_data(conn, conn.device_name, event.message)
                elif self.calls is not None:
                    self.calls.message(conn, event.message)
            elif isinstance(event, CapabilitiesReceived):
                if self.calls is not None:
                    self.calls.capabilities(event.device_name, event.capabilities)
            elif isinstance(event, DeviceRegistered):
                verdict = self._verdicts.pop((event.device_name, session.peer_address), None)
                profile = self._profiles.pop((event.device_name, session.peer_address), None)
                if verdict is None or verdict.device is None:
                    return
                session.peer_certificate = None  # decided; the fingerprint is all we keep
                self.registered_total += 1
                metrics.REGISTRATIONS.labels(self.config.node, verdict.device.security_mode).inc()
                self.registry.add(RegistrationEntry(
                    device=event.device_name, model=verdict.device.model,
                    security_mode=verdict.device.security_mode,
                    address=_address(session.peer_address),
                    # the peer's host str (interned) when the phone reports it: one str, not two
                    reported_address=(session.peer_address[0] if session.peer_address
                                      and session.peer_address[0] == event.register.ip_address
                                      else event.register.ip_address),
                    nat_suspected=verdict.nat_suspected,
                    transport_port=transport_port(),
                    cipher=session.tls_cipher or "",
                    certificate_fingerprint=verdict.certificate_fingerprint,
                    certificate_kind=verdict.certificate_kind.value if verdict.certificate_kind else "",
                    since=time.time(),
                    connection=conn))
                if self.calls is not None and profile is not None:
                    self.calls.registered(conn, profile)
            elif isinstance(event, (DeviceUnregistered, KeepAliveTimeout, ConnectionClosed,
                                    ConnectionDropped)):
                name = getattr(event, "device_name", None)
                if name:
                    self.registry.remove(name, conn)
                    if self.calls is not None:
                        self.calls.gone(name, conn)   # its calls are cleared for the others
                if isinstance(event, ConnectionClosed):
                    self._verdicts.pop((name, session.peer_address), None)
                    self._profiles.pop((name, session.peer_address), None)
            elif isinstance(event, RegistrationRefused):
                pass  # counted and logged in decide()
        return on_event

    # resets ---------------------------------------------------------------------------------
    def targets(self, *, devices: list[str] | tuple[str, ...] = (), all_devices: bool = False,
                server: str = "") -> list[str]:
        """Registered devices of this node a reset event addresses (RST-9: `server` is a node)."""
        if all_devices:
            return self.registry.names()
        if server:
            return self.registry.names() if server == self.config.node else []
        return [d for d in devices if d in self.registry.entries]

    async def reset(self, devices: list[str], reset_type: ResetType = ResetType.RESET,
                    request_id: str = "") -> int:
        """Send SCCP Reset to each registered device named; returns how many got it."""
        self.forget_devices()
        self.forget_cluster_mode()
        sent = 0
        for count, name in enumerate(devices, 1):
            if count % 256 == 0:
                await asyncio.sleep(0)  # a Reset rarely waits: let the phones' traffic in meanwhile
            entry = self.registry.get(name)
            if entry is None:
                continue
            server = self.tls if entry.cipher else self.plain
            if server is None:
                continue
            if request_id:
                self.registry.reset_sent(request_id, name)
            try:
                # a timer per phone, not wait_for's task per phone (a reset-all sends 10,000)
                async with asyncio.timeout(5.0):
                    ok = await server.reset_device(name, reset_type)
            except (ConnectionError, RuntimeError, TimeoutError) as exc:
                log.warning("reset not delivered", extra={"device": name, "error": str(exc)})
                continue
            sent += ok
            if ok:
                metrics.RESETS_SENT.labels(self.config.node, reset_type.name.lower()).inc()
        log.info("reset sent", extra={"devices": sent, "type": reset_type.name,
                                      "request_id": request_id})
        return sent
